"""Raw text completion for the KoboldAI and OpenAI faces: a prompt in, text out, no game.

The front-end owns the prompt (SillyTavern builds its own), so none of the game's turn logic
runs here: the prompt is cut to the context asked for, the model writes, stop strings end the
text (they never appear in it), and the text is sanitised as in the terminal (no escape
sequences or control characters; tabs become spaces).
"""

from __future__ import annotations

import random
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from dungeon.cleanup import sanitize
from dungeon.generator import Generator, SamplingSettings, stream_rows

from .queue import Job

MIN_PROMPT_TOKENS = 16
"""What is always left for the prompt when a front-end asks for a huge max_length."""


@dataclass(frozen=True)
class TextRequest:
    """One completion request, already checked and fitted to the model."""

    prompt: str
    settings: SamplingSettings
    stop: tuple[str, ...]
    seeds: tuple[int, ...]
    """One per output (KoboldAI's and OpenAI's ``n``)."""
    max_context: int
    """Prompt plus new tokens, at most the model's window."""


@dataclass
class Completion:
    text: str
    finish_reason: str
    """"stop" (end of text, a stop string, or aborted) or "length" (max tokens reached)."""
    prompt_tokens: int = 0
    completion_tokens: int = 0


def random_seed() -> int:
    return random.SystemRandom().randrange(2**31)


def seeds_for(seed: int | None, n: int) -> tuple[int, ...]:
    """``n`` seeds from one (the same seed gives the same texts), or fresh random ones."""
    base = random_seed() if seed is None or seed < 0 else seed
    return tuple((base + i) & 0x7FFFFFFF for i in range(n))


def fit_lengths(generator: Generator, max_context: int | None, max_new: int) -> tuple[int, int]:
    """KoboldCpp's rule: a context longer than the model's is reduced to fit, and a max length
    that leaves no room for the prompt is cut. Returns (max_context, max_new)."""
    window = generator.context_window
    ctx = window if not max_context or max_context > window else max_context
    ctx = max(ctx, MIN_PROMPT_TOKENS + 1)
    new = max(1, min(max_new, ctx - MIN_PROMPT_TOKENS, 4096))
    return ctx, new


def fit_prompt(generator: Generator, prompt: str, budget: int) -> str:
    """The end of ``prompt`` that fits in ``budget`` tokens (the start is dropped, as
    KoboldCpp does)."""
    if generator.count_tokens(prompt) <= budget:
        return prompt
    lo, hi = 1, len(prompt)  # find the smallest cut that fits
    while lo < hi:
        mid = (lo + hi) // 2
        if generator.count_tokens(prompt[mid:]) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return prompt[lo:]


def token_ids(generator: Generator, text: str) -> list[int]:
    """The model's token ids for ``text``; a backend without a tokenizer (the fake) gets
    stable stand-in ids, one per counted token."""
    encode = getattr(generator, "encode", None)
    if callable(encode):
        return [int(i) for i in encode(text)]
    words = re.findall(r"\w+|[^\w\s]|\s+", text)  # FakeGenerator's tokens
    return [zlib.crc32(w.encode("utf-8")) % 50257 for w in words]


Emit = Callable[[int, str], None]
_ESCAPE_STARTS = "\x1b\x9b\x9d\x90\x98\x9e\x9f"


class SanitizingStream:
    """``sanitize`` for text that comes in pieces: an escape sequence split across pieces
    (ESC in one, ``[31m`` in the next) is held back until it is complete, then removed whole."""

    HOLD = 256
    """Longest tail held back; past it the text goes out (sanitised as it stands)."""

    def __init__(self) -> None:
        self.buffer = ""

    @staticmethod
    def _complete(tail: str) -> bool:
        # Complete when nothing that could follow would change how the tail is cleaned.
        return all(sanitize(tail + probe) == sanitize(tail) + probe for probe in ("Z", "\n"))

    def push(self, piece: str) -> str:
        self.buffer += piece
        start = max(self.buffer.rfind(ch) for ch in _ESCAPE_STARTS)
        tail = self.buffer[start:] if start >= 0 else ""
        if tail and len(tail) < self.HOLD and not self._complete(tail):
            out, self.buffer = self.buffer[:start], tail
            return sanitize(out)
        out, self.buffer = self.buffer, ""
        return sanitize(out)

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return sanitize(out)


def run_completion(
    generator: Generator, request: TextRequest, job: Job, emit: Emit | None = None
) -> list[Completion]:
    """Write one text per seed (as one batch where the backend can); runs on the model worker.

    ``emit(row, piece)`` gets each sanitised piece as it comes. A cancelled job stops at the
    next piece and returns what was written so far.
    """
    budget = max(1, request.max_context - request.settings.max_new_tokens)
    prompt = fit_prompt(generator, request.prompt, budget)
    texts = [""] * len(request.seeds)
    cleaners = [SanitizingStream() for _ in request.seeds]

    def out(row: int, piece: str) -> None:
        if piece:
            texts[row] += piece
            if row == 0:
                job.partial = texts[0]
            if emit is not None:
                emit(row, piece)

    rows = _rows(generator, prompt, request)
    try:
        for row, piece in rows:
            if job.cancelled:
                break
            out(row, cleaners[row].push(piece))
    finally:
        rows.close()  # stops the model at once when the loop ended early
    for row, cleaner in enumerate(cleaners):
        out(row, cleaner.flush())
    prompt_tokens = generator.count_tokens(prompt)
    done = []
    for text in texts:
        used = generator.count_tokens(text) if text else 0
        cut = used >= request.settings.max_new_tokens and not job.cancelled
        done.append(Completion(text, "length" if cut else "stop", prompt_tokens, used))
    return done


def _rows(generator: Generator, prompt: str, request: TextRequest) -> Iterator[tuple[int, str]]:
    """(row, piece) pairs for the request's seeds (dungeon.generator.stream_rows)."""
    return stream_rows(
        generator, prompt, seeds=request.seeds, settings=request.settings, stop=request.stop
    )
