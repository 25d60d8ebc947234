"""The context builder: the prompt for the next turn, within a budget of model tokens.

A pure function of the story, the text that opens the new turn and a token counter. Layout::

    <memory, one fact a line>            pinned
    <the world's state, a few lines>     what the turns left out established; capped
    <world info entries that apply>      as room allows, constant entries first
    <premise>                            pinned
    <tail sentences of an older turn>    only when whole turns no longer fit
    <recent turns, oldest first>         as many as fit, newest kept first
    [Author's note: ...]                 pinned, author_note_depth turns from the end
    <the new turn's prefix>              pinned: "\\n\\n> You open the door.\\n"

The result never exceeds the budget: the text is counted as a whole at the end (token merges
across piece boundaries can differ from the sum of the pieces) and trimmed further if needed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from dungeon.format import render_turn
from dungeon.story import Story, Turn, WorldEntry
from dungeon.world_state import WorldState, derive, fit_state, left_behind

Counter = Callable[[str], int]


@dataclass(frozen=True)
class ContextSettings:
    """How the prompt is laid out and how big it may be."""

    budget: int = 1024
    """The most prompt tokens; leave room in the model's window for the response."""
    author_note_depth: int = 3
    """How many turns from the end the author's note goes (0 = just before the new turn)."""
    world_scan_turns: int = 3
    """How many recent turns are searched for world-info keys (the new action always is)."""
    slide_slack: float = 0.25
    """When old turns must go, drop enough to free this share of the budget, so the start of
    the prompt stays the same for several turns (a backend can then reuse its cache)."""
    state_tokens: int = 64
    """The most tokens the world's state (what you carry, your condition, people, places) may
    take; it goes in after world info as room allows, newest entries first. 0 leaves it out."""
    state_all: bool = False
    """List the whole state, not only what the turns left out of the prompt established. The
    lines then change with most turns, and with them the prompt's start, so a backend that
    reuses its cache of the prompt's start prefills the whole prompt again on those turns."""

    def __post_init__(self) -> None:
        if self.budget < 16:
            raise ValueError(f"the context budget must be at least 16 tokens, got {self.budget}")
        if self.author_note_depth < 0:
            raise ValueError("author_note_depth must be 0 or more")
        if self.world_scan_turns < 0:
            raise ValueError("world_scan_turns must be 0 or more")
        if not 0.0 <= self.slide_slack < 1.0:
            raise ValueError("slide_slack must be in [0, 1)")
        if self.state_tokens < 0:
            raise ValueError("state_tokens must be 0 or more")


class ContextOverflowError(ValueError):
    """The parts that are always kept (premise, memory, note, the new action) exceed the budget."""

    def __init__(self, part: str, tokens: int, budget: int, pinned: int):
        self.part, self.tokens, self.budget, self.pinned = part, tokens, budget, pinned
        super().__init__(
            f"the {part} alone takes {tokens} tokens and the parts always kept take {pinned}, "
            f"over the context budget of {budget}; shorten the {part} or raise the budget"
        )


@dataclass(frozen=True)
class Context:
    """A built prompt and how it was made."""

    text: str
    tokens: int
    budget: int
    first_turn: int
    """Index of the oldest turn included whole (== number of turns when none fit)."""
    partial: bool = False
    """Whether some closing sentences of the turn before ``first_turn`` are included."""
    world_entries: tuple[int, ...] = field(default=())
    """Indices of the world-info entries included."""
    state: str = ""
    """The lines of the world's state included (empty when none fit or it is off)."""


def _has_key(key: str, text: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(key)}(?!\w)", text, re.IGNORECASE) is not None


def active_world_entries(world: Sequence[WorldEntry], scan_text: str) -> list[int]:
    """Indices of entries that apply: constant ones, then ones whose keys occur as whole words."""
    constant = [i for i, e in enumerate(world) if e.constant]
    keyed = [
        i
        for i, e in enumerate(world)
        if not e.constant
        and any(_has_key(k, scan_text) for k in e.keys)
        and (not e.secondary_keys or any(_has_key(k, scan_text) for k in e.secondary_keys))
    ]
    return constant + keyed


def _state_for(story: Story, turns: Sequence[Turn]) -> WorldState:
    """The state as of ``turns``: the story's own, or derived again when a retry leaves out
    the last turn (the state must not know the response being replaced)."""
    if len(turns) == len(story.turns):
        return story.state
    pairs = ((t.action, t.response) for t in turns)
    return derive(pairs, story.state.edits, story.premise)


def _fit_state(state: WorldState, count: Counter, limit: int) -> str:
    """The state's lines (ending in a newline) that fit ``limit`` tokens with the blank line
    after them; '' when none do."""
    for room in range(limit, max(0, limit - 3), -1):  # a token merge can cost one more
        text = fit_state(state, count, room)
        if not text or count(text + "\n") <= limit:
            return text
    return ""


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?…\"'”’)])\s+", text) if s]


def _assemble(
    header: str,
    premise: str,
    partial: str,
    turn_texts: Sequence[str],
    note: str,
    depth: int,
    tail: str,
) -> str:
    parts = [header, premise]
    if partial:
        parts.append("\n\n" + partial)
    insert_at = max(0, len(turn_texts) - depth)
    for i, t in enumerate(turn_texts):
        if note and i == insert_at:
            parts.append(note)
        parts.append(t)
    if note and insert_at >= len(turn_texts):
        parts.append(note)
    parts.append(tail)
    return "".join(parts)


def build_context(
    story: Story,
    tail: str,
    count: Counter,
    settings: ContextSettings | None = None,
    *,
    turns: Sequence[Turn] | None = None,
    start_hint: int | None = None,
) -> Context:
    """Build the prompt for the turn that ``tail`` opens (see dungeon.format.turn_prefix).

    ``turns`` defaults to all the story's turns (a retry passes all but the last).
    ``start_hint`` is the ``first_turn`` of the previous context: the prompt keeps starting
    there while everything fits, and slides by ``slide_slack`` when it no longer does.
    Raises ContextOverflowError when the pinned parts alone exceed the budget.
    """
    settings = settings or ContextSettings()
    budget = settings.budget
    turns = list(story.turns if turns is None else turns)
    memory = "\n".join(story.memory) + "\n\n" if story.memory else ""
    note = f"\n\n[Author's note: {story.author_note}]" if story.author_note.strip() else ""

    sizes = {
        "premise": count(story.premise),
        "memory": count(memory) if memory else 0,
        "author's note": count(note) if note else 0,
        "action": count(tail) if tail else 0,
    }
    pinned = sum(sizes.values())
    if pinned > budget:
        part = max(sizes, key=lambda k: sizes[k])
        raise ContextOverflowError(part, sizes[part], budget, pinned)

    # World info: scan the new action and the last few turns for keys.
    recent = turns[-settings.world_scan_turns :] if settings.world_scan_turns else []
    scan = " ".join([tail, *(f"{t.action} {t.response}" for t in recent)])
    room = budget - pinned
    world_idx: list[int] = []
    for i in active_world_entries(story.world, scan):
        cost = count(story.world[i].text + "\n")
        if cost <= room:
            world_idx.append(i)
            room -= cost

    # The world's state: room for a few capped lines is set aside after world info; what goes
    # there is decided once the turns are placed (below).
    world_state, reserved = None, 0
    if min(room, settings.state_tokens) > 0:
        world_state = _state_for(story, turns)
        whole = _fit_state(world_state, count, min(room, settings.state_tokens))
        reserved = count(whole + "\n") if whole else 0
        room -= reserved

    # Turns, newest first, while they fit.
    texts = [render_turn(t.action, t.mode, t.response) for t in turns]
    costs = [count(t) for t in texts]
    first, used = len(turns), 0
    while first > 0 and used + costs[first - 1] <= room:
        first -= 1
        used += costs[first]

    partial = ""
    if start_hint is not None and first <= start_hint <= len(turns):
        first = start_hint  # everything from the hint still fits: keep the prompt's start
    elif start_hint is not None and first > start_hint and settings.slide_slack > 0:
        # Slide: keep only what fits in (1 - slack) of the room, so later turns append.
        target = room * (1.0 - settings.slide_slack)
        while first < len(turns) and used > target:
            used -= costs[first]
            first += 1
    elif first > 0:
        # Fill what is left with the closing sentences of the next older turn.
        left = room - used
        kept: list[str] = []
        for s in reversed(_sentences(turns[first - 1].response)):
            if count(" ".join([s, *kept])) + 2 > left:
                break
            kept.insert(0, s)
        partial = " ".join(kept)

    # Only what the turns no longer in the prompt established (and the player's own edits):
    # the turns shown say the rest. So these lines change when the window slides, when the
    # prompt's start changes anyway, and a backend's cache of that start stays good (a change
    # at the top of the prompt means prefilling all of it again: seconds on a CPU).
    state = ""
    if world_state is not None and reserved:
        shown = world_state if settings.state_all else left_behind(world_state, first)
        state = _fit_state(shown, count, reserved)

    def header() -> str:
        world = "".join(story.world[i].text + "\n" for i in world_idx)
        return memory + (state + "\n" if state else "") + (world + "\n" if world else "")

    while True:
        text = _assemble(
            header(),
            story.premise,
            partial,
            texts[first:],
            note,
            settings.author_note_depth,
            tail,
        )
        tokens = count(text)
        if tokens <= budget:
            return Context(
                text, tokens, budget, first, bool(partial), tuple(world_idx), state.rstrip("\n")
            )
        # Merged tokens made the whole longer than its parts: give up the least needed piece.
        if partial:
            partial = ""
        elif first < len(turns):
            first += 1
        elif world_idx:
            world_idx.pop()
        elif state:
            state = ""
        else:
            part = max(sizes, key=lambda k: sizes[k])
            raise ContextOverflowError(part, sizes[part], budget, tokens)
