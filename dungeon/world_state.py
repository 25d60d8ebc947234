"""The world's state, kept by the engine: what the player carries, whom and where they have met,
and how they are, read from the turns. Pure functions on strings: no I/O, no model.

A small model forgets what fell out of its context; the engine does not. Each turn is read with
plain patterns (``You take the iron key.``, ``"I'm Nibsy," she says``, ``Your hand is cut.``) and
folded into a ``WorldState``::

    state = WorldState()
    for i, (action, response) in enumerate(turns):
        state = update(state, action, response, i)

or, with the player's own edits (``/state add``, ``/state drop``) replayed where they were made,
``derive(turns, edits, premise)``. The state is a function of the turns and the edits, so undo,
retry and choose keep it exact by deriving it again. How a turn is read (the patterns, built for
precision) is dungeon.world_reading's; this module folds what it reads into the state, replays
the player's edits and renders the state for the context and for ``/state``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Literal

from dungeon.world_reading import Observation, observe
from dungeon.world_words import (
    cut_name,
    normalize,
    player_name,
    same_person,
    same_thing,
    stem,
)

KINDS = ("inventory", "people", "places", "condition")
Kind = Literal["inventory", "people", "places", "condition"]
EditOp = Literal["add", "drop", "forget"]
EDIT_OPS = ("add", "drop", "forget")


@dataclass(frozen=True)
class Entry:
    """One thing the state knows: a carried object, a person, a place or a condition."""

    name: str
    turn: int
    """The turn it came from (0-based); for a player's edit, the number of turns then."""
    by_player: bool = False
    """Added by the player (``/state add``) rather than read from the story."""


@dataclass(frozen=True)
class StateEdit:
    """A player's correction, replayed after the first ``after`` turns whenever the state is
    derived again."""

    op: EditOp
    name: str
    after: int

    def __post_init__(self) -> None:
        if self.op not in EDIT_OPS:
            raise ValueError(f"unknown state edit {self.op!r}; expected one of {EDIT_OPS}")
        if not self.name.strip():
            raise ValueError("a state edit needs a name")
        if self.after < 0:
            raise ValueError("a state edit's position must be 0 or more")


@dataclass(frozen=True)
class WorldState:
    """Inventory, people, places and condition, each entry with the turn it came from."""

    inventory: tuple[Entry, ...] = ()
    people: tuple[Entry, ...] = ()
    places: tuple[Entry, ...] = ()
    condition: tuple[Entry, ...] = ()
    """The player's wounds, illness and exhaustion, as the story states them."""
    edits: tuple[StateEdit, ...] = ()
    """The player's edits, oldest first, so the state can be derived again from the turns."""
    forgotten: tuple[str, ...] = ()
    """Names the player told the state to forget: never listed again."""
    player: str = ""
    """The player's own name (from the premise), never listed among the people."""

    def entries(self, kind: Kind) -> tuple[Entry, ...]:
        return getattr(self, kind)

    def names(self, kind: Kind) -> list[str]:
        return [e.name for e in self.entries(kind)]


def _add(
    entries: tuple[Entry, ...], name: str, turn: int, *, by_player: bool = False, names=False
) -> tuple[Entry, ...]:
    """With ``name`` added, unless an entry already means it; a fuller name of a person or
    place replaces a shorter one ('Danny' -> 'Danny Orme'), keeping its turn."""
    for k, e in enumerate(entries):
        if same_thing(e.name, name, names=names):
            if names and len(name.split()) > len(e.name.split()):
                return (*entries[:k], replace(e, name=name), *entries[k + 1 :])
            return entries
    return (*entries, Entry(name, turn, by_player))


def _remove(entries: tuple[Entry, ...], name: str) -> tuple[Entry, ...]:
    """Without the entry ``name`` means: an exact match first, else the first that matches."""
    exact = [e for e in entries if normalize(e.name) == normalize(name)]
    gone = exact[0] if exact else next((e for e in entries if same_thing(e.name, name)), None)
    return tuple(e for e in entries if e is not gone)


def _is_forgotten(state: WorldState, name: str) -> bool:
    return any(same_thing(name, f, names=True) for f in state.forgotten)


def _is_player(state: WorldState, name: str) -> bool:
    if not state.player:
        return False
    return same_person(state.player, name)


def apply(state: WorldState, seen: Observation, turn_index: int) -> WorldState:
    """Fold one turn's observation into the state."""
    inventory = state.inventory
    before = {e.name for e in inventory}
    for name in seen.adds:
        inventory = _add(inventory, name, turn_index)
    if seen.drop_new:
        inventory = tuple(e for e in inventory if e.name in before)
    for name in seen.drops:
        inventory = _remove(inventory, name)
    people, places = state.people, state.places
    for name in seen.people:
        if _is_forgotten(state, name) or _is_player(state, name):
            continue
        if not any(same_thing(name, p.name, names=True) for p in places):
            people = _add(people, name, turn_index, names=True)
    for name in seen.places:
        if _is_forgotten(state, name) or _is_player(state, name):
            continue
        if not any(same_thing(name, p.name, names=True) for p in people):
            places = _add(places, name, turn_index, names=True)
    condition = state.condition
    for word in seen.healed:
        condition = tuple(
            e
            for e in condition
            if word not in e.name.split() and stem(word) not in {stem(w) for w in e.name.split()}
        )
    for name in seen.conditions:
        if _is_forgotten(state, name) or any(
            normalize(e.name) == normalize(name) for e in condition
        ):
            continue
        # The newest word on a body part replaces the older: "twisted ankle" -> "swollen ankle".
        part = normalize(name).split()[1:]
        if part:
            condition = tuple(e for e in condition if normalize(e.name).split()[1:] != part)
        condition = (*condition, Entry(name, turn_index))
    return replace(state, inventory=inventory, people=people, places=places, condition=condition)


def update(state: WorldState, action: str, response: str, turn_index: int) -> WorldState:
    """The state after turn ``turn_index`` (its action and chosen response)."""
    return apply(state, observe(action, response), turn_index)


# --- the player's edits -----------------------------------------------------------------------


def apply_edit(state: WorldState, edit: StateEdit) -> WorldState:
    """One edit applied (not recorded: ``edited`` records and applies)."""
    name = cut_name(" ".join(edit.name.split()))
    if edit.op == "add":
        return replace(state, inventory=_add(state.inventory, name, edit.after, by_player=True))
    if edit.op == "drop":
        return replace(state, inventory=_remove(state.inventory, name))
    return replace(
        state,
        people=tuple(e for e in state.people if not same_thing(e.name, name, names=True)),
        places=tuple(e for e in state.places if not same_thing(e.name, name, names=True)),
        condition=tuple(e for e in state.condition if not same_thing(e.name, name, names=True)),
        forgotten=(*state.forgotten, name),
    )


def edited(state: WorldState, op: EditOp, name: str, after: int) -> WorldState:
    """The state with the player's edit recorded and applied; raises ValueError when it would
    change nothing (what to drop or forget is not there, what to add is already carried)."""
    name = cut_name(" ".join(name.split()))
    if not name:
        raise ValueError(f"/state {op} needs a name, e.g. /state {op} lantern")
    if op == "add" and any(same_thing(e.name, name) for e in state.inventory):
        raise ValueError(f"you already carry {name}")
    if op == "drop" and not any(same_thing(e.name, name) for e in state.inventory):
        raise ValueError(f"you carry no {name}; /state lists what you carry")
    if op == "forget" and not any(
        same_thing(e.name, name, names=True)
        for k in ("people", "places", "condition")
        for e in state.entries(k)
    ):
        raise ValueError(f"the state lists no {name} among people, places or condition")
    edit = StateEdit(op, name, after)
    return replace(apply_edit(state, edit), edits=(*state.edits, edit))


def settled(state: WorldState, turns: int) -> WorldState:
    """Edits made beyond the first ``turns`` turns (after an undo) moved to ``turns``: called
    before a new turn is added, so an edit stays before the turn that follows it."""
    if all(e.after <= turns for e in state.edits):
        return state
    edits = tuple(replace(e, after=min(e.after, turns)) for e in state.edits)
    return replace(state, edits=edits)


def derive(
    turns: Iterable[tuple[str, str]], edits: Iterable[StateEdit] = (), premise: str = ""
) -> WorldState:
    """The state of a story: its turns (action, chosen response) read in order, each edit
    replayed after the turns it followed, edits beyond the last turn at the end."""
    pending = list(edits)
    state = WorldState(player=player_name(premise), edits=tuple(pending))
    pending.sort(key=lambda e: e.after)  # stable: same-position edits keep their order
    k = 0
    i = -1
    for i, (action, response) in enumerate(turns):
        while k < len(pending) and pending[k].after <= i:
            state = apply_edit(state, pending[k])
            k += 1
        state = update(state, action, response, i)
    while k < len(pending):
        state = apply_edit(state, pending[k])
        k += 1
    return state


# --- showing it -------------------------------------------------------------------------------

LINE_LABELS = {
    "inventory": "You carry",
    "condition": "Your condition",
    "people": "People you have met",
    "places": "Places you know",
}
RENDER_ORDER: tuple[Kind, ...] = ("inventory", "condition", "people", "places")


@dataclass(frozen=True)
class RenderLimits:
    """How much of the state the context gets: the newest entries of each kind."""

    inventory: int = 10
    condition: int = 4
    people: int = 8
    places: int = 5


def left_behind(state: WorldState, first_turn: int) -> WorldState:
    """The entries that turns before ``first_turn`` established, and the player's own: what a
    prompt starting at ``first_turn`` would not show."""

    def keep(entries: tuple[Entry, ...]) -> tuple[Entry, ...]:
        return tuple(e for e in entries if e.turn < first_turn or e.by_player)

    return replace(state, **{kind: keep(state.entries(kind)) for kind in KINDS})


def _groups(state: WorldState, limits: RenderLimits | None) -> list[tuple[str, list[str]]]:
    limits = limits or RenderLimits()
    groups = []
    for kind in RENDER_ORDER:
        most = getattr(limits, kind)
        names = state.names(kind)[-most:] if most else []
        if names:
            groups.append((LINE_LABELS[kind], names))
    return groups


def render_lines(state: WorldState, limits: RenderLimits | None = None) -> list[str]:
    """Short lines for the context, newest entries kept: 'You carry: iron key, lantern.'"""
    return [f"{label}: {', '.join(names)}." for label, names in _groups(state, limits)]


def fit_state(
    state: WorldState, count: Callable[[str], int], limit: int, limits: RenderLimits | None = None
) -> str:
    """As many of the state's lines as fit in ``limit`` tokens, a line cut to its newest
    entries when the whole of it does not fit; '' when nothing fits. Ends with a newline."""
    kept: list[str] = []
    for label, names in _groups(state, limits):
        while names:
            line = f"{label}: {', '.join(names)}."
            if count("\n".join([*kept, line]) + "\n") <= limit:
                kept.append(line)
                break
            names = names[1:]
    return "\n".join(kept) + "\n" if kept else ""


def describe(state: WorldState) -> str:
    """The whole state for the player (``/state``), with the turn each entry came from."""
    out = []
    for kind in RENDER_ORDER:
        entries = state.entries(kind)
        if not entries:
            out.append(f"{LINE_LABELS[kind]}: (none)")
            continue
        items = [f"{e.name} ({'you' if e.by_player else f'turn {e.turn + 1}'})" for e in entries]
        out.append(f"{LINE_LABELS[kind]}: {', '.join(items)}")
    return "\n".join(out)


__all__ = [
    "EDIT_OPS",
    "KINDS",
    "Entry",
    "Observation",
    "RenderLimits",
    "StateEdit",
    "WorldState",
    "apply",
    "apply_edit",
    "derive",
    "describe",
    "edited",
    "fit_state",
    "left_behind",
    "observe",
    "player_name",
    "render_lines",
    "same_thing",
    "settled",
    "update",
]
