"""Story state: premise, memory, world info, author's note, turns and the world's state.
No I/O in here.

A Story is plain data with small, pure editing methods; the Game decides what happens and
dungeon.saves turns a Story into JSON and back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dungeon.format import MODES, Mode, render_story
from dungeon.world_state import EditOp, WorldState, derive, edited, settled


@dataclass
class Candidate:
    """One generated response for a turn, with the seed that produced it."""

    text: str
    seed: int
    flagged: bool = False
    """True when cleanup judged it poor (a loop, say) and no better candidate was found."""
    shown: bool = True
    """False for a candidate written in the same batch as the chosen one and not yet shown:
    a retry shows it at once instead of generating."""


@dataclass
class Turn:
    """A player action and the world's response; earlier responses are kept as alternatives."""

    action: str
    mode: Mode
    candidates: list[Candidate]
    chosen: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected one of {', '.join(MODES)}")
        if not self.candidates:
            raise ValueError("a turn needs at least one response")
        if not 0 <= self.chosen < len(self.candidates):
            raise ValueError(f"chosen={self.chosen} but the turn has {len(self.candidates)}")

    @property
    def response(self) -> str:
        return self.candidates[self.chosen].text

    @property
    def seed(self) -> int:
        return self.candidates[self.chosen].seed

    @property
    def ready(self) -> list[int]:
        """Indexes of candidates written but never shown, in order."""
        return [i for i, c in enumerate(self.candidates) if not c.shown]

    @property
    def alternatives(self) -> list[Candidate]:
        """Responses not chosen, kept so a retry can be taken back."""
        return [c for i, c in enumerate(self.candidates) if i != self.chosen]


@dataclass
class WorldEntry:
    """A world-info entry: its text enters the context when a key appears in recent turns."""

    keys: list[str]
    text: str
    secondary_keys: list[str] = field(default_factory=list)
    """When set, the entry is selective: one of these must appear as well."""
    constant: bool = False
    """Always in the context, whatever the recent turns say."""

    def __post_init__(self) -> None:
        self.keys = [k.strip() for k in self.keys if k.strip()]
        self.secondary_keys = [k.strip() for k in self.secondary_keys if k.strip()]
        if not self.text.strip():
            raise ValueError("a world-info entry needs some text")
        if not self.keys and not self.constant:
            raise ValueError("a world-info entry needs at least one key (or constant=True)")


@dataclass
class Story:
    """Everything that makes one adventure, independent of any model or screen."""

    premise: str
    memory: list[str] = field(default_factory=list)
    author_note: str = ""
    world: list[WorldEntry] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    undone: list[Turn] = field(default_factory=list)
    """Turns taken back with undo, newest last, for redo."""
    title: str = ""
    seed: int = 0
    """The story's base seed; each turn's seed is derived from it (see dungeon.game)."""
    state: WorldState = field(default_factory=WorldState)
    """The world's state read from the turns (inventory, people, places, condition) with the
    player's edits to it; ``refresh_state`` derives it again (see dungeon.world_state)."""

    def text(self) -> str:
        """The whole story as model text (what a model with an unlimited context would see)."""
        return render_story(self.premise, ((t.action, t.mode, t.response) for t in self.turns))

    # --- editing (pure data changes; the Game decides when) ------------------------------
    def remember(self, fact: str) -> None:
        fact = " ".join(fact.split())
        if not fact:
            raise ValueError("nothing to remember: give the fact as text")
        self.memory.append(fact)

    def forget(self, index: int) -> str:
        """Remove memory entry ``index`` (0-based) and return it."""
        if not 0 <= index < len(self.memory):
            raise IndexError(f"no memory entry {index + 1}; there are {len(self.memory)}")
        return self.memory.pop(index)

    def refresh_state(self) -> WorldState:
        """Derive the world's state again from the turns and the player's edits (after any
        change to the turns: a new turn, undo, retry, choose)."""
        self.state = derive(
            ((t.action, t.response) for t in self.turns), self.state.edits, self.premise
        )
        return self.state

    def edit_state(self, op: EditOp, name: str) -> WorldState:
        """Record the player's edit to the state (add or drop an item, forget a name) after
        the current turns; raises ValueError when it would change nothing."""
        self.state = edited(self.state, op, name, len(self.turns))
        return self.state

    def settle_state_edits(self) -> None:
        """Before a new turn: edits made after turns since undone stay before the new turn."""
        self.state = settled(self.state, len(self.turns))

    def add_world_entry(self, entry: WorldEntry) -> None:
        self.world.append(entry)

    def remove_world_entry(self, index: int) -> WorldEntry:
        if not 0 <= index < len(self.world):
            raise IndexError(f"no world entry {index + 1}; there are {len(self.world)}")
        return self.world.pop(index)
