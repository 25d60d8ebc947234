"""A play session: one Game plus what a front end needs around it (saves, model info, output).

The session owns autosave and named save slots in the user data folder. It knows nothing of
terminals: front ends pass an ``Output`` (coloured terminal or plain text) and the hooks
``edit`` (multi-line editing) and ``restart`` (``/new``) where they can offer them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from dungeon import saves
from dungeon.game import Game
from dungeon.paths import data_dir
from dungeon.story import Story

AUTOSAVE = "autosave"
_SLOT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class Output(Protocol):
    """Where a front end writes; story text to stdout, the rest as the front end sees fit."""

    def story(self, text: str) -> None: ...
    def story_piece(self, text: str) -> None: ...
    def end_story(self) -> None: ...
    def player(self, text: str) -> None: ...
    def system(self, text: str) -> None: ...
    def error(self, text: str) -> None: ...


def saves_dir() -> Path:
    return data_dir() / "saves"


def check_slot(name: str) -> str:
    name = name.strip()
    if name.endswith(".json"):
        name = name[:-5]
    if not _SLOT.match(name):
        raise ValueError(
            f"{name!r} is not a usable save name: use up to 64 letters, digits, '.', '-' or '_'"
        )
    return name


def slot_path(name: str) -> Path:
    """The save file of slot ``name`` (checked: no path tricks, a usable file name)."""
    return saves_dir() / f"{check_slot(name)}.json"


def new_slot(base: str) -> str:
    """A fresh save slot for a new story, so that starting one never overwrites another."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-._")[:40] or "story"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name, n = f"{base}-{stamp}", 2
    while slot_path(name).exists():
        name, n = f"{base}-{stamp}-{n}", n + 1
    return check_slot(name)


def list_saves() -> list[tuple[str, float]]:
    """Save slots, newest first, as (name, modification time)."""
    folder = saves_dir()
    if not folder.exists():
        return []
    found = [(p.stem, p.stat().st_mtime) for p in folder.glob("*.json")]
    return sorted(found, key=lambda x: -x[1])


@dataclass
class Session:
    """One game as a front end plays it."""

    game: Game
    out: Output
    model_info: dict = field(default_factory=dict)
    slot: str = AUTOSAVE
    quit: bool = False
    edit: Callable[[str, str], str | None] | None = None
    """Front-end hook: edit(title, text) -> new text, or None when cancelled."""
    restart: Callable[[Session, str], None] | None = None
    """Front-end hook for /new: restart(session, scenario_name_or_empty)."""

    def __post_init__(self) -> None:
        self.game.on_commit = lambda _game: self.autosave()

    # --- saving ---------------------------------------------------------------------------
    def save_data(self) -> saves.SaveData:
        return saves.SaveData(self.game.story, self.game.sampling.to_dict(), self.model_info)

    def path(self, slot: str | None = None) -> Path:
        return slot_path(slot or self.slot)

    def autosave(self) -> None:
        saves.save(self.path(), self.save_data())

    def save(self, name: str | None = None) -> Path:
        if name:
            self.slot = check_slot(name)
        path = self.path()
        saves.save(path, self.save_data())
        return path

    def load(self, name: str) -> Path:
        path = self.path(name)
        data = saves.load(path)
        self.replace_story(data.story, data.sampling)
        self.slot = check_slot(name)
        return path

    def show_recent(self, turns: int = 2) -> None:
        """The premise (while the story is young) and the last few turns: where we are."""
        story = self.game.story
        if len(story.turns) <= turns:
            self.out.story(story.premise)
        for turn in story.turns[-turns:] if turns else []:
            if turn.action:
                self.out.player(turn.action)
            self.out.story(turn.response)

    def replace_story(self, story: Story, sampling: dict | None = None) -> None:
        game = self.game
        self.game = Game(
            game.generator,
            story,
            game.settings,
            sampling=game.sampling.updated(sampling),
            on_commit=lambda _game: self.autosave(),
        )
