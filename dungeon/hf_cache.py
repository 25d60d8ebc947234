"""The transformers forward pass behind a small runner interface, with a cache that grows in place.

TransformersGenerator drives a *runner*: an object with a key/value cache that it can crop,
fork into rows (candidates that share a prompt) and narrow to some rows, and a ``forward`` that
runs token ids after what the cache holds. ``HFRunner`` (here) runs any transformers causal LM;
``dungeon.fast_decode.LlamaDecoder`` is the compact CPU path for Llama-family models. Both::

    runner.length               # positions the cache holds (the same for every row)
    runner.rows                 # rows the cache holds
    runner.lengths              # the positions each row holds
    runner.reset()              # forget everything
    runner.crop(n)              # keep the first n positions
    runner.fork(rows)           # one row -> ``rows`` copies of it
    runner.select([0, 2])       # keep these rows, in this order
    runner.forward(ids)         # (rows, tokens) ids -> (rows, vocab) float32 logits, on the CPU
"""

from __future__ import annotations

import inspect
import logging

import torch

from dungeon.cpu_decode import full_precision, has_decode_weights

log = logging.getLogger(__name__)


def _growing_layer_class():
    """A DynamicLayer that appends into a buffer grown by doubling.

    transformers' DynamicLayer concatenates the whole cache with each new token, which
    copies (and on CPU, allocates and faults in) every cached key and value per token: the
    cost of a token then grows with the context. Writing into spare room makes it constant.
    """
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return None

    class GrowingLayer(DynamicLayer):
        def lazy_initialization(self, key_states, value_states) -> None:
            super().lazy_initialization(key_states, value_states)
            self._k = self._v = None
            self._n = 0

        def _grow(self, need: int, like_k, like_v) -> None:
            room = 0 if self._k is None else self._k.shape[-2]
            if need <= room:
                return
            cap = max(need, 2 * room, 256)
            k = like_k.new_empty((*like_k.shape[:-2], cap, like_k.shape[-1]))
            v = like_v.new_empty((*like_v.shape[:-2], cap, like_v.shape[-1]))
            if self._n:
                k[..., : self._n, :].copy_(self._k[..., : self._n, :])
                v[..., : self._n, :].copy_(self._v[..., : self._n, :])
            self._k, self._v = k, v

        def _views(self) -> None:
            self.keys, self.values = self._k[..., : self._n, :], self._v[..., : self._n, :]

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            need = self._n + key_states.shape[-2]
            self._grow(need, key_states, value_states)
            self._k[..., self._n : need, :].copy_(key_states)
            self._v[..., self._n : need, :].copy_(value_states)
            self._n = need
            self._views()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self._n if self.is_initialized else 0

        def crop(self, tokens_to_remove: int) -> None:
            if not self.is_initialized or tokens_to_remove == 0:
                return
            self._n = max(0, self._n - abs(tokens_to_remove))
            self._views()

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.is_initialized and self._k is not None:
                self._k = self._k.repeat_interleave(repeats, dim=0)
                self._v = self._v.repeat_interleave(repeats, dim=0)
                self._views()

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.is_initialized and self._k is not None:
                self._k = self._k.index_select(0, indices.to(self._k.device))
                self._v = self._v.index_select(0, indices.to(self._v.device))
                self._views()

        def reset(self) -> None:
            self.keys = self.values = self._k = self._v = None
            self._n = 0
            self.is_initialized = False

    return GrowingLayer


class HFRunner:
    """Any transformers causal LM (or peft model) with a DynamicCache kept between calls."""

    def __init__(self, model, *, grow_cache: bool = True):
        self.model = model
        self.device = next(model.parameters()).device
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft
        params = inspect.signature(inner.forward).parameters
        # transformers 5 calls the cache argument ``cache``; 4.x called it ``past_key_values``.
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self._keep_arg = next(
            (p for p in ("logits_to_keep", "num_logits_to_keep") if p in params), None
        )
        self._growing = _growing_layer_class() if grow_cache else None
        self._half_decode = has_decode_weights(model)
        self.cache = None
        self.rows = 1

    @property
    def length(self) -> int:
        return self.cache.get_seq_length() if self.cache is not None else 0

    @property
    def lengths(self) -> list[int]:
        """The positions each row holds (all the same here)."""
        return [self.length] * self.rows

    def reset(self) -> None:
        self.cache, self.rows = None, 1

    def _new_cache(self):
        from transformers import DynamicCache

        try:
            cache = DynamicCache(config=self.model.config)
        except TypeError:  # transformers 4.x
            return DynamicCache()
        layers = getattr(cache, "layers", None)
        if (
            self._growing is not None
            and layers
            and all(type(x) is self._growing.__base__ for x in layers)
        ):
            cache.layers = [self._growing() for _ in layers]
        return cache

    def crop(self, length: int) -> None:
        """Keep the first ``length`` positions (raises for caches that cannot crop)."""
        if self.cache is None:
            return
        remove = self.length - length
        if remove > 0:
            self.cache.crop(-remove)  # negative: how many to remove

    def fork(self, rows: int) -> None:
        if self.cache is not None and rows != 1:
            self.cache.batch_repeat_interleave(rows)
        self.rows = rows

    def select(self, rows: list[int]) -> None:
        if self.cache is not None:
            self.cache.batch_select_indices(torch.tensor(rows, dtype=torch.long))
        self.rows = len(rows)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.cache is None:
            self.cache = self._new_cache()
        kwargs = {self._cache_arg: self.cache, "use_cache": True}
        if self._keep_arg:
            kwargs[self._keep_arg] = 1  # only the last position needs the LM head
        input_ids = ids.to(self.device)
        logits = self.model(input_ids=input_ids, **kwargs).logits[:, -1].float().cpu()
        if self._half_decode and not bool(torch.isfinite(logits).all()):
            # A float16 decode product overflowed: take the step back and redo it in float32.
            log.debug("non-finite logits with float16 decode weights; redoing in float32")
            self.cache.crop(-ids.shape[1])
            with full_precision(self.model):
                logits = self.model(input_ids=input_ids, **kwargs).logits[:, -1].float().cpu()
        self.rows = ids.shape[0]
        return logits
