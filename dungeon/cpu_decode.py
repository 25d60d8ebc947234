"""Half-precision copies of a float32 model's weights for one-token decode steps on CPU.

Decoding one token at a time is bound by memory bandwidth: every step reads every weight. On
CPUs without native bf16 (no AVX-512-BF16 or AMX), running the whole model in bf16 or fp16 is
*slower* than fp32, because big prefill matrix products have no fast low-precision kernel.
This module keeps the fp32 weights for prefill and adds an fp16 copy of each linear weight
that only the small decode-step products use: half the bytes to read per token, at the cost
of half the model's size again in memory. The fp16 rounding (about 5e-4 relative) is far
below the model's own quantization noise (the built-in model comes from a 4-bit file).

    from dungeon.cpu_decode import add_decode_weights
    n = add_decode_weights(model)   # swaps nn.Linear / GPT-2 Conv1D layers in place
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

DECODE_ROWS = 4
"""Products with at most this many rows (tokens) use the half-precision copy."""


class DecodeLinear(nn.Module):
    """A linear layer with fp32 weights for prefill and a half-precision copy for decode."""

    def __init__(self, weight: nn.Parameter, bias, *, transposed: bool, dtype: torch.dtype):
        super().__init__()
        self.weight = weight  # the original Parameter (shared with a tied embedding)
        self.bias = bias
        self.transposed = transposed  # GPT-2's Conv1D stores weight as (in, out)
        half = weight.detach().t() if transposed else weight.detach()
        self.register_buffer("half_weight", half.to(dtype).contiguous(), persistent=False)
        self.out_features = self.half_weight.shape[0]

        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.enabled and x.numel() <= DECODE_ROWS * x.shape[-1] and not torch.is_grad_enabled():
            # No overflow check here: it would cost more than the copy saves. A step whose
            # logits come out non-finite is redone under full_precision (see hf_generator).
            y = F.linear(x.to(self.half_weight.dtype), self.half_weight).to(x.dtype)
            return y if self.bias is None else y + self.bias
        weight = self.weight.t() if self.transposed else self.weight
        return F.linear(x, weight, self.bias)


def has_decode_weights(model: nn.Module) -> bool:
    return any(isinstance(m, DecodeLinear) for m in model.modules())


@contextmanager
def full_precision(model: nn.Module) -> Iterator[None]:
    """Within this block, ``model``'s DecodeLinear layers use their float32 weights only."""
    layers = [m for m in model.modules() if isinstance(m, DecodeLinear)]
    for layer in layers:
        layer.enabled = False
    try:
        yield
    finally:
        for layer in layers:
            layer.enabled = True


def add_decode_weights(model: nn.Module, dtype: torch.dtype = torch.float16) -> int:
    """Replace the float32 linear layers of ``model`` with DecodeLinear; returns how many."""
    from transformers.pytorch_utils import Conv1D

    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                transposed = False
            elif isinstance(child, Conv1D):
                transposed = True
            else:
                continue
            if child.weight.dtype != torch.float32:
                continue
            setattr(
                parent,
                name,
                DecodeLinear(child.weight, child.bias, transposed=transposed, dtype=dtype),
            )
            swapped += 1
    return swapped
