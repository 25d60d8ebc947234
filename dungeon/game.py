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
from collections.abc import Callable, Iterator
from collections.abc import Generator as PyGenerator
from dataclasses import dataclass, field, replace

from dungeon.actions import Action, make_action
from dungeon.cleanup import clean_response, loop_score, sanitize, stream_view
from dungeon.context import Context, ContextSettings, build_context
from dungeon.format import Mode, turn_prefix
from dungeon.generator import Generator, SamplingSettings
from dungeon.story import Candidate, Story, Turn, WorldEntry


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

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 10:
            raise ValueError(f"max_attempts must be between 1 and 10, got {self.max_attempts}")
        if not 0.0 < self.loop_threshold <= 1.0:
            raise ValueError("loop_threshold must be in (0, 1]")
        if self.loop_window < 0:
            raise ValueError("loop_window must be 0 or more")


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
        self.last_context: Context | None = None
        self.last_notice: str | None = None
        self.last_flagged = False
        self._start_hint: int | None = None

    # --- settings -------------------------------------------------------------------------
    @property
    def context_settings(self) -> ContextSettings:
        """The context settings, with the budget capped to what the model's window allows."""
        ctx = self.settings.context
        room = self.generator.context_window - self.sampling.max_new_tokens
        return replace(ctx, budget=max(16, min(ctx.budget, room)))

    def set_sampling(self, key: str, raw: str) -> SamplingSettings:
        """Change one sampling setting from text (validated); returns the new settings."""
        self.sampling = self.sampling.with_value(key, raw)
        return self.sampling

    # --- turns ----------------------------------------------------------------------------
    def act(self, text: str, mode: Mode = "do") -> Turn:
        """Play one turn and return it (the whole response at once)."""
        action = self._action(text, mode)
        gen = self._run(action.text, action.mode, self.story.turns, streaming=False)
        return self._commit_new(action, self._drain(gen))

    def stream(self, text: str, mode: Mode = "do") -> Iterator[str]:
        """Play one turn, yielding cleaned text as it is written; commits at the end.

        The action is read at once (``last_notice`` is set before the first piece).
        """
        return self._stream_turn(self._action(text, mode))

    def _stream_turn(self, action: Action) -> Iterator[str]:
        candidate = yield from self._run(action.text, action.mode, self.story.turns, True)
        self._commit_new(action, candidate)

    def continue_story(self) -> Turn:
        """Let the story go on with no player action."""
        return self.act("", "continue")

    def retry(self) -> Turn:
        """A new response for the last turn; the old one is kept as an alternative."""
        return self._drain(self.retry_stream())

    def retry_stream(self) -> PyGenerator[str, None, Turn]:
        last = self._last_turn("retry")
        candidate = yield from self._run(
            last.action,
            last.mode,
            self.story.turns[:-1],
            True,
            candidate_index=len(last.candidates),
        )
        last.candidates.append(candidate)
        last.chosen = len(last.candidates) - 1
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
    ) -> PyGenerator[str, None, Candidate]:
        """Generate one response, retrying empty or looping ones; yield text when streaming."""
        tail = turn_prefix(action, mode)
        context = self._context(tail, turns)
        recent = [t.response for t in turns[-self.settings.loop_window :]] if turns else []
        threshold = self.settings.loop_threshold
        best: tuple[float, Candidate] | None = None
        for attempt in range(self.settings.max_attempts):
            last = attempt + 1 == self.settings.max_attempts
            seed = turn_seed(self.story.seed, len(turns), candidate_index, attempt)
            raw, shown, abandoned = "", "", False
            pieces = self.generator.stream(context.text, seed=seed, settings=self.sampling)
            try:
                for piece in pieces:
                    raw += piece
                    if not streaming:
                        continue
                    view = stream_view(raw)
                    if not shown and view and not last and loop_score(view, recent) >= threshold:
                        abandoned = True  # repeats a recent turn from its first sentence
                        break
                    if len(view) > len(shown) and view.startswith(shown):
                        yield view[len(shown) :]
                        shown = view
            finally:
                close = getattr(pieces, "close", None)
                if close is not None:
                    close()
            cleaned = clean_response(raw)
            penalty = loop_score(cleaned.text, recent) + (0.0 if cleaned.text else 1.0)
            candidate = Candidate(cleaned.text, seed, flagged=abandoned or penalty >= threshold)
            if not abandoned and (best is None or penalty < best[0]):
                best = (penalty, candidate)
            if shown or not candidate.flagged or last:
                if not shown and best is not None:
                    candidate = best[1]  # the least repetitive of the attempts
                if streaming and candidate.text.startswith(shown) and candidate.text != shown:
                    yield candidate.text[len(shown) :]
                self.last_context = context
                self._start_hint = context.first_turn
                self.last_flagged = candidate.flagged
                return candidate
        raise AssertionError("unreachable: the last attempt always returns")

    @staticmethod
    def _drain(gen: PyGenerator):
        while True:
            try:
                next(gen)
            except StopIteration as stop:
                return stop.value

    def _commit_new(self, action: Action, candidate: Candidate) -> Turn:
        turn = Turn(action.text, action.mode, [candidate])
        self.story.turns.append(turn)
        self.story.undone.clear()
        self._changed()
        return turn

    def _changed(self) -> None:
        if self.on_commit is not None:
            self.on_commit(self)
