"""Decoding several DIFFERENT prompts as one batch, for a server with many players.

TransformersGenerator decodes one prompt at a time (its ``stream_batch`` rows share one
prompt). A server has turns from different games waiting at the same time; decoding is bound by
reading the weights, so one step for several rows costs little more than a step for one. This
module runs a Llama-family model (the built-in model) over the weights of a
``dungeon.fast_decode.LlamaDecoder`` with one key/value cache of several rows, each row at its
own position (no padding: row r holds its own tokens in positions 0..length[r]-1, and a step's
attention reads each row's own positions)::

    multi = MultiDecoder.for_generator(generator, max_rows=8, cache_mb=256)
    row, logits, reused = multi.add(prompt_ids)       # prefill one prompt into a free row
    logits = multi.step([token_of_row_0, token_of_row_1, ...])   # one token for every row
    multi.remove(row)                                 # a finished row; its cache is kept

Rows join and leave between steps (continuous batching). A finished row's keys and values go
into a prefix store bounded in megabytes (least recently used out first): the next turn of
the same game starts with the previous prompt and response, so only the new tokens are
prefilled, whichever row it lands in.

A row's text does not depend on who else is in the batch, to the last bit: a step computes
each row exactly as it would alone (``LlamaDecoder.forward_at`` and ``FusedProduct.each_row``
say how: the int4 kernel in chunks it takes whole, the refining output layer row by row, a
LoRA side path as a batch of one-row products, attention per row). What can change a game's text is whether its previous turn was still in
the prefix store: a reused prefix's last prompt tokens run through the step kernels, a fresh
prefill through the dense ones, and the two round differently.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch

from dungeon.fast_decode import LlamaDecoder
from dungeon.hf_generator import common_prefix

log = logging.getLogger(__name__)


@dataclass
class _Prefix:
    ids: list[int]
    kv: torch.Tensor
    """(layers, 2, kv_heads, len(ids), head_dim): the keys and values of ``ids``."""

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()


class PrefixStore:
    """Key/value caches of finished rows, by their token ids, within a bound in bytes (LRU).
    Safe to use from two threads (the prefill thread looks up, the decode thread stores)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.entries: OrderedDict[int, _Prefix] = OrderedDict()
        self._next = 0
        self.bytes = 0
        self._lock = threading.Lock()

    def best(self, ids: list[int]) -> tuple[torch.Tensor | None, int]:
        """The keys and values of the entry sharing the longest prefix with ``ids``, and the
        length shared: (kv, n), or (None, 0)."""
        with self._lock:
            best_key, best_n = None, 0
            for key, entry in self.entries.items():
                n = common_prefix(entry.ids, ids)
                if n > best_n:
                    best_key, best_n = key, n
            if best_key is None:
                return None, 0
            self.entries.move_to_end(best_key)
            return self.entries[best_key].kv, best_n

    def put(self, ids: list[int], kv: torch.Tensor) -> None:
        """Keep ``kv`` for ``ids``; entries it extends (an earlier turn of the same story)
        are dropped, then the least recently used until the store fits its bound."""
        with self._lock:
            for key in [
                k for k, e in self.entries.items() if common_prefix(e.ids, ids) == len(e.ids)
            ]:
                self._drop(key)
            entry = _Prefix(list(ids), kv)
            if entry.nbytes > self.max_bytes:
                return
            self.entries[self._next] = entry
            self._next += 1
            self.bytes += entry.nbytes
            while self.bytes > self.max_bytes:
                self._drop(next(iter(self.entries)))

    def _drop(self, key: int) -> None:
        self.bytes -= self.entries.pop(key).nbytes

    def clear(self) -> None:
        with self._lock:
            self.entries.clear()
            self.bytes = 0


@dataclass
class Staged:
    """A prompt prefilled outside the batch (``MultiDecoder.prefill``), waiting to join it."""

    ids: list[int]
    kv: torch.Tensor
    """(layers, 2, 1, kv_heads, len(ids), head_dim)"""
    logits: torch.Tensor
    """The next-token logits after ``ids`` (float32, vocab)."""
    reused: int
    """Positions copied from the prefix store rather than run through the model."""


def supports(generator) -> bool:
    """Whether ``generator`` (a TransformersGenerator) can be decoded several prompts at once."""
    return isinstance(getattr(generator, "runner", None), LlamaDecoder)


class MultiDecoder:
    """A batched key/value cache of rows at their own positions over a LlamaDecoder's weights."""

    def __init__(self, dec: LlamaDecoder, *, max_rows: int = 8, cache_mb: float = 256):
        if max_rows < 1:
            raise ValueError(f"max_rows must be 1 or more, got {max_rows}")
        self.dec = dec
        self.max_rows = max_rows
        self.dtype = dec.dtype
        self.layers = dec.layers
        self.window = dec.window
        self._cos_sin = (torch.empty(0), torch.empty(0))
        self._tables_lock = threading.Lock()
        self.kv = torch.empty(0)
        """(layers, 2, max_rows, kv_heads, capacity, head_dim)"""
        self.lengths: list[int] = []
        """Positions each row holds (rows 0..len-1 are in use)."""
        self.ids: list[list[int]] = []
        """The token ids each row holds."""
        self.store = PrefixStore(int(cache_mb * 2**20))

    @classmethod
    def for_generator(cls, generator, *, max_rows: int = 8, cache_mb: float = 256) -> MultiDecoder:
        """Over a TransformersGenerator whose runner is a LlamaDecoder (see ``supports``)."""
        if not supports(generator):
            raise ValueError("several prompts in one batch need a Llama-family model on the CPU")
        return cls(generator.runner, max_rows=max_rows, cache_mb=cache_mb)

    @property
    def rows(self) -> int:
        return len(self.lengths)

    def reset(self) -> None:
        """Forget every row (after an error: the cache may be half written)."""
        self.lengths, self.ids = [], []

    # --- memory ---------------------------------------------------------------------------
    def _room(self, need: int) -> None:
        """Room for ``need`` positions in every row, and rotary tables that far."""
        cap = self.kv.shape[4] if self.kv.numel() else 0
        if need > cap:
            new_cap = min(max(need, cap + cap // 2, 256), max(self.window, need))
            d = self.dec
            # Zeros, not empty: a step reads every row up to the longest, and a value that is
            # NaN in memory never written would poison the attention even with weight 0.
            kv = torch.zeros(
                (len(self.layers), 2, self.max_rows, d.kv_heads, new_cap, d.head_dim),
                dtype=self.dtype,
            )
            if cap and self.rows:
                kv[:, :, : self.rows, :, :cap].copy_(self.kv[:, :, : self.rows])
            self.kv = kv
        self._tables(need)

    def _tables(self, need: int) -> None:
        """Rotary tables for ``need`` positions (swapped whole: a reader keeps its copy)."""
        with self._tables_lock:
            cos = self._cos_sin[0]
            if cos.shape[0] < need:
                n = max(need, min(2 * cos.shape[0], self.window), 256)
                self._cos_sin = self.dec.rotary_tables(n)

    @property
    def cache_bytes(self) -> int:
        """Bytes held: the batch's cache and the prefix store."""
        return self.kv.numel() * self.kv.element_size() + self.store.bytes

    # --- rows -----------------------------------------------------------------------------
    def prefill(self, ids: list[int], *, after: Staged | None = None) -> Staged:
        """Run ``ids`` through the model into a cache of its own, after the longest prefix of
        them found in the prefix store or in ``after`` (another prompt just staged, such as
        the real prompt for action guidance's contrast row), copied, not recomputed. Touches
        nothing a step reads, so it may run on another thread while the batch decodes;
        ``attach`` adds the result."""
        if not ids:
            raise ValueError("a row needs at least one token")
        self._tables(len(ids))
        d = self.dec
        kv = torch.zeros(
            (len(self.layers), 2, 1, d.kv_heads, len(ids), d.head_dim), dtype=self.dtype
        )
        found, shared = self.store.best(ids)
        from_after = common_prefix(after.ids, ids) if after is not None else 0
        if from_after > shared:
            found, shared = after.kv[:, :, 0], from_after
        keep = min(shared, len(ids) - 1)  # at least one token runs, for the logits
        if keep:
            kv[:, :, 0, :, :keep].copy_(found[:, :, :, :keep])
        lengths = [keep]
        logits = self._forward(torch.tensor([ids[keep:]]), [0], kv, lengths)
        return Staged(list(ids), kv, logits[0], keep)

    def attach(self, staged: Staged) -> int:
        """Add a prefilled prompt to the batch as a new row; returns the row."""
        if self.rows >= self.max_rows:
            raise RuntimeError("no free row")
        n = len(staged.ids)
        self._room(n)
        row = self.rows
        self.kv[:, :, row, :, :n].copy_(staged.kv[:, :, 0])
        self.lengths.append(n)
        self.ids.append(list(staged.ids))
        return row

    def add(self, ids: list[int]) -> tuple[int, torch.Tensor, int]:
        """``prefill`` then ``attach``: (row, float32 next-token logits, reused positions)."""
        if self.rows >= self.max_rows:
            raise RuntimeError("no free row")
        staged = self.prefill(ids)
        return self.attach(staged), staged.logits, staged.reused

    def fork(self, row: int) -> int:
        """A new row holding a copy of ``row`` (another response to the same prompt)."""
        if self.rows >= self.max_rows:
            raise RuntimeError("no free row")
        new = self.rows
        n = self.lengths[row]
        self.kv[:, :, new, :, :n].copy_(self.kv[:, :, row, :, :n])
        self.lengths.append(n)
        self.ids.append(list(self.ids[row]))
        return new

    def remove(self, row: int, *, keep: bool = True) -> int | None:
        """Free ``row`` (its cache goes to the prefix store when ``keep``). The last row moves
        into its place: returns the old index of the row now at ``row`` (None if none moved)."""
        n = self.lengths[row]
        if keep and n:
            self.store.put(self.ids[row], self.kv[:, :, row, :, :n].clone())
        last = self.rows - 1
        moved = None
        if row != last:
            m = self.lengths[last]
            self.kv[:, :, row, :, :m].copy_(self.kv[:, :, last, :, :m])
            self.lengths[row], self.ids[row] = m, self.ids[last]
            moved = last
        self.lengths.pop()
        self.ids.pop()
        return moved

    def step(self, tokens: list[int]) -> torch.Tensor:
        """One token for every row (in row order); (rows, vocab) float32 logits."""
        if len(tokens) != self.rows:
            raise ValueError(f"{len(tokens)} tokens for {self.rows} rows")
        self._room(max(self.lengths) + 1)
        rows = list(range(self.rows))
        logits = self._forward(torch.tensor(tokens)[:, None], rows, self.kv, self.lengths)
        for ids, token in zip(self.ids, tokens):
            ids.append(token)
        return logits

    # --- the forward pass -----------------------------------------------------------------
    def _forward(
        self, ids: torch.Tensor, rows: list[int], cache: torch.Tensor, lengths: list[int]
    ) -> torch.Tensor:
        """``ids`` (len(rows), t) after what each row of ``cache`` holds (``lengths``); t > 1
        only for one row (prefill). Returns the last position's logits, (len(rows), vocab), and
        grows each row's length by t."""
        starts = [lengths[r] for r in rows]
        logits = self.dec.forward_at(ids, cache, rows, starts, self._cos_sin)
        for r, start in zip(rows, starts):
            lengths[r] = start + ids.shape[1]
        return logits
