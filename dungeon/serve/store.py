"""The server's games: one Session per game, saved in the server's saves folder.

A game's id is its save slot, so every game the server ever played can be reopened after a
restart (or after being closed to save memory): every change is saved (atomically, in the same
format as ``dungeon play``) before the request that made it returns.

A game runs one thing at a time: while a turn is being written (queued or on the model), other
changes to that game are refused with 409 instead of changing the story under the turn.
"""

from __future__ import annotations

import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from dungeon import saves, startup
from dungeon.config import PlayOptions
from dungeon.generator import Generator
from dungeon.session import Session, check_slot, saves_dir
from dungeon.story import Story

from .security import ApiError

KEEP_S = 60.0
"""A game used this recently is never closed to make room."""


class ServerOutput:
    """The session Output of a game on the server: keeps the last few messages, shows nothing.

    The game API answers with data, not text on a screen; these messages only matter to
    commands that report through the Output, and they are returned with the game's state."""

    def __init__(self, keep: int = 20):
        self.messages: list[dict] = []
        self.keep = keep

    def _add(self, kind: str, text: str) -> None:
        self.messages = [*self.messages, {"kind": kind, "text": text}][-self.keep :]

    def story(self, text: str) -> None:
        pass

    def story_piece(self, text: str) -> None:
        pass

    def end_story(self) -> None:
        pass

    def player(self, text: str) -> None:
        pass

    def system(self, text: str) -> None:
        self._add("system", text)

    def error(self, text: str) -> None:
        self._add("error", text)


@dataclass
class ServerSession(Session):
    """A Session whose saves live in the server's folder instead of the user's."""

    folder: Path = field(default_factory=saves_dir)

    def path(self, slot: str | None = None) -> Path:
        return save_path(self.folder, slot or self.slot)


def save_path(folder: Path, name: str) -> Path:
    """The save file of ``name`` in ``folder`` (checked: no path tricks)."""
    return folder / f"{check_slot(name)}.json"


class Entry:
    """One open game and whether a turn is running on it."""

    def __init__(self, session: ServerSession):
        self.session = session
        self.lock = threading.Lock()
        self.turn_running = False
        self.used = time.monotonic()

    @property
    def id(self) -> str:
        return self.session.slot

    def claim_turn(self) -> None:
        """Mark a turn as running (released by ``release_turn`` when it is over)."""
        with self.lock:
            if self.turn_running:
                raise busy()
            self.turn_running = True

    def release_turn(self) -> None:
        with self.lock:
            self.turn_running = False


def busy() -> ApiError:
    return ApiError(409, "the game is busy writing a turn; try again when it is done", "game_busy")


class GameStore:
    """Open games by id, their save folder, and the start-up path shared with the terminal."""

    def __init__(self, generator: Generator, opts: PlayOptions, folder: Path, max_open: int = 64):
        self.generator = generator
        self.opts = opts
        self.folder = Path(folder)
        self.max_open = max_open
        self._open: OrderedDict[str, Entry] = OrderedDict()
        self._lock = threading.Lock()

    # --- finding games --------------------------------------------------------------------
    def get(self, game_id: str) -> Entry:
        """The open game, or the saved one opened again; 404 when there is none."""
        try:
            slot = check_slot(game_id)
        except ValueError as err:
            raise ApiError(400, str(err)) from None
        with self._lock:
            entry = self._open.get(slot)
            if entry is not None:
                self._open.move_to_end(slot)
                entry.used = time.monotonic()
                return entry
        path = save_path(self.folder, slot)
        if not path.exists():
            raise ApiError(404, f"no game {slot!r}", "not_found")
        try:
            start = startup.Start(*self._read(path), slot=slot, continued=True)
        except saves.SaveError as err:
            raise ApiError(422, str(err).replace(str(self.folder), "<saves>"), "bad_save") from None
        return self._add(start)

    @staticmethod
    def _read(path: Path) -> tuple[Story, dict]:
        data = saves.load(path)
        return data.story, data.sampling

    def list_saves(self) -> list[dict]:
        """Saved games, newest first."""
        if not self.folder.is_dir():
            return []
        found = []
        for p in self.folder.glob("*.json"):
            try:
                name = check_slot(p.stem)
                mtime = p.stat().st_mtime
            except (ValueError, OSError):
                continue
            found.append((mtime, name))
        found.sort(reverse=True)
        return [
            {"name": name, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime))}
            for mtime, name in found
        ]

    # --- making games ---------------------------------------------------------------------
    def new_slot(self, base: str) -> str:
        """A fresh save name for a new game (never one in use or on disk)."""
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-._")[:40] or "story"
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name, n = f"{base}-{stamp}", 2
        while name in self._open or save_path(self.folder, name).exists():
            name, n = f"{base}-{stamp}-{n}", n + 1
        return check_slot(name)

    def create(self, story: Story, base: str, sampling: dict | None = None) -> Entry:
        with self._lock:
            # Under the lock: a second game made in the same second gets another name.
            slot = self.new_slot(base)
            self.folder.mkdir(parents=True, exist_ok=True)
            entry = self._make(startup.Start(story, sampling or {}, slot))
            entry.session.autosave()  # saved before anyone hears of it
            self._open[slot] = entry
            self._evict()
        return entry

    def _make(self, start: startup.Start) -> Entry:
        game = startup.make_game(self.generator, start.story, self.opts, start.sampling)
        info = startup.model_info(self.generator, self.opts)
        session = ServerSession(game, ServerOutput(), info, slot=start.slot, folder=self.folder)
        return Entry(session)

    def _add(self, start: startup.Start) -> Entry:
        with self._lock:
            entry = self._open.get(start.slot)
            if entry is None:  # another request may have opened it meanwhile
                entry = self._open[start.slot] = self._make(start)
                self._evict()
            return entry

    def _evict(self) -> None:
        """Close the least recently used idle games beyond ``max_open`` (they are saved).

        A game touched in the last ``KEEP_S`` seconds stays open even beyond the bound: a
        request may still hold it, and a second copy opened from its save would not see
        that request's change."""
        now = time.monotonic()
        for slot in list(self._open):
            if len(self._open) <= self.max_open:
                break
            entry = self._open[slot]
            if not entry.turn_running and now - entry.used > KEEP_S:
                del self._open[slot]

    def is_open(self, slot: str) -> bool:
        with self._lock:
            return slot in self._open

    def save_copy(self, entry: Entry, name: str, overwrite: bool) -> str:
        """Save the game under another name too (the game keeps its own id)."""
        try:
            name = check_slot(name)
        except ValueError as err:
            raise ApiError(422, str(err)) from None
        if name == entry.id:
            entry.session.autosave()
            return name
        if self.is_open(name):
            raise ApiError(409, f"{name!r} is an open game: choose another name", "name_taken")
        path = save_path(self.folder, name)
        if path.exists() and not overwrite:
            raise ApiError(
                409, f"a save named {name!r} exists; send overwrite: true to replace it", "exists"
            )
        saves.save(path, entry.session.save_data())
        return name
