"""The story format: the one place that turns a story into model text and back.

Training text (scripts/finetune.py) and play prompts (dungeon.context) both come from the
functions here, so a fine-tuned model sees at play time exactly the shape it learned.

Model text, AI Dungeon style::

    <premise>

    > You open the door.
    <response>

    > You say "Hello?"
    <response>

A turn is a blank line, the player marker ``> `` and the action on one line, then the response.
A response never holds a blank line, so ``"\\n\\n"`` (or a new line that starts with ``>``) in
generated text always means the model has started writing the player's next move: generation
stops there. Two other turn kinds exist in play: a *story* turn (the player writes prose, no
marker; the model continues it after a space) and a *continue* turn (no player text; the model
continues the previous response after a space).

Corpus files (``stories/*.txt``) hold the same text after a small header::

    title: The Lantern Under the Lake
    genre: fantasy
    tags: exploration, puzzle
    ---
    <model text as above>
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

FORMAT_NAME = "dungeon-story"
FORMAT_VERSION = 1
MARKER = "> "
# Generated text is cut at the first of these: each can only start a player turn.
STOP_STRINGS: tuple[str, ...] = ("\n\n", "\n>")
HEADER_SEPARATOR = "---"
REQUIRED_HEADER = ("title", "genre", "tags")

Mode = Literal["do", "say", "story", "continue"]
MODES: tuple[str, ...] = ("do", "say", "story", "continue")


@dataclass(frozen=True)
class FormatSpec:
    """What a fine-tuned model folder records so play can check it matches (see finetune.py)."""

    name: str = FORMAT_NAME
    version: int = FORMAT_VERSION
    marker: str = MARKER
    stop_strings: tuple[str, ...] = STOP_STRINGS

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "marker": self.marker,
            "stop_strings": list(self.stop_strings),
        }


def turn_prefix(action: str, mode: Mode) -> str:
    """The text that comes before a turn's response: what the model is prompted with."""
    if mode in ("do", "say"):
        return f"\n\n{MARKER}{action}\n"
    if mode == "story":
        return f"\n\n{action} " if action else " "
    if mode == "continue":
        return " "
    raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")


def render_turn(action: str, mode: Mode, response: str) -> str:
    """One turn as model text: its prefix, then its response."""
    return turn_prefix(action, mode) + response


def render_story(premise: str, turns: Iterable[tuple[str, Mode, str]]) -> str:
    """A whole story as model text: the premise, then each ``(action, mode, response)``."""
    return premise + "".join(render_turn(a, m, r) for a, m, r in turns)


# ---------------------------------------------------------------------------------------------
# Corpus files


class StoryFormatError(ValueError):
    """A story file that does not follow the format; ``problems`` lists every ``file:line: ...``."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass
class StoryFile:
    """One parsed corpus file: header fields, premise and ``(action, response)`` turns."""

    title: str
    genre: str
    tags: list[str]
    premise: str
    turns: list[tuple[str, str]]
    path: str = "<string>"
    extra: dict[str, str] = field(default_factory=dict)

    def model_text(self) -> str:
        """The text a model trains on: exactly what play would have sent it, turn after turn."""
        return render_story(self.premise, ((a, "do", r) for a, r in self.turns))


def unwrap(text: str) -> str:
    """Join hard-wrapped lines with spaces; keep paragraph breaks (blank lines) as ``\\n\\n``.

    Files may wrap lines for reading; the model always sees one line per paragraph, the same
    shape that output cleanup gives generated text at play time.
    """
    paragraphs = re.split(r"\n[ \t]*\n+", text.strip("\n"))
    joined = (" ".join(line.strip() for line in p.split("\n") if line.strip()) for p in paragraphs)
    return "\n\n".join(p for p in joined if p)


_HEADER_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*):\s*(.*)$")


def parse_model_text(text: str, path: str = "<string>", first_line: int = 1) -> tuple[str, list]:
    """Parse model text into ``(premise, [(action, response), ...])``.

    Raises StoryFormatError listing every problem as ``path:line: what is wrong``.
    """
    problems: list[str] = []
    lines = text.split("\n")
    premise_lines: list[str] = []
    turns: list[tuple[str, list[str], int]] = []  # action, response lines, line number
    for offset, line in enumerate(lines):
        lineno = first_line + offset
        if line.startswith(">"):
            if not line.startswith(MARKER) or not line[len(MARKER) :].strip():
                problems.append(f"{path}:{lineno}: a player line must be '> ' and an action")
                continue
            before = turns[-1][1] if turns else premise_lines
            if before and before[-1] != "":
                problems.append(f"{path}:{lineno}: a player line must follow a blank line")
            turns.append((line[len(MARKER) :], [], lineno))
        elif turns:
            turns[-1][1].append(line)
        else:
            premise_lines.append(line)

    premise = unwrap("\n".join(premise_lines))
    if not premise.strip():
        problems.append(f"{path}:{first_line}: the premise is empty")
    parsed: list[tuple[str, str]] = []
    for action, response_lines, lineno in turns:
        # Drop the blank separator line that precedes the next turn (and the file's end).
        while response_lines and response_lines[-1] == "":
            response_lines.pop()
        response = "\n".join(response_lines)
        if response_lines and response_lines[0] == "":
            problems.append(
                f"{path}:{lineno + 1}: the response must start right after the player line"
            )
        if action != action.strip():
            problems.append(f"{path}:{lineno}: the action has spaces at its start or end")
        if not response.strip() and not (response_lines and response_lines[0] == ""):
            problems.append(f"{path}:{lineno}: this turn has no response")
        elif "\n\n" in response.strip("\n"):
            blank = lineno + 1 + response_lines.index("")
            problems.append(f"{path}:{blank}: a response must not contain a blank line")
        parsed.append((action, unwrap(response)))
    if problems:
        raise StoryFormatError(problems)
    return premise, parsed


def parse_story_file(text: str, path: str = "<string>") -> StoryFile:
    """Parse a corpus file (header, ``---``, model text). Every problem is reported at once."""
    problems: list[str] = []
    if text.startswith("\ufeff"):
        text = text[1:]
    text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    try:
        sep = lines.index(HEADER_SEPARATOR)
    except ValueError:
        raise StoryFormatError(
            [f"{path}:1: no '{HEADER_SEPARATOR}' line after the header (title:, genre:, tags:)"]
        ) from None
    header: dict[str, str] = {}
    for i, line in enumerate(lines[:sep], start=1):
        if not line.strip():
            continue
        m = _HEADER_LINE.match(line)
        if not m:
            problems.append(f"{path}:{i}: a header line must be 'key: value', got {line[:40]!r}")
            continue
        header[m.group(1).lower()] = m.group(2).strip()
    for key in REQUIRED_HEADER:
        if not header.get(key):
            problems.append(f"{path}:1: the header has no '{key}:' field")
    body = "\n".join(lines[sep + 1 :])
    if body.endswith("\n"):
        body = body[:-1]
    try:
        premise, turns = parse_model_text(body, path, first_line=sep + 2)
    except StoryFormatError as err:
        problems.extend(err.problems)
        premise, turns = "", []
    if problems:
        raise StoryFormatError(problems)
    tags = [t.strip() for t in header.get("tags", "").split(",") if t.strip()]
    extra = {k: v for k, v in header.items() if k not in REQUIRED_HEADER}
    return StoryFile(header["title"], header["genre"], tags, premise, turns, path, extra)


def render_story_file(story: StoryFile) -> str:
    """The file text of a StoryFile; ``parse_story_file(render_story_file(s))`` gives ``s`` back."""
    head = [f"title: {story.title}", f"genre: {story.genre}", f"tags: {', '.join(story.tags)}"]
    head += [f"{k}: {v}" for k, v in story.extra.items()]
    return "\n".join([*head, HEADER_SEPARATOR, story.model_text()]) + "\n"


def read_story_file(path) -> StoryFile:
    """Read and parse a story file; bytes that are not UTF-8 are reported with their line."""
    from pathlib import Path

    from dungeon.text_files import NotUTF8Error, decode_utf8

    try:
        text = decode_utf8(Path(path).read_bytes(), str(path))
    except NotUTF8Error as err:
        raise StoryFormatError([str(err)]) from None
    return parse_story_file(text, str(path))
