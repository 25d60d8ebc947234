"""The Game: the turn logic of dungeon over any Generator, with no terminal and no files.

Embed it in your own program::

    from dungeon import Game, Story
    from dungeon.generator import FakeGenerator

    game = Game(FakeGenerator(), Story(premise="You wake in a cellar that smells of apples."))
    turn = game.act("I look around")
    print(turn.response)
    for piece in game.stream("say is anyone there?"):
        print(piece, end="", flush=True)

A turn only reaches the story once its response is complete: a stream closed early (or
interrupted with Ctrl-C) leaves the story exactly as it was.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Generator as PyGenerator
from dataclasses import dataclass, field, replace

from dungeon.actions import Action, make_action
from dungeon.cleanup import clean_response, loop_score, sanitize, stream_view
from dungeon.context import Context, ContextSettings, build_context
from dungeon.contrast import guidance_contrast
from dungeon.format import Mode, turn_prefix
from dungeon.generator import Generator, SamplingSettings, stream_rows
from dungeon.story import Candidate, Story, Turn, WorldEntry
from dungeon.world_state import EditOp, WorldState


@dataclass(frozen=True)
class GameSettings:
    """Turn logic settings: context layout and how hard to try for a good response."""

    context: ContextSettings = field(default_factory=ContextSettings)
    max_attempts: int = 3
    """Generations per turn when a response is empty or repeats a recent one."""
    loop_threshold: float = 0.6
    """A response sharing this share of its word trigrams with a recent one is a loop."""
    loop_window: int = 4
    """How many recent responses a new one is compared with."""
    candidates: int = 1
    """Responses written per turn in one batch; the picker chooses which one is shown, and the
    others wait for a retry or a flip (``choose``)."""
    state: bool = True
    """Put the world's state (inventory, condition, people, places) into the context. It is
    kept either way (``/state`` shows it); off measures the model without it."""

    def __post_init__(self) -> None:
        if not 1 <= self.candidates <= MAX_CANDIDATES:
            raise ValueError(
                f"candidates must be between 1 and {MAX_CANDIDATES}, got {self.candidates}"
            )
        if not 1 <= self.max_attempts <= 10:
            raise ValueError(f"max_attempts must be between 1 and 10, got {self.max_attempts}")
        if not 0.0 < self.loop_threshold <= 1.0:
            raise ValueError("loop_threshold must be in (0, 1]")
        if self.loop_window < 0:
            raise ValueError("loop_window must be 0 or more")


MAX_CANDIDATES = 8


@dataclass(frozen=True)
class PickInfo:
    """What a picker knows about the turn its candidates answer."""

    action: str
    """The action as the model saw it ("You open the door."); empty for a continue turn."""
    mode: Mode
    context: Context
    """The prompt the candidates were written for."""
    recent: tuple[str, ...]
    """The responses of the last few turns, oldest first (for repetition checks)."""


Picker = Callable[[PickInfo, Sequence[Candidate]], int]
"""Chooses which of a turn's candidates is shown: gets the turn and the usable candidates (in
batch order), returns an index into them."""


def first_candidate(turn: PickInfo, candidates: Sequence[Candidate]) -> int:
    """The default picker: the first usable candidate, as a single generation would give."""
    return 0


class NothingToDo(Exception):
    """An undo, redo, retry or alter with nothing to act on; the message says why."""


def turn_seed(base: int, turn_index: int, candidate: int, attempt: int) -> int:
    """The seed for one generation: stable across runs, distinct per turn, retry and attempt."""
    return zlib.crc32(f"{base}/{turn_index}/{candidate}/{attempt}".encode()) & 0x7FFFFFFF


class Game:
    """One adventure: a Story, a Generator and the rules that join them."""

    def __init__(
        self,
        generator: Generator,
        story: Story | str,
        settings: GameSettings | None = None,
        *,
        sampling: SamplingSettings | None = None,
        on_commit: Callable[[Game], None] | None = None,
        picker: Picker = first_candidate,
    ):
        self.generator = generator
        self.story = Story(premise=story) if isinstance(story, str) else story
        self.story.premise = sanitize(self.story.premise).strip()
        if not self.story.premise:
            raise ValueError("a story needs a premise: a few sentences that open the adventure")
        self.settings = settings or GameSettings()
        self.sampling = sampling or generator.settings
        self.on_commit = on_commit
        """Called after every change to the story (a UI autosaves here)."""
        self.picker = picker
        """Chooses among a turn's candidates (see ``Picker``); the default keeps the first."""
        self.last_context: Context | None = None
        self.last_notice: str | None = None
        self.last_flagged = False
        self._start_hint: int | None = None
        self.story.refresh_state()

    # --- settings -------------------------------------------------------------------------
    @property
    def context_settings(self) -> ContextSettings:
        """The context settings, with the budget capped to what the model's window allows."""
        ctx = self.settings.context
        room = self.generator.context_window - self.sampling.max_new_tokens
        state_tokens = ctx.state_tokens if self.settings.state else 0
        return replace(ctx, budget=max(16, min(ctx.budget, room)), state_tokens=state_tokens)

    def set_sampling(self, key: str, raw: str) -> SamplingSettings:
        """Change one sampling setting from text (validated); returns the new settings."""
        self.sampling = self.sampling.with_value(key, raw)
        return self.sampling

    def set_candidates(self, raw: str | int) -> int:
        """Change how many responses each turn writes (1 to MAX_CANDIDATES)."""
        try:
            n = int(raw)
        except ValueError:
            raise ValueError(f"candidates takes a whole number, got {raw!r}") from None
        self.settings = replace(self.settings, candidates=n)
        return n

    # --- turns ----------------------------------------------------------------------------
    def act(self, text: str, mode: Mode = "do", *, candidates: int | None = None) -> Turn:
        """Play one turn and return it (the whole response at once).

        ``candidates`` (default: the settings') responses are written in one batch; the
        picker chooses the one shown, and the rest wait for ``retry`` or ``choose``.
        """
        action = self._action(text, mode)
        gen = self._run(action.text, action.mode, self.story.turns, False, n=candidates)
        return self._commit_new(action, self._drain(gen))

    def stream(
        self, text: str, mode: Mode = "do", *, candidates: int | None = None
    ) -> Iterator[str]:
        """Play one turn, yielding cleaned text as it is written; commits at the end.

        With several candidates the first is streamed while the others finish; when the
        picker (or cleanup) then prefers another, the committed turn's response is that one
        (front ends compare it with what they showed). The action is read at once
        (``last_notice`` is set before the first piece).
        """
        return self._stream_turn(self._action(text, mode), candidates)

    def _stream_turn(self, action: Action, n: int | None) -> Iterator[str]:
        found = yield from self._run(action.text, action.mode, self.story.turns, True, n=n)
        self._commit_new(action, found)

    def continue_story(self) -> Turn:
        """Let the story go on with no player action."""
        return self.act("", "continue")

    def retry(self) -> Turn:
        """A new response for the last turn; the old one is kept as an alternative."""
        return self._drain(self.retry_stream())

    def retry_stream(self) -> PyGenerator[str, None, Turn]:
        """Another response for the last turn: a ready candidate at once, else new ones."""
        last = self._last_turn("retry")
        if last.ready:
            last.chosen = last.ready[0]
            last.candidates[last.chosen].shown = True
            yield last.response
            self._changed()
            return last
        found = yield from self._run(
            last.action,
            last.mode,
            self.story.turns[:-1],
            True,
            candidate_index=len(last.candidates),
        )
        start = len(last.candidates)
        last.candidates.extend(found.candidates)
        last.chosen = start + found.chosen
        self._changed()
        return last

    def undo(self) -> Turn:
        """Take back the last turn (redo brings it back)."""
        turn = self._last_turn("undo")
        self.story.undone.append(self.story.turns.pop())
        self._changed()
        return turn

    def redo(self) -> Turn:
        """Bring back the turn most recently undone."""
        if not self.story.undone:
            raise NothingToDo("nothing to redo: no turn has been undone since the last action")
        turn = self.story.undone.pop()
        self.story.turns.append(turn)
        self._changed()
        return turn

    def alter(self, text: str) -> Turn:
        """Replace the last response with ``text``; the old one stays as an alternative."""
        last = self._last_turn("alter")
        new = " ".join(sanitize(text).split())
        if not new:
            raise ValueError("the new response is empty: type the text that should replace it")
        last.candidates.append(Candidate(new, last.seed))
        last.chosen = len(last.candidates) - 1
        self._changed()
        return last

    def choose(self, index: int) -> Turn:
        """Make alternative ``index`` (0-based, in candidate order) the last turn's response."""
        last = self._last_turn("choose")
        if not 0 <= index < len(last.candidates):
            raise IndexError(f"the last turn has {len(last.candidates)} responses")
        last.chosen = index
        last.candidates[index].shown = True
        self._changed()
        return last

    # --- memory, world info, author's note ------------------------------------------------
    def remember(self, fact: str) -> None:
        self.story.remember(sanitize(fact))
        self._changed()

    def forget(self, index: int) -> str:
        fact = self.story.forget(index)
        self._changed()
        return fact

    def set_author_note(self, note: str) -> None:
        self.story.author_note = " ".join(sanitize(note).split())
        self._changed()

    def add_world_entry(self, entry: WorldEntry) -> None:
        self.story.add_world_entry(entry)
        self._changed()

    def remove_world_entry(self, index: int) -> WorldEntry:
        entry = self.story.remove_world_entry(index)
        self._changed()
        return entry

    def edit_state(self, op: EditOp, name: str) -> WorldState:
        """The player's fix to the world's state: ``add`` or ``drop`` an item, ``forget`` a
        person, place or condition. Kept across undo and retry (see dungeon.world_state)."""
        state = self.story.edit_state(op, sanitize(name))
        self._changed()
        return state

    def context_preview(self, text: str = "", mode: Mode = "do") -> Context:
        """The context the next turn would get (for a token gauge), without generating."""
        action = make_action(text, mode)
        return self._context(turn_prefix(action.text, action.mode), self.story.turns)

    # --- inside ---------------------------------------------------------------------------
    def _action(self, text: str, mode: Mode) -> Action:
        action = make_action(text, mode)
        self.last_notice = action.notice
        return action

    def _last_turn(self, what: str) -> Turn:
        if not self.story.turns:
            raise NothingToDo(f"nothing to {what}: the story has no turns yet")
        return self.story.turns[-1]

    def _context(self, tail: str, turns: list[Turn]) -> Context:
        return build_context(
            self.story,
            tail,
            self.generator.count_tokens,
            self.context_settings,
            turns=turns,
            start_hint=self._start_hint,
        )

    def _run(
        self,
        action: str,
        mode: Mode,
        turns: list[Turn],
        streaming: bool,
        candidate_index: int = 0,
        n: int | None = None,
    ) -> PyGenerator[str, None, _Found]:
        """Write ``n`` responses in one batch, retrying when all are empty or loop; when
        streaming, yield the first one's cleaned text as it comes. Returns the usable
        candidates and the picker's choice."""
        n = n or self.settings.candidates
        if not 1 <= n <= MAX_CANDIDATES:
            raise ValueError(f"candidates must be between 1 and {MAX_CANDIDATES}, got {n}")
        context = self._context(turn_prefix(action, mode), turns)
        recent = [t.response for t in turns[-self.settings.loop_window :]] if turns else []
        info = PickInfo(action, mode, context, tuple(recent))
        contrast = guidance_contrast(info) if self.sampling.guidance else None
        threshold = self.settings.loop_threshold
        best: tuple[float, Candidate] | None = None
        for attempt in range(self.settings.max_attempts):
            last = attempt + 1 == self.settings.max_attempts
            seeds = [
                turn_seed(self.story.seed, len(turns), candidate_index + i, attempt)
                for i in range(n)
            ]
            raws, shown, abandoned = [""] * n, "", False
            rows = stream_rows(
                self.generator, context.text, seeds=seeds, settings=self.sampling, contrast=contrast
            )
            try:
                for row, piece in rows:
                    raws[row] += piece
                    if not streaming or row != 0 or abandoned:
                        continue
                    view = stream_view(raws[0])
                    if not shown and view and not last and loop_score(view, recent) >= threshold:
                        abandoned = True  # repeats a recent turn from its first sentence
                        if n == 1:
                            break
                        continue
                    if len(view) > len(shown) and view.startswith(shown):
                        yield view[len(shown) :]
                        shown = view
            finally:
                close = getattr(rows, "close", None)
                if close is not None:
                    close()
            found: list[Candidate] = []
            for row, raw in enumerate(raws):
                cleaned = clean_response(raw)
                penalty = loop_score(cleaned.text, recent) + (0.0 if cleaned.text else 1.0)
                cut_short = abandoned and row == 0
                candidate = Candidate(
                    cleaned.text, seeds[row], flagged=cut_short or penalty >= threshold
                )
                if not cut_short and (best is None or penalty < best[0]):
                    best = (penalty, candidate)
                found.append(candidate)
            usable = [c for c in found if not c.flagged]
            if not usable and shown:
                usable = [found[0]]  # the player has read it: keep it, flagged
            if not usable and last and best is not None:
                usable = [best[1]]  # the least repetitive of the attempts
            if not usable:
                continue
            chosen = self._pick(info, usable)
            for i, c in enumerate(usable):
                c.shown = i == chosen
            pick = usable[chosen]
            if streaming and pick.text.startswith(shown) and pick.text != shown:
                yield pick.text[len(shown) :]
            self.last_context = context
            self._start_hint = context.first_turn
            self.last_flagged = pick.flagged
            return _Found(usable, chosen)
        raise AssertionError("unreachable: the last attempt always returns")

    def _pick(self, turn: PickInfo, usable: list[Candidate]) -> int:
        if len(usable) == 1:
            return 0
        chosen = self.picker(turn, usable)
        if not 0 <= chosen < len(usable):
            raise ValueError(f"the picker chose {chosen} of {len(usable)} candidates")
        return chosen

    @staticmethod
    def _drain(gen: PyGenerator):
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value

    def _commit_new(self, action: Action, found: _Found) -> Turn:
        turn = Turn(action.text, action.mode, found.candidates, found.chosen)
        self.story.settle_state_edits()
        self.story.turns.append(turn)
        self.story.undone.clear()
        self._changed()
        return turn

    def _changed(self) -> None:
        self.story.refresh_state()  # the state follows the turns: undo, retry, choose
        if self.on_commit is not None:
            self.on_commit(self)


@dataclass
class _Found:
    """The usable candidates of one generation and the index of the one shown."""

    candidates: list[Candidate]
    chosen: int
