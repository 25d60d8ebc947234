"""Saves: a Story (and the settings it was played with) to versioned JSON and back.

Saves only serialize; they decide nothing. Writes are atomic (a temp file in the same folder,
flushed, then renamed over the old save), so a crash mid-save never damages the previous
save. Nothing in a save can run code: it is JSON read into plain dataclasses.

Schema history (``version``):
  1. the first version.
  2. a candidate records whether it has been shown (``shown``): batched candidates wait,
     unshown, for a retry. Version 1 candidates were all shown.
  3. the story holds the world's state (``story.state``: inventory, people, places,
     condition, each entry with its turn, and the player's edits). Version 2 stories had none:
     the migration gives them an empty state with no edits, and the game derives the state
     from the turns when it opens the story.
Older versions are upgraded by the functions in ``MIGRATIONS``, one step at a time.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dungeon.cleanup import sanitize
from dungeon.format import MODES
from dungeon.story import Candidate, Story, Turn, WorldEntry
from dungeon.world_state import EDIT_OPS, KINDS, Entry, StateEdit, WorldState

SAVE_FORMAT = "dungeon-save"
SAVE_VERSION = 3
MAX_SAVE_BYTES = 50_000_000


def _v1_to_v2(doc: dict) -> dict:
    """Version 1 had no unshown candidates: every candidate was shown."""
    story = doc.get("story")
    if isinstance(story, dict):
        for key in ("turns", "undone"):
            for turn in story.get(key) or []:
                for cand in (turn.get("candidates") or []) if isinstance(turn, dict) else []:
                    if isinstance(cand, dict):
                        cand["shown"] = True
    return {**doc, "version": 2}


def _v2_to_v3(doc: dict) -> dict:
    """Version 2 kept no world state: an empty one, with no player edits (the game derives
    the state from the turns when it opens the story)."""
    story = doc.get("story")
    if isinstance(story, dict):
        story = {**story, "state": {**{k: [] for k in KINDS}, "edits": [], "forgotten": []}}
    return {**doc, "story": story, "version": 3}


# version -> function taking a save dict of that version and returning the next version.
MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _v1_to_v2, 2: _v2_to_v3}


class SaveError(Exception):
    """A save that cannot be read or written; the message names the file and the problem."""


@dataclass
class SaveData:
    """What a save holds besides the story: enough to resume the game as it was."""

    story: Story
    sampling: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)
    """Model name, adapter and the like, as the front end describes them."""
    saved_at: str = ""


# --- to JSON ---------------------------------------------------------------------------------


def story_to_dict(story: Story) -> dict:
    def turn(t: Turn) -> dict:
        return {
            "action": t.action,
            "mode": t.mode,
            "chosen": t.chosen,
            "candidates": [
                {"text": c.text, "seed": c.seed, "flagged": c.flagged, "shown": c.shown}
                for c in t.candidates
            ],
        }

    return {
        "title": story.title,
        "seed": story.seed,
        "premise": story.premise,
        "memory": list(story.memory),
        "author_note": story.author_note,
        "world": [
            {
                "keys": e.keys,
                "secondary_keys": e.secondary_keys,
                "constant": e.constant,
                "text": e.text,
            }
            for e in story.world
        ],
        "turns": [turn(t) for t in story.turns],
        "undone": [turn(t) for t in story.undone],
        "state": state_to_dict(story.state),
    }


def state_to_dict(state: WorldState) -> dict:
    doc: dict[str, Any] = {
        kind: [
            {"name": e.name, "turn": e.turn, **({"by_player": True} if e.by_player else {})}
            for e in state.entries(kind)
        ]
        for kind in KINDS
    }
    doc["edits"] = [{"op": e.op, "name": e.name, "after": e.after} for e in state.edits]
    doc["forgotten"] = list(state.forgotten)
    if state.player:
        doc["player"] = state.player
    return doc


def dumps(data: SaveData) -> str:
    doc = {
        "format": SAVE_FORMAT,
        "version": SAVE_VERSION,
        "saved_at": data.saved_at or datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": data.model,
        "sampling": data.sampling,
        "story": story_to_dict(data.story),
    }
    return json.dumps(doc, ensure_ascii=False, indent=1)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that either the old or the new file is there, whole."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save(path: Path, data: SaveData) -> None:
    try:
        write_atomic(Path(path), dumps(data) + "\n")
    except OSError as err:
        raise SaveError(f"{path}: cannot write the save ({err.strerror or err})") from None


# --- from JSON -------------------------------------------------------------------------------


def _need(obj: Any, key: str, kind: type | tuple, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise ValueError(f"{where} has no '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise ValueError(f"{where}.{key} should be {name}, got {type(value).__name__}")
    return value


def _text(obj: dict, key: str, where: str) -> str:
    return sanitize(_need(obj, key, str, where))


def _turn(obj: Any, where: str) -> Turn:
    mode = _need(obj, "mode", str, where)
    if mode not in MODES:
        raise ValueError(f"{where}.mode is {mode!r}; expected one of {', '.join(MODES)}")
    cands = []
    for j, c in enumerate(_need(obj, "candidates", list, where)):
        w = f"{where}.candidates[{j}]"
        cands.append(
            Candidate(
                _text(c, "text", w),
                _need(c, "seed", int, w),
                bool(c.get("flagged")),
                bool(_need(c, "shown", bool, w)),
            )
        )
    try:
        return Turn(_text(obj, "action", where), mode, cands, _need(obj, "chosen", int, where))
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


def state_from_dict(d: Any) -> WorldState:
    """The world's state of a save; raises ValueError naming the field that is wrong."""
    where = "story.state"
    if not isinstance(d, dict):
        raise ValueError(f"{where} should be an object, got {type(d).__name__}")
    kinds = {}
    for kind in KINDS:
        entries = []
        for i, e in enumerate(_need(d, kind, list, where)):
            w = f"{where}.{kind}[{i}]"
            entries.append(
                Entry(_text(e, "name", w), _need(e, "turn", int, w), bool(e.get("by_player")))
            )
        kinds[kind] = tuple(entries)
    edits = []
    for i, e in enumerate(_need(d, "edits", list, where)):
        w = f"{where}.edits[{i}]"
        op = _need(e, "op", str, w)
        if op not in EDIT_OPS:
            raise ValueError(f"{w}.op is {op!r}; expected one of {', '.join(EDIT_OPS)}")
        try:
            edits.append(StateEdit(op, _text(e, "name", w), _need(e, "after", int, w)))  # type: ignore[arg-type]
        except ValueError as err:
            raise ValueError(f"{w}: {err}") from None
    forgotten = tuple(sanitize(f) for f in d.get("forgotten", []) if isinstance(f, str))
    player = sanitize(d.get("player", "") or "") if isinstance(d.get("player", ""), str) else ""
    return WorldState(**kinds, edits=tuple(edits), forgotten=forgotten, player=player)


def story_from_dict(d: Any) -> Story:
    world = []
    for i, e in enumerate(_need({"story": d}, "story", dict, "save").get("world", [])):
        w = f"story.world[{i}]"
        try:
            world.append(
                WorldEntry(
                    [sanitize(k) for k in _need(e, "keys", list, w) if isinstance(k, str)],
                    _text(e, "text", w),
                    [sanitize(k) for k in e.get("secondary_keys", []) if isinstance(k, str)],
                    bool(e.get("constant", False)),
                )
            )
        except ValueError as err:
            raise ValueError(f"{w}: {err}") from None
    memory = _need(d, "memory", list, "story")
    return Story(
        premise=_text(d, "premise", "story"),
        memory=[sanitize(m) for m in memory if isinstance(m, str)],
        author_note=sanitize(d.get("author_note", "") or ""),
        world=world,
        turns=[
            _turn(t, f"story.turns[{i}]") for i, t in enumerate(_need(d, "turns", list, "story"))
        ],
        undone=[_turn(t, f"story.undone[{i}]") for i, t in enumerate(d.get("undone", []))],
        title=sanitize(d.get("title", "") or ""),
        seed=_need(d, "seed", int, "story"),
        state=state_from_dict(_need(d, "state", dict, "story")),
    )


def loads(text: str, source: str = "<save>") -> SaveData:
    """Parse save text; raises SaveError naming ``source`` and what is wrong."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as err:
        raise SaveError(
            f"{source}: not a dungeon save (broken JSON at line {err.lineno}, column {err.colno}; "
            "the file may be truncated or damaged)"
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != SAVE_FORMAT:
        raise SaveError(f'{source}: not a dungeon save (no "format": "{SAVE_FORMAT}" field)')
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise SaveError(f"{source}: the save has no version number")
    if version > SAVE_VERSION:
        raise SaveError(
            f"{source}: save version {version} is newer than this dungeon reads ({SAVE_VERSION}); "
            "upgrade dungeon to load it"
        )
    while version < SAVE_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise SaveError(f"{source}: save version {version} is too old and cannot be upgraded")
        doc = step(doc)
        version = doc["version"]
    try:
        story = story_from_dict(doc.get("story"))
    except ValueError as err:
        raise SaveError(f"{source}: damaged save: {err}") from None
    sampling = doc.get("sampling") if isinstance(doc.get("sampling"), dict) else {}
    model = doc.get("model") if isinstance(doc.get("model"), dict) else {}
    return SaveData(story, sampling, model, str(doc.get("saved_at", "")))


def load(path: Path) -> SaveData:
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_SAVE_BYTES:
            raise SaveError(f"{path}: {size:,} bytes is too big for a save")
        data = path.read_bytes()
    except FileNotFoundError:
        raise SaveError(f"{path}: no such save") from None
    except IsADirectoryError:
        raise SaveError(f"{path}: is a folder, not a save") from None
    except OSError as err:
        raise SaveError(f"{path}: cannot read the save ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SaveError(f"{path}: not a dungeon save (not UTF-8 text)") from None
    return loads(text, str(path))


# --- transcripts -----------------------------------------------------------------------------


def export_text(story: Story) -> str:
    """The story as plain text, as a reader would want it."""
    out = [story.title, ""] if story.title else []
    out.append(story.premise)
    for t in story.turns:
        out.append("")
        if t.mode in ("do", "say"):
            out.append(f"> {t.action}")
        elif t.mode == "story":
            out.append(t.action)
        out.append(t.response)
    return "\n".join(out) + "\n"


def export_markdown(story: Story) -> str:
    """The story as Markdown: player actions in bold quotes, responses as paragraphs."""

    def esc(s: str) -> str:
        for ch in "\\`*_[]<>#|":
            s = s.replace(ch, "\\" + ch)
        return s

    out = [f"# {esc(story.title or 'A dungeon adventure')}", "", esc(story.premise)]
    for t in story.turns:
        out.append("")
        if t.mode in ("do", "say"):
            out.append(f"> **{esc(t.action)}**")
            out.append("")
        elif t.mode == "story":
            out.append(f"*{esc(t.action)}*")
            out.append("")
        out.append(esc(t.response))
    return "\n".join(out) + "\n"
