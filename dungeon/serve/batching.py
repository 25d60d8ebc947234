"""BatchingGenerator: turns from different games, waiting at the same time, decoded together.

The model queue runs up to ``max_rows`` jobs at once, each on its own thread, and each calls
``stream`` as if it had the model to itself. Here those calls meet: one decode thread keeps a
``dungeon.multi_decode.MultiDecoder`` of rows (one per response being written), and at every
step it

1. takes in the requests a second thread has prefilled meanwhile (the new row's prompt, after
   whatever of it the prefix store still holds from the game's previous turn: a prefill runs
   on the other core while the batch decodes, instead of stopping every row),
2. samples one token for every row, each with its own RNG seeded from its request's seed (the
   same penalties, bans and filters as TransformersGenerator, so a game's text does not depend
   on who else is in the batch), and hands each row's safe text to its caller,
3. runs one forward step for all rows still writing.

With action guidance (``stream_guided``, ``SamplingSettings.guidance``), each response has a
second row on the contrast prompt (its prefill copies the shared start from the real prompt's)
that takes the response's tokens; the response picks from its logits guided by that row's, as
TransformersGenerator does.

Rows join and leave between steps. A caller that stops reading (a client that went away) has
its rows dropped at the next step. Anything else the Game asks of a generator (counting tokens,
the settings, the name) is passed to the TransformersGenerator underneath, under a lock: a
tokenizer is not made to be shared by threads.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from dungeon.format import STOP_STRINGS
from dungeon.generator import SamplingSettings

log = logging.getLogger(__name__)

_END = object()


@dataclass(eq=False)
class _Request:
    prompt: str
    seeds: list[int]
    settings: SamplingSettings
    stop: tuple[str, ...]
    contrast: str | None = None
    """The prompt with a neutral action, for action guidance (a second row per seed)."""
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)
    """(row, piece) pairs, then an exception or _END."""
    cancelled: bool = False
    failed: bool = False
    open_rows: int = 0

    @property
    def rows(self) -> int:
        """Rows of the batch the request takes: one per seed, two with guidance."""
        return len(self.seeds) * (2 if self.contrast is not None else 1)


@dataclass(eq=False)
class _Live:
    """One row being written: its request, its sampling state and its step count."""

    request: _Request
    index: int
    """The row's number within its request (0 for ``stream``)."""
    state: object
    """hf_generator._Row: RNG, recent tokens, detokenizer, stop holdback."""
    logits: object = None
    step: int = 0
    guide: _Live | None = None
    """The row on the contrast prompt that follows this one (action guidance)."""
    follows: bool = False
    """This row is such a contrast row: it takes the tokens of the row it guides."""


class BatchingGenerator:
    """A Generator, safe to call from many threads, whose concurrent calls share a batch."""

    def __init__(self, generator, *, max_rows: int = 8, cache_mb: float = 256):
        from dungeon.multi_decode import MultiDecoder

        self.inner = generator
        self.concurrent = True
        """Safe to call from several threads at once: that is what it is for."""
        self.name = generator.name
        self.context_window = generator.context_window
        self.max_rows = max_rows
        self.multi = MultiDecoder.for_generator(generator, max_rows=max_rows, cache_mb=cache_mb)
        self.lock = threading.Lock()
        """Guards the tokenizer (shared by the callers' threads and the decode thread)."""
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        """Requests waiting for the prefill thread."""
        self._ready: list[tuple[_Request, object]] = []
        """Prefilled requests, with their prompt's multi_decode.Staged and the contrast prompt's (or
None), waiting to join the batch."""
        self._reserved = 0
        """Rows promised: in the batch, ready, or being prefilled (at most max_rows)."""
        self._closed = False
        # Counters (stats()): steps and rows summed over them (the mean batch), prompt tokens
        # admitted and of them found in the prefix store, and where the time went.
        self.steps = 0
        self.rows_stepped = 0
        self.prompt_tokens = 0
        self.reused_tokens = 0
        self.prefill_s = self.step_s = self.sample_s = 0.0
        self._threads = [
            threading.Thread(target=self._decode_loop, name="dungeon-decode", daemon=True),
            threading.Thread(target=self._prefill_loop, name="dungeon-prefill", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    @property
    def settings(self) -> SamplingSettings:
        return self.inner.settings

    @settings.setter
    def settings(self, value: SamplingSettings) -> None:
        self.inner.settings = value

    # --- what the Game asks besides text ----------------------------------------------------
    def count_tokens(self, text: str) -> int:
        with self.lock:
            return self.inner.count_tokens(text)

    def encode(self, text: str) -> list[int]:
        with self.lock:
            return self.inner.encode(text)

    def stats(self) -> dict:
        """Counters since start: steps, mean rows a step, prompt tokens found in the cache, and
        where the decode thread's time went (for /health and benchmarks)."""
        return {
            "steps": self.steps,
            "mean_rows": round(self.rows_stepped / self.steps, 2) if self.steps else 0.0,
            "prompt_tokens": self.prompt_tokens,
            "reused_tokens": self.reused_tokens,
            "prefill_s": round(self.prefill_s, 2),
            "step_s": round(self.step_s, 2),
            "sample_s": round(self.sample_s, 2),
            "kv_cache_mb": round(self.multi.cache_bytes / 2**20, 1),
        }

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(5)

    # --- text -----------------------------------------------------------------------------
    def stream_batch(
        self,
        prompt: str,
        *,
        seeds: Sequence[int],
        settings: SamplingSettings | None = None,
        stop: Sequence[str] = STOP_STRINGS,
    ) -> Iterator[tuple[int, str]]:
        """(row, piece) pairs, one row per seed, as TransformersGenerator.stream_batch (more
        seeds than the batch has rows are written a batch-full at a time)."""
        yield from self._groups(prompt, None, list(seeds), settings or self.inner.settings, stop)

    def stream_guided(
        self,
        prompt: str,
        contrast: str,
        *,
        seeds: Sequence[int],
        settings: SamplingSettings | None = None,
        stop: Sequence[str] = STOP_STRINGS,
    ) -> Iterator[tuple[int, str]]:
        """``stream_batch`` with action guidance (dungeon.generator.GuidedGenerator): each
        seed's response has a second row on ``contrast``."""
        settings = settings or self.inner.settings
        guided = contrast if settings.guidance > 0 else None
        yield from self._groups(prompt, guided, list(seeds), settings, stop)

    def _groups(
        self,
        prompt: str,
        contrast: str | None,
        seeds: list[int],
        settings: SamplingSettings,
        stop: Sequence[str],
    ) -> Iterator[tuple[int, str]]:
        """A batch-full of seeds at a time (half as many with guidance: two rows each)."""
        size = self.max_rows if contrast is None else max(1, self.max_rows // 2)
        stops = tuple(s for s in stop if s)
        for start in range(0, len(seeds), size):
            request = _Request(prompt, seeds[start : start + size], settings, stops, contrast)
            for row, piece in self._run(request):
                yield start + row, piece

    def _run(self, request: _Request) -> Iterator[tuple[int, str]]:
        with self._cond:
            if self._closed:
                raise RuntimeError("the model is shutting down")
            self._pending.append(request)
            self._cond.notify_all()
        try:
            while (item := request.out.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            request.cancelled = True  # the decode thread drops its rows at the next step

    def stream(
        self,
        prompt: str,
        *,
        seed: int,
        settings: SamplingSettings | None = None,
        stop: Sequence[str] = STOP_STRINGS,
    ) -> Iterator[str]:
        for _, piece in self.stream_batch(prompt, seeds=[seed], settings=settings, stop=stop):
            yield piece

    def generate(
        self,
        prompt: str,
        *,
        seed: int,
        settings: SamplingSettings | None = None,
        stop: Sequence[str] = STOP_STRINGS,
    ) -> str:
        return "".join(self.stream(prompt, seed=seed, settings=settings, stop=stop))

    # --- the prefill thread ---------------------------------------------------------------
    def _prefill_loop(self) -> None:
        import torch

        while True:
            with self._cond:
                while not self._closed and not (
                    self._pending and self._pending[0].rows <= self.max_rows - self._reserved
                ):
                    self._cond.wait()
                if self._closed:
                    return
                request = self._pending.pop(0)
                self._reserved += request.rows
            staged = None
            try:
                if not request.cancelled:
                    with self.lock:
                        ids = self.inner._prompt_ids(request.prompt, request.settings)
                        other = None
                        if request.contrast is not None:
                            other = self.inner._prompt_ids(request.contrast, request.settings)
                    started = time.perf_counter()
                    with torch.inference_mode():
                        real = self.multi.prefill(ids)
                        neutral = None if other is None else self.multi.prefill(other, after=real)
                    staged = (real, neutral)
                    self.prefill_s += time.perf_counter() - started
                    self.prompt_tokens += len(ids)
                    self.reused_tokens += real.reused
            except Exception as err:  # delivered to the caller; the thread keeps serving
                log.exception("prefill failed")
                request.failed = True
                request.out.put(err)
            with self._cond:
                if staged is None:
                    self._reserved -= request.rows
                    if not request.failed:
                        request.out.put(_END)  # cancelled before it started
                else:
                    self._ready.append((request, staged))
                self._cond.notify_all()

    # --- the decode thread ----------------------------------------------------------------
    def _decode_loop(self) -> None:
        import torch

        live: list[_Live] = []  # live[i] is the multi decoder's row i
        while True:
            with self._cond:
                while not self._ready and not live and not self._closed:
                    self._cond.wait()
                if self._closed:
                    shutting = RuntimeError("the model is shutting down")
                    for item in live:
                        self._finish(item, shutting)
                    for request in self._pending + [r for r, _ in self._ready]:
                        request.out.put(shutting)
                    self._pending.clear()
                    self._ready.clear()
                    return
                joining, self._ready = self._ready, []
            before = len(live) + sum(r.rows for r, _ in joining)
            try:
                with torch.inference_mode():
                    for request, staged in joining:
                        live.extend(self._admit(request, staged))
                    joining = []
                    live = self._sample_and_step(live)
            except Exception as err:  # delivered to the callers; the thread keeps serving
                log.exception("batched decode failed")
                for item in live:
                    self._finish(item, err)
                for request, _ in joining:
                    if not request.failed:
                        request.failed = True
                        request.out.put(err)
                live = []
                self.multi.reset()
            with self._cond:  # rows that left are free for the prefill thread
                self._reserved -= before - len(live)
                self._cond.notify_all()

    def _admit(self, request: _Request, staged) -> list[_Live]:
        """A prefilled request joins the batch: one row per seed (the prompt ran once), and
        with guidance one more per seed on the contrast prompt, after them."""
        from dungeon.hf_generator import _Row

        if request.cancelled:
            request.out.put(_END)
            return []
        staged, contrast = staged  # the prompt's, and the contrast prompt's (or None)
        for prompt in (staged, contrast) if contrast is not None else (staged,):
            row = self.multi.attach(prompt)
            for _ in request.seeds[1:]:
                self.multi.fork(row)
        ids, stops = staged.ids, request.stop
        longest = max((len(s) for s in stops), default=1)
        request.open_rows = len(request.seeds)
        tokenizer = self.inner.tokenizer
        with self.lock:  # a _Row decodes the end of the prompt
            states = [
                _Row(tokenizer, ids, request.prompt, seed, request.settings, stops, longest)
                for seed in request.seeds
            ]
        rows = [_Live(request, i, state, staged.logits.clone()) for i, state in enumerate(states)]
        if contrast is None:
            return rows
        guides = [_Live(request, i, None, contrast.logits, follows=True) for i in range(len(rows))]
        for item, guide in zip(rows, guides):
            item.guide = guide
        return rows + guides

    @staticmethod
    def _finish(item: _Live, err: BaseException | None = None) -> None:
        """One row of a request is over; the request ends with its last row (or an error)."""
        request = item.request
        if request.failed:
            return
        if err is not None:
            request.failed = True
            request.out.put(err)
            return
        request.open_rows -= 1
        if request.open_rows == 0:
            request.out.put(_END)

    def _sample_and_step(self, live: list[_Live]) -> list[_Live]:
        """Pick a token for every row, hand out the text, run one step for the rows still
        writing; returns them (in the decoder's row order)."""
        from dungeon.sampling import guide, pick_token

        gen = self.inner
        started = time.perf_counter()
        tokens: dict[int, int] = {}
        at = {id(item): row for row, item in enumerate(live)}
        for row, item in enumerate(live):
            request, state, settings = item.request, item.state, item.request.settings
            if request.cancelled or item.follows:
                continue
            if item.step < settings.min_new_tokens:
                banned = gen._early_bans(state.tail, request.stop)
                if settings.ban_marker:
                    banned = torch_cat(banned, gen.marker_ids)
            else:
                banned = gen.marker_ids if settings.ban_marker else None
            scores = item.logits
            if item.guide is not None:
                scores = guide(scores, item.guide.logits, settings.guidance, banned=banned)
            token = pick_token(scores, settings, state.rng, recent=state.recent, banned=banned)
            if token in gen._stop_set:
                self._out(item, state.finish())
                continue
            piece = self._detok(state, token)
            self._out(item, piece)
            item.step += 1
            if state.hold.stopped or item.step == settings.max_new_tokens:
                self._out(item, state.finish())
                continue
            tokens[row] = token
            if item.guide is not None:
                tokens[at[id(item.guide)]] = token
        # Rows that are done leave (the last row moves into a freed place each time).
        for row in range(len(live) - 1, -1, -1):
            if row in tokens:
                continue
            item = live[row]
            keep = not item.request.cancelled and not item.follows
            moved = self.multi.remove(row, keep=keep)
            if moved is not None:
                live[row] = live[moved]
                tokens_moved = tokens.pop(moved, None)
                if tokens_moved is not None:
                    tokens[row] = tokens_moved
            live.pop()
            if not item.follows:
                self._finish(item)
        stepped = time.perf_counter()
        self.sample_s += stepped - started
        if not live:
            return live
        logits = self.multi.step([tokens[row] for row in range(len(live))])
        self.step_s += time.perf_counter() - stepped
        self.steps += 1
        self.rows_stepped += len(live)
        for row, item in enumerate(live):
            item.logits = logits[row]
        return live

    def _detok(self, state, token: int) -> str:
        with self.lock:  # decoding reads the tokenizer too
            return state.push(token)

    @staticmethod
    def _out(item: _Live, piece: str) -> None:
        if piece and not item.request.cancelled:
            item.request.out.put((item.index, piece))


def torch_cat(a, b):
    import torch

    return torch.cat([a, b])


def make_batching(generator, *, max_rows: int, cache_mb: float):
    """A BatchingGenerator over ``generator`` when it can decode several prompts at once
    (a Llama-family transformers model on the CPU), else None (one turn at a time)."""
    # Without a runner (the fake, a remote model) there is nothing to batch: torch stays out.
    if max_rows < 2 or getattr(generator, "runner", None) is None:
        return None
    from dungeon.multi_decode import supports

    if not supports(generator):
        return None
    return BatchingGenerator(generator, max_rows=max_rows, cache_mb=cache_mb)
