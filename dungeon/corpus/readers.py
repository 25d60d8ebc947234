"""A user's text, in whatever shape it comes, as stories in the story format.

Pure Python (no datasets, no torch): the corpus checker and fine-tuning read text through the
same functions, so they agree on what a file holds::

    from dungeon.corpus.readers import ReadOptions, read_text_file, story_from_text

    stories, problems = read_text_file(Path("big.txt"), "big.txt", ReadOptions())
    story, problems = story_from_text("You wake.\\n\\n> look\\nA cellar.", "one", "one")
    story.text       # 'You wake.\\n\\n> You look around.\\nA cellar.' (dungeon.format)
    story.changed    # 1: the action line play would have sent differently

What a text is:

- **A project story file**: the header (``title:``, ``genre:``, ``tags:``, then ``---``) and a
  body in the story format. Parsed strictly by dungeon.format, as for ``stories/``.
- **Turns**: any other text with lines that start with ``>`` (the story format without its
  header, or a transcript in AI Dungeon's ``> You ...`` style). The text before the first
  action line is the premise; each action line starts a turn whose response runs to the next
  action line. A response's paragraphs become one paragraph, since play ends a response at a
  blank line; a turn without a response is left out (and counted).
- **Prose**: a text without action lines (a tale, a chapter, a novel): continuous text.

A header that is incomplete (or absent) is optional: the title falls back to a Markdown
``# heading`` on the first line, then to the file name. Every action line goes through
dungeon.actions.make_action, the normalisation play applies to what the player types, so what
trains is what play sends (``keep_actions`` turns that off); ``changed`` counts the lines it
changed. The model text always comes from dungeon.format's ``render_story``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from dungeon.actions import make_action
from dungeon.format import (
    HEADER_SEPARATOR,
    REQUIRED_HEADER,
    StoryFile,
    StoryFormatError,
    parse_story_file,
    render_story,
    unwrap,
)
from dungeon.text_files import NotUTF8Error, decode_utf8

END_OF_TEXT = "<|endoftext|>"
"""Where one story of a big text file ends, unless ``--separator`` names another marker."""
SNIFF_BYTES = 8192
"""A file with a NUL byte among its first bytes is binary, not text."""
_HEADER_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_-]*):\s*(.*)$")
_MD_HEADING = re.compile(r"^#{1,6}\s+(\S.*)$")


@dataclass(frozen=True)
class ReadOptions:
    """How to read a user's text files (the ``--separator``, ``--encoding``, ``--text-column``
    and ``--keep-actions`` flags of fine-tuning and ``dungeon check-corpus``)."""

    separator: str | None = None
    """Marker between the stories of one file; None: ``<|endoftext|>`` where it occurs."""
    encoding: str | None = None
    """The files' encoding; None: UTF-8, and bytes that are not UTF-8 are reported."""
    text_column: str = "text"
    """The column of a CSV/TSV file, saved dataset or hub dataset that holds a story."""
    keep_actions: bool = False
    """Train on action lines as written instead of as play renders them."""

    def __post_init__(self) -> None:
        if self.separator is not None and not self.separator.strip():
            raise ValueError("--separator must not be empty or only spaces")
        if not self.text_column:
            raise ValueError("--text-column must not be empty")


@dataclass
class StoryText:
    """One story as a model trains on it, with what the checker and statistics need."""

    name: str
    text: str
    """Model text (dungeon.format.render_story), no end-of-text token."""
    title: str
    genre: str = ""
    kind: str = "turns"
    """``turns`` (premise and turns) or ``prose`` (continuous text)."""
    actions: list[str] = field(default_factory=list)
    """The action of each turn, as trained on."""
    changed: int = 0
    """Action lines that make_action rendered differently from the text."""
    dropped: int = 0
    """Turns left out because they had no response."""
    project: StoryFile | None = None
    """The parsed file, for a project story file (complete header, strict story format)."""


def decode_file(path: Path, options: ReadOptions) -> tuple[str | None, list[str]]:
    """The text of a file, or None and one line saying why it is not usable text."""
    try:
        data = path.read_bytes()
    except OSError as err:
        return None, [f"{path}: cannot be read ({err.strerror or err})"]
    if not data.strip():
        return None, [f"{path}: empty file"]
    if b"\0" in data[:SNIFF_BYTES]:
        return None, [f"{path}: a binary file, not text (a NUL byte in its first bytes)"]
    return decode_bytes(data, str(path), options)


def decode_bytes(data: bytes, where: str, options: ReadOptions) -> tuple[str | None, list[str]]:
    if options.encoding:
        try:
            text = data.decode(options.encoding)
        except LookupError:
            return None, [f"--encoding {options.encoding!r}: no such encoding"]
        except UnicodeDecodeError as err:
            line = data[: err.start].count(b"\n") + 1
            return None, [
                f"{where}:{line}: not {options.encoding} text (byte 0x{data[err.start]:02x} at "
                f"offset {err.start})"
            ]
    else:
        try:
            text = decode_utf8(data, where, "save it as UTF-8, or pass --encoding (e.g. cp1252)")
        except NotUTF8Error as err:
            return None, [str(err)]
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n"), []


def split_stories(text: str, separator: str | None) -> list[str]:
    """The stories of one text: split on ``separator`` (or ``<|endoftext|>``), blanks dropped."""
    pieces = text.split(separator or END_OF_TEXT)
    return [p for p in pieces if p.strip()]


def read_text_file(
    path: Path, name: str, options: ReadOptions
) -> tuple[list[StoryText], list[str], bool]:
    """The stories of one text file: ``(stories, problems, separator_found)``.

    A file holding the separator is several stories, named ``name#1``, ``name#2``, ...
    """
    text, problems = decode_file(path, options)
    if text is None:
        return [], problems, False
    marker = options.separator or END_OF_TEXT
    found = marker in text
    pieces = split_stories(text, options.separator) if found else [text]
    if found and not pieces:
        return [], [f"{path}: only separators ({marker!r}), no story"], True
    stories = []
    for i, piece in enumerate(pieces, start=1):
        label = f"{name}#{i}" if found else name
        where = f"{path} (story {i})" if found else str(path)
        story, errs = story_from_text(piece, label, where, options, fallback_title=path.stem)
        problems.extend(errs)
        if story is not None:
            stories.append(story)
    return stories, problems, found


def split_header(text: str) -> tuple[dict[str, str], str]:
    """``(header, body)``: a header is ``key: value`` lines and then a ``---`` line."""
    lines = text.split("\n")
    if HEADER_SEPARATOR not in lines[:40]:
        return {}, text
    sep = lines.index(HEADER_SEPARATOR)
    header = {}
    for line in lines[:sep]:
        if not line.strip():
            continue
        m = _HEADER_LINE.match(line)
        if not m:
            return {}, text
        header[m.group(1).lower()] = m.group(2).strip()
    if not header:
        return {}, text
    return header, "\n".join(lines[sep + 1 :])


def story_from_text(
    text: str,
    name: str,
    where: str,
    options: ReadOptions,
    fallback_title: str | None = None,
) -> tuple[StoryText | None, list[str]]:
    """One story from its text (see the module docstring); ``(story or None, problems)``."""
    text = text.removeprefix("\ufeff").replace("\r\n", "\n")
    header, body = split_header(text)
    if all(header.get(k) for k in REQUIRED_HEADER):
        try:
            sf = parse_story_file(text, where)
        except StoryFormatError as err:
            return None, err.problems
        premise, turns, dropped, project = sf.premise, sf.turns, 0, sf
        title, genre = sf.title, sf.genre
    else:
        title = header.get("title", "")
        lines = body.strip("\n").split("\n")
        heading = _MD_HEADING.match(lines[0]) if lines else None
        if heading and not title:
            title, body = heading.group(1).strip(), "\n".join(lines[1:])
        premise, turns, dropped = parse_turns(body)
        project, genre = None, header.get("genre", "")
        title = title or fallback_title or name
    if not premise and not turns:
        return None, [f"{where}: no text"]
    rendered, actions, changed = [], [], 0
    for action, response in turns:
        made = make_action(action, "do")
        if made.mode == "continue" or options.keep_actions:
            new, mode = action, "do"
        else:
            new, mode = made.text, made.mode
        changed += new != action
        rendered.append((new, mode, response))
        actions.append(new)
    model_text = render_story(premise, rendered)
    if not premise:
        model_text = model_text.lstrip("\n")  # a transcript that starts with an action
    kind = "turns" if turns else "prose"
    return StoryText(name, model_text, title, genre, kind, actions, changed, dropped, project), []


def parse_turns(body: str) -> tuple[str, list[tuple[str, str]], int]:
    """Lenient turns: ``(premise, [(action, response)], turns dropped)``.

    A line starting with ``>`` is an action; the response runs to the next one, its
    paragraphs joined into one (play ends a response at a blank line).
    """
    premise_lines: list[str] = []
    turns: list[tuple[str, list[str]]] = []
    for line in body.split("\n"):
        if line.startswith(">"):
            turns.append((line[1:].strip(), []))
        elif turns:
            turns[-1][1].append(line)
        else:
            premise_lines.append(line)
    premise = unwrap("\n".join(premise_lines))
    kept, dropped = [], 0
    for action, lines in turns:
        response = unwrap("\n".join(lines)).replace("\n\n", " ")
        if not action or not response.strip():
            dropped += 1
            continue
        kept.append((action, response))
    return premise, kept, dropped
