"""The Generator protocol every model backend implements, its settings, and a fake for tests.

A backend turns a prompt into text. The Game only needs four things from it: ``generate``
(the whole text), ``stream`` (pieces as they come), ``count_tokens`` (context budgeting) and
its settings. A backend that can also say how likely a text is implements ``Scorer``, which
``dungeon eval`` measures perplexity with, and ``ContinuationScorer``, which the adherence
picker reranks candidates with. ``FakeGenerator`` is deterministic and model-free:
tests and examples use it.
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import Protocol, runtime_checkable

from dungeon.format import STOP_STRINGS


@dataclass(frozen=True)
class SamplingSettings:
    """How a backend samples text. Validated on construction."""

    temperature: float = 0.8
    """Softmax temperature; 0 means greedy decoding."""
    top_k: int = 50
    """Keep only the k most likely tokens (0 turns it off)."""
    top_p: float = 0.92
    """Nucleus sampling: keep the smallest set of tokens whose probability sums to top_p."""
    typical_p: float = 1.0
    """Locally typical sampling mass (1.0 turns it off)."""
    repetition_penalty: float = 1.1
    """Divides positive logits and multiplies negative ones of recent tokens (1.0 = off)."""
    repetition_window: int = 256
    """How many recent tokens the repetition penalty looks at."""
    max_new_tokens: int = 80
    """Upper bound on the length of one response, in tokens."""
    min_new_tokens: int = 4
    """The end-of-text token is not allowed before this many new tokens."""
    ban_marker: bool = False
    """Forbid the tokens that start a player line, so the model cannot act for the player."""
    guidance: float = 0.0
    """Action guidance (0 = off): each token's logit gains this times how much more likely the
    token is after the player's action than after a neutral one ("You look around."), so the
    text leans toward what the action asked for. Costs a second cache row per response;
    backends that cannot (a remote model, models other than Llama-family on the CPU) write
    unguided text."""

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 <= self.temperature <= 5.0:
            problems.append(f"temperature must be between 0 and 5, got {self.temperature}")
        if self.top_k < 0:
            problems.append(f"top_k must be 0 (off) or more, got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0.0 < self.typical_p <= 1.0:
            problems.append(f"typical_p must be in (0, 1], got {self.typical_p}")
        if not 1.0 <= self.repetition_penalty <= 3.0:
            problems.append(
                f"repetition_penalty must be between 1.0 (off) and 3.0, got {self.repetition_penalty}"
            )
        if self.repetition_window < 0:
            problems.append(f"repetition_window must be 0 or more, got {self.repetition_window}")
        if not 1 <= self.max_new_tokens <= 4096:
            problems.append(f"max_new_tokens must be between 1 and 4096, got {self.max_new_tokens}")
        if not 0.0 <= self.guidance <= 5.0:
            problems.append(f"guidance must be between 0 (off) and 5, got {self.guidance}")
        if not 0 <= self.min_new_tokens <= self.max_new_tokens:
            problems.append(
                f"min_new_tokens must be between 0 and max_new_tokens ({self.max_new_tokens}), "
                f"got {self.min_new_tokens}"
            )
        if problems:
            raise ValueError("; ".join(problems))

    def with_value(self, key: str, raw: str) -> SamplingSettings:
        """A copy with one setting parsed from text (for ``/set top_p 0.9``); raises ValueError."""
        types = {f.name: f.type for f in fields(self)}
        if key not in types:
            raise ValueError(f"no setting {key!r}; settings are: {', '.join(types)}")
        kind = str(types[key])
        try:
            if "bool" in kind:
                low = raw.strip().lower()
                if low not in ("on", "off", "true", "false", "yes", "no", "1", "0"):
                    raise ValueError
                value: object = low in ("on", "true", "yes", "1")
            elif "int" in kind:
                value = int(raw)
            else:
                value = float(raw)
        except ValueError:
            raise ValueError(f"{key} takes a {kind.split()[0]} value, got {raw!r}") from None
        return replace(self, **{key: value})

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> SamplingSettings:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def updated(self, data: dict | None) -> SamplingSettings:
        """A copy with the known keys of ``data`` (a save's or a config's) applied, validated."""
        return SamplingSettings.from_dict({**self.to_dict(), **(data or {})})


@runtime_checkable
class Generator(Protocol):
    """What the Game needs from a model backend."""

    name: str
    settings: SamplingSettings
    context_window: int
    """The most tokens the model can attend to (prompt plus new tokens)."""

    def count_tokens(self, text: str) -> int: ...

    def generate(
        self,
        prompt: str,
        *,
        seed: int,
        settings: SamplingSettings | None = None,
        stop: Sequence[str] = STOP_STRINGS,
    ) -> str: ...

    def stream(
        self,
        prompt: str,
        *,
        seed: int,
        settings: SamplingSettings | None = None,
        stop: Sequence[str] = STOP_STRINGS,
    ) -> Iterator[str]: ...


@runtime_checkable
class BatchGenerator(Protocol):
    """A Generator that writes several responses to one prompt in one batch (optional).

    Decoding is bound by reading the weights, so a batch costs little more than one response;
    the Game uses this for its candidates and falls back to one ``stream`` per seed.
    """

    def stream_batch(
        self,
        prompt: str,
        *,
        seeds: Sequence[int],
        settings: SamplingSettings | None = None,
        stop: Sequence[str] = STOP_STRINGS,
    ) -> Iterator[tuple[int, str]]:
        """(row, piece) pairs as each row's text becomes safe to show; row i is sampled from
        ``seeds[i]``, so the same seeds give the same texts."""
        ...


@runtime_checkable
class GuidedGenerator(Protocol):
    """A Generator that can guide its text toward the player's action (optional; see
    ``SamplingSettings.guidance``). ``contrast`` is ``prompt`` with the action line swapped
    for a neutral one; at each step a response's logits gain ``guidance`` times the
    difference of its next-token log-probabilities after the two."""

    def stream_guided(
        self,
        prompt: str,
        contrast: str,
        *,
        seeds: Sequence[int],
        settings: SamplingSettings | None = None,
        stop: Sequence[str] = STOP_STRINGS,
    ) -> Iterator[tuple[int, str]]:
        """(row, piece) pairs as ``stream_batch`` yields them."""
        ...


def stream_rows(
    generator: Generator,
    prompt: str,
    *,
    seeds: Sequence[int],
    settings: SamplingSettings | None = None,
    stop: Sequence[str] = STOP_STRINGS,
    contrast: str | None = None,
) -> Iterator[tuple[int, str]]:
    """(row, piece) pairs for one response per seed: one batch where the backend is a
    BatchGenerator, else one ``stream`` per seed in turn (each closed, even when the caller
    stops early). With ``contrast`` (the prompt with a neutral action) and guidance on, a
    GuidedGenerator guides the batch; other backends write unguided text."""
    guidance = (settings or generator.settings).guidance
    if contrast is not None and guidance > 0 and isinstance(generator, GuidedGenerator):
        yield from generator.stream_guided(
            prompt, contrast, seeds=seeds, settings=settings, stop=stop
        )
        return
    if len(seeds) > 1 and isinstance(generator, BatchGenerator):
        yield from generator.stream_batch(prompt, seeds=seeds, settings=settings, stop=stop)
        return
    for row, seed in enumerate(seeds):
        pieces = generator.stream(prompt, seed=seed, settings=settings, stop=stop)
        try:
            for piece in pieces:
                yield row, piece
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()


@runtime_checkable
class Scorer(Protocol):
    """What a backend offers to score text instead of writing it (optional: check with
    ``isinstance(generator, Scorer)``). The mean log-prob of a response after an action::

        logprobs = generator.token_logprobs(context_ending_with_the_action, response)
        mean = sum(logprobs) / len(logprobs)
    """

    def token_logprobs(
        self, prefix: str, continuation: str, *, end: bool = False, window: int | None = None
    ) -> list[float]:
        """The log-probability (natural log) of each token of ``continuation``, given ``prefix``
        and the continuation's tokens before it.

        ``end`` also scores the end-of-text token after the continuation (the last item). With
        an empty ``prefix`` the first token has nothing to be predicted from and is not scored.
        Texts longer than ``window`` tokens (default: the model's context window) are scored
        with a sliding window: each token once, with at least half a window of context.
        """
        ...


@runtime_checkable
class ContinuationScorer(Protocol):
    """A backend that scores several texts after several contexts in one batch (optional:
    check with ``isinstance(generator, ContinuationScorer)``). The adherence picker
    (dungeon.picker) asks it how likely each candidate is after the real action line and
    after a contrast one; the local backend reads the prompt's cached keys and values once for
    all of them (dungeon.hf_contrast)::

        scores = generator.score_continuations([context, swapped], [text_a, text_b])
        scores[1][0]   # log-probs of text_a's tokens after ``swapped``
    """

    def score_continuations(
        self,
        contexts: Sequence[str],
        texts: Sequence[str],
        *,
        max_tokens: int | None = None,
    ) -> list[list[list[float]]]:
        """``scores[i][j]``: the log-probability (natural log) of each token of ``texts[j]``
        after ``contexts[i]``, context and text tokenized apart as ``Scorer.token_logprobs``
        does; only the first ``max_tokens`` tokens of each text when given. The backend's
        next generation is unchanged by the call."""
        ...


class StopHoldback:
    """Feeds text pieces through and holds back any tail that might start a stop string.

    ``push`` returns the text that is safe to show now; ``stopped`` turns True once a stop
    string is complete (the text before it has then been released, the stop itself never).
    """

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(s for s in stops if s)
        self.buffer = ""
        self.stopped = False

    def push(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.buffer += piece
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.stopped = True
            out, self.buffer = self.buffer[: min(hits)], ""
            return out
        keep = 0
        for s in self.stops:
            for n in range(min(len(s) - 1, len(self.buffer)), 0, -1):
                if self.buffer.endswith(s[:n]):
                    keep = max(keep, n)
                    break
        cut = len(self.buffer) - keep
        out, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return out

    def flush(self) -> str:
        """The held-back tail at the end of generation (it never became a stop string)."""
        out, self.buffer = ("" if self.stopped else self.buffer), ""
        return out


class PromptHoldback:
    """StopHoldback that also sees the end of the prompt.

    A prompt ends with ``"...action\\n"``; a response that begins with ``">"`` or ``"\\n"``
    completes a stop string across the boundary, which a holdback fed only generated text
    would miss (and show the player marker). The prompt's tail goes in first and is never
    released.
    """

    def __init__(self, stops: Sequence[str], prompt: str):
        self.inner = StopHoldback(stops)
        # The longest end of the prompt that is a proper start of some stop string.
        lead = ""
        for s in self.inner.stops:
            for n in range(min(len(s) - 1, len(prompt)), len(lead), -1):
                if prompt.endswith(s[:n]):
                    lead = s[:n]
                    break
        self.inner.buffer = lead
        self.lead = len(lead)

    @property
    def stopped(self) -> bool:
        return self.inner.stopped

    def _drop_lead(self, out: str) -> str:
        cut = min(self.lead, len(out))
        self.lead -= cut
        return out[cut:]

    def push(self, piece: str) -> str:
        return self._drop_lead(self.inner.push(piece)) if piece else ""

    def flush(self) -> str:
        return self._drop_lead(self.inner.flush())


_FAKE_SENTENCES = (
    "The torchlight flickers across the damp stone walls.",
    "Somewhere far below, water drips into a hidden pool.",
    "A cold wind carries the smell of smoke and old iron.",
    "The old man watches you with narrowed, thoughtful eyes.",
    "Nothing happens for a long moment.",
    "A door creaks open at the end of the corridor.",
    "You hear footsteps, slow and heavy, coming closer.",
    "The floor is scattered with broken pottery and dry leaves.",
    "A raven lands on the windowsill and tilts its head at you.",
    'The guard shrugs. "Not my problem," she says.',
    "Your lantern sputters but stays lit.",
    "The map shows a path you have not noticed before.",
)


FAKE_SEEN_LOGPROB, FAKE_NEW_LOGPROB, FAKE_END_LOGPROB = -1.0, -4.0, -2.0
"""FakeGenerator's scores: a token already in the text, a new one, the end of the text."""


def _words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]|\s+", text)


class FakeGenerator:
    """A deterministic, model-free generator for tests and examples.

    Without a script, each response is two or three sentences chosen by a RNG seeded from the
    seed and the prompt, so the same seed and story give the same text. With ``script``, it
    returns those texts in order (then cycles), which lets tests stage loops, player markers,
    escape sequences and the like. Tokens are words, punctuation marks and runs of spaces.
    """

    def __init__(
        self,
        script: Sequence[str] | None = None,
        *,
        settings: SamplingSettings | None = None,
        context_window: int = 2048,
        name: str = "fake",
    ):
        self.script = list(script) if script else None
        self.calls = 0
        self.prompts: list[str] = []
        self.settings = settings or SamplingSettings()
        self.context_window = context_window
        self.name = name

    def count_tokens(self, text: str) -> int:
        return len(_words(text))

    def _raw(self, prompt: str, seed: int) -> str:
        self.prompts.append(prompt)
        self.calls += 1
        if self.script is not None:
            return self.script[(self.calls - 1) % len(self.script)]
        rng = random.Random(seed * 1_000_003 + zlib.crc32(prompt.encode()))
        return " ".join(rng.sample(_FAKE_SENTENCES, rng.randint(2, 3)))

    def stream(
        self,
        prompt: str,
        *,
        seed: int,
        settings: SamplingSettings | None = None,
        stop: Sequence[str] = STOP_STRINGS,
    ) -> Iterator[str]:
        settings = settings or self.settings
        pieces = _words(self._raw(prompt, seed))[: settings.max_new_tokens]
        hold = StopHoldback(stop)
        for piece in pieces:
            out = hold.push(piece)
            if out:
                yield out
            if hold.stopped:
                return
        tail = hold.flush()
        if tail:
            yield tail

    def generate(
        self,
        prompt: str,
        *,
        seed: int,
        settings: SamplingSettings | None = None,
        stop: Sequence[str] = STOP_STRINGS,
    ) -> str:
        return "".join(self.stream(prompt, seed=seed, settings=settings, stop=stop))

    def score_continuations(
        self,
        contexts: Sequence[str],
        texts: Sequence[str],
        *,
        max_tokens: int | None = None,
    ) -> list[list[list[float]]]:
        """A toy ContinuationScorer: ``token_logprobs`` for every pair (a token of the text
        seen in the context or earlier in the text scores higher than a new one)."""
        return [
            [self.token_logprobs(c, t)[:max_tokens] if t else [] for t in texts] for c in contexts
        ]

    def token_logprobs(
        self, prefix: str, continuation: str, *, end: bool = False, window: int | None = None
    ) -> list[float]:
        """A toy Scorer: a token seen earlier in the text has log-prob -1, a new one -4, the
        end -2. Deterministic, so tests can check the figures made from it."""
        seen = set(_words(prefix))
        tokens = _words(continuation)
        logprobs = []
        for token in tokens:
            logprobs.append(FAKE_SEEN_LOGPROB if token in seen else FAKE_NEW_LOGPROB)
            seen.add(token)
        if end:
            logprobs.append(FAKE_END_LOGPROB)
        return logprobs if prefix else logprobs[1:]
