"""Weight-only int4 / int8 linear layers for CPU decoding, and the swap that installs them.

Decoding one token reads every weight once, so the bytes per weight set the speed. torch ships
CPU kernels for weight-only products with bf16 activations:

- int4, groups of 32 along the input (``_weight_int4pack_mm_for_cpu``): each weight is
  ``(q - 8) * scale + zero`` with a 4-bit ``q`` and one bf16 (scale, zero) pair per group;
- int8, one scale per output channel (``_weight_int8pack_mm``).

These layers keep the dense weight they replace (the same tensor, no copy) for products over
many rows (prefill), where the dense bf16 GEMM is about 10x faster than the int4 one.

The built-in model comes from a Q4_1 GGUF file, whose blocks are ``d * q + m`` over 32 weights:
``read_q4_1`` reads them as they are, and ``Int4Linear.from_codes`` packs them (scale = d,
zero = m + 8d) without re-quantizing. For other models, ``quantize_int4`` rounds each group of
32 to 16 levels between its min and max.

    from dungeon.quantize import quantize_model
    n = quantize_model(model, "int4")      # nn.Linear and GPT-2 Conv1D layers, in place

torchao wraps the same two kernels (``Int4WeightOnlyConfig`` with its CPU layout); we call them
directly: the layer is 40 lines, it needs no extra dependency, and reading the GGUF's own
blocks needs the packing step anyway.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

GROUP = 32
"""Weights per int4 group (the GGUF Q4_1 block size)."""
QUANT_ROWS = 6
"""Products with at most this many rows use the quantized kernel; more rows use dense weights.
Measured on the AMX Xeon, a (3072, 576) product: int4 is 2.7x faster than dense bf16 for one
row, 1.5x for 4, slower from 8 rows on, and 5x slower for 128 (docs/models.md)."""
MODES = ("auto", "int4", "int8", "none")
Int4Weights = Mapping[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
"""int4 ``(codes, scale, zero)`` by transformers weight name (what ``quantize_model(exact=)``
takes)."""


def _int4_op():
    return getattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu", None)


def _int8_op():
    return getattr(torch.ops.aten, "_weight_int8pack_mm", None)


class QuantLinear(nn.Module):
    """Common part: the dense weight for many-row products, a bias, the output size."""

    def __init__(self, weight: torch.Tensor | None, bias: torch.Tensor | None, transposed: bool):
        super().__init__()
        # The original Parameter (shared with a tied embedding); None when there is no dense copy.
        self.weight = weight
        self.bias = bias
        self.transposed = transposed  # GPT-2's Conv1D stores its weight as (in, out)
        self.always_quantized = False  # see quantized_everywhere

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.t() if self.transposed else self.weight
        return F.linear(x.to(weight.dtype), weight, self.bias).to(x.dtype)

    def quantized(self, x2d: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1]
        many = rows > QUANT_ROWS or torch.is_grad_enabled()
        if many and self.weight is not None and not self.always_quantized:
            return self.dense(x)
        y = self.quantized(x.reshape(rows, x.shape[-1]).to(torch.bfloat16))
        if self.bias is not None:
            y = y + self.bias.to(y.dtype)
        return y.reshape(*x.shape[:-1], y.shape[-1]).to(x.dtype)


class Int4Linear(QuantLinear):
    """int4 weights in groups of 32 along the input, bf16 scale and zero per group."""

    def __init__(self, packed, scale_zeros, *, weight=None, bias=None, transposed=False):
        super().__init__(weight, bias, transposed)
        self.register_buffer("packed", packed, persistent=False)
        self.register_buffer("scale_zeros", scale_zeros, persistent=False)
        self.out_features = scale_zeros.shape[1]
        self.in_features = scale_zeros.shape[0] * GROUP

    @classmethod
    def from_codes(cls, codes, scale, zero, **kwargs) -> Int4Linear:
        """``codes`` (N, K) in 0..15 and ``scale``, ``zero`` (N, K/32): w = (q - 8) * scale + zero."""
        # In chunks of rows (the packed rows are independent): int32 codes of a whole
        # output layer at once would be 113 MB.
        packed = torch.cat(
            [
                torch.ops.aten._convert_weight_to_int4pack_for_cpu(part.to(torch.int32), 1)
                for part in codes.split(4096)
            ]
        )
        scale_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).to(torch.bfloat16)
        return cls(packed, scale_zeros.contiguous(), **kwargs)

    @classmethod
    def from_dense(cls, w: torch.Tensor, **kwargs) -> Int4Linear:
        """Quantize an (out, in) float weight (round to nearest, per-group min and max)."""
        codes, scale, zero = quantize_int4(w)
        return cls.from_codes(codes, scale, zero, **kwargs)

    def quantized(self, x2d: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x2d, self.packed, GROUP, self.scale_zeros)

    def codes(self) -> torch.Tensor:
        """The 4-bit codes (out, in), read back through the kernel (for tests and checks)."""
        k = self.in_features
        unit = torch.zeros_like(self.scale_zeros)
        unit[..., 0], unit[..., 1] = 1.0, 8.0  # (q - 8) * 1 + 8 = q
        eye = torch.eye(k, dtype=torch.bfloat16)
        out = torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.packed, GROUP, unit)
        return out.t().round().to(torch.uint8)

    def dequantized(self) -> torch.Tensor:
        """The (out, in) float32 weight the kernel computes with."""
        sz = self.scale_zeros.float().transpose(0, 1)  # (N, K/32, 2)
        q = self.codes().float().view(self.out_features, -1, GROUP)
        w = (q - 8) * sz[..., :1] + sz[..., 1:]
        return w.view(self.out_features, self.in_features)


class RefinedInt4Linear(Int4Linear):
    """An int4 output layer whose most likely entries are recomputed from the dense weight.

    A vocabulary-sized product is a fifth of the built-in model's weights. Round-to-nearest int4
    of it costs 6% of held-out perplexity, int8 costs 0.1% but its kernel is slower than int4
    here; this layer takes the int4 logits, picks the ``refine`` largest per row, and computes
    those exactly from the dense rows (top-k sampling then sees exact logits). The dense weight
    is the model's own (tied to the embedding: no copy).
    """

    refine = 256

    def quantized(self, x2d: torch.Tensor, *, each_row: bool = False) -> torch.Tensor:
        """The int4 logits of ``x2d`` with the ``refine`` largest of each row made exact.

        ``each_row`` takes each row's top-k on its own, so that a row's result does not depend
        on the other rows (one top-k over several rows of bfloat16 logits can break ties
        differently from the row alone): for rows that are different games (multi_decode).
        """
        y = super().quantized(x2d)
        weight = self.weight.t() if self.transposed else self.weight
        k = min(self.refine, y.shape[1])
        for start in range(0, y.shape[0], 64):  # bounded memory when scoring long texts
            rows = slice(start, start + 64)
            if each_row:
                idx = torch.cat([torch.topk(row, k, dim=1).indices for row in y[rows].split(1)])
            else:
                idx = torch.topk(y[rows], k, dim=1).indices
            picked = weight[idx]  # (rows, refine, in)
            exact = torch.bmm(picked, x2d[rows].to(picked.dtype).unsqueeze(-1)).squeeze(-1)
            y[rows] = y[rows].scatter(1, idx, exact.to(y.dtype))
        return y


class Int8Linear(QuantLinear):
    """int8 weights with one bf16 scale per output channel (symmetric)."""

    def __init__(self, qweight, scales, *, weight=None, bias=None, transposed=False):
        super().__init__(weight, bias, transposed)
        self.register_buffer("qweight", qweight, persistent=False)
        self.register_buffer("scales", scales, persistent=False)
        self.out_features, self.in_features = qweight.shape

    @classmethod
    def from_dense(cls, w: torch.Tensor, **kwargs) -> Int8Linear:
        """Quantize an (out, in) float weight, one symmetric scale per output channel."""
        w = w.detach().float().contiguous()
        scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-10)
        q = torch.round(w / scales[:, None]).clamp(-127, 127).to(torch.int8)
        return cls(q, scales.to(torch.bfloat16), **kwargs)

    def quantized(self, x2d: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int8pack_mm(x2d, self.qweight, self.scales)

    def dequantized(self) -> torch.Tensor:
        return self.qweight.float() * self.scales.float()[:, None]


def quantize_int4(weight: torch.Tensor, group: int = GROUP, rows: int = 2048):
    """Round-to-nearest int4 of an (out, in) weight: ``(codes, scale, zero)``, (N, K/group) each.

    Works through ``rows`` rows at a time (every row is rounded on its own, so the result is
    the same): the float32 temporaries of a 49,152-row output layer at once were 450 MB, the
    load's peak memory.
    """
    n, k = weight.shape
    codes = torch.empty(n, k, dtype=torch.uint8)
    scale = torch.empty(n, k // group)
    zero = torch.empty(n, k // group)
    for start in range(0, n, rows):
        part = slice(start, start + rows)
        g = weight[part].detach().float().reshape(-1, k // group, group)
        lo, hi = g.amin(dim=-1), g.amax(dim=-1)
        step = ((hi - lo) / 15).clamp(min=1e-10)
        q = torch.round((g - lo[..., None]) / step[..., None]).clamp(0, 15)
        codes[part] = q.view(-1, k).to(torch.uint8)
        scale[part], zero[part] = step, lo + 8 * step
    return codes, scale, zero


# ---------------------------------------------------------------------------------------------
# Which kernel this machine runs fast


_SPEED: dict[str, str] = {}


def kernel_available(mode: str) -> bool:
    """Whether torch has the CPU kernel for ``mode`` and it runs (a shape it accepts)."""
    try:
        x = torch.zeros(1, 64, dtype=torch.bfloat16)
        if mode == "int4":
            Int4Linear.from_dense(torch.randn(32, 64)).quantized(x)
        elif mode == "int8":
            Int8Linear.from_dense(torch.randn(32, 64)).quantized(x)
        else:
            return mode == "none"
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return True


def _time(fn: Callable[[], object], repeat: int = 20) -> float:
    """The best of 5 rounds (other processes on the machine only ever make a round slower)."""
    fn()
    best = float("inf")
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, time.perf_counter() - t)
    return best


def fastest_mode() -> str:
    """``int4``, ``int8`` or ``none``: what beats the dense one-row product here (timed once,
    about 0.1 s), in that order of preference.

    One (1536, 576) product, the shape of the built-in model's MLP, against the dense weight in
    the dtype the model would run in. A kernel counts as faster only with a 1.3x margin.
    """
    if "mode" in _SPEED:
        return _SPEED["mode"]
    from dungeon.models import cpu_has_fast_bf16

    dense_dtype = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    torch.manual_seed(0)
    w = torch.randn(1536, 576)
    x = torch.randn(1, 576)
    wd, xd = w.to(dense_dtype), x.to(dense_dtype)
    times = {"none": _time(lambda: F.linear(xd, wd))}
    xb = x.to(torch.bfloat16)
    for mode, cls in (("int4", Int4Linear), ("int8", Int8Linear)):
        if kernel_available(mode):
            layer = cls.from_dense(w)
            times[mode] = _time(lambda layer=layer: layer.quantized(xb))
    # int4 where it beats the dense product, else int8 where that does: int4 reads half int8's
    # bytes (on this shape the two kernels time alike, on the 49,152-row output layer int4 is
    # 1.4x faster), and for the built-in model it is exact.
    fast = [m for m in ("int4", "int8") if m in times and times[m] * 1.3 < times["none"]]
    best = fast[0] if fast else "none"
    log.info("one-row product times %s: %s picked", times, best)
    _SPEED["mode"] = best
    return best


# ---------------------------------------------------------------------------------------------
# Swapping the layers of a model


def linear_layers(model: nn.Module):
    """``(parent, name, child, transposed)`` for every nn.Linear and GPT-2 Conv1D in ``model``."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover - transformers is a dependency
        Conv1D = ()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                yield parent, name, child, False
            elif Conv1D and isinstance(child, Conv1D):
                yield parent, name, child, True


def quantize_model(
    model: nn.Module,
    mode: str,
    *,
    exact: Int4Weights | None = None,
    keep_dense: bool = True,
    head: str | None = None,
) -> int:
    """Swap the linear layers of ``model`` for Int4Linear / Int8Linear; returns how many.

    ``exact`` maps a module's weight name (``model.layers.0.mlp.up_proj.weight``) to int4
    ``(codes, scale, zero)`` taken from a 4-bit file, used instead of re-quantizing (read one
    layer at a time). Layers
    whose input size is not a multiple of 32 (int4) stay dense. ``keep_dense`` keeps the
    dense weight for prefill. ``head`` quantizes the output layer (``lm_head``) differently:
    ``int8``, ``int4``, ``int4+refine`` (RefinedInt4Linear) or ``none``. peft's LoRA layers keep working: their ``base_layer`` is
    swapped and the adapter's own small products stay dense (a side path).
    """
    if mode not in ("int4", "int8"):
        raise ValueError(f"quantize_model takes int4 or int8, got {mode!r}")
    exact = exact or {}
    names = {id(m): n for n, m in model.named_modules()}
    swapped = 0
    for parent, name, child, transposed in linear_layers(model):
        weight = child.weight.detach()
        w = weight.t() if transposed else weight  # (out, in)
        out_f, in_f = w.shape
        prefix = names.get(id(child), name)
        if ".lora_" in f".{prefix}":
            continue  # a LoRA adapter's own small products stay dense (the side path)
        # peft names a wrapped layer base_model.model.<name>.base_layer
        key = prefix.removeprefix("base_model.model.").replace(".base_layer", "") + ".weight"
        layer_mode = mode
        if head is not None and key.split(".")[-2] == "lm_head":
            layer_mode = head
            if head == "none":
                continue
        kwargs = {
            "weight": child.weight if keep_dense else None,
            "bias": child.bias,
            "transposed": transposed,
        }
        if layer_mode == "int4+refine" and in_f % GROUP == 0 and out_f % 16 == 0:
            if child.weight is None:
                raise ValueError("int4+refine needs the dense weight")
            layer: nn.Module = RefinedInt4Linear.from_dense(w, **{**kwargs, "weight": child.weight})
        elif layer_mode == "int4" and key in exact:
            codes, scale, zero = exact[key]
            layer = Int4Linear.from_codes(codes, scale, zero, **kwargs)
        elif layer_mode == "int4" and in_f % GROUP == 0 and out_f % 16 == 0:
            layer = Int4Linear.from_dense(w, **kwargs)
        else:
            layer = Int8Linear.from_dense(w, **kwargs)
        setattr(parent, name, layer)
        swapped += 1
    return swapped


@contextmanager
def quantized_everywhere(model: nn.Module) -> Iterator[None]:
    """Within this block, ``model``'s quantized layers use their kernel for any number of rows
    (to measure the quantized weights' perplexity; slower than the dense prefill)."""
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    for layer in layers:
        layer.always_quantized = True
    try:
        yield
    finally:
        for layer in layers:
            layer.always_quantized = False


# ---------------------------------------------------------------------------------------------
# The built-in model's own 4-bit blocks

_GGUF_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def read_q4_1(blocks) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Q4_1 bytes (rows, 20 * K/32) as ``(codes (N, K) uint8, d (N, K/32), m (N, K/32))``.

    A block is d (fp16), m (fp16), then 16 bytes: the low nibbles are the block's first 16
    weights, the high nibbles the last 16; a weight is ``d * q + m``.
    """
    raw = torch.from_numpy(blocks.copy()).view(blocks.shape[0], -1, 20)
    d = raw[..., 0:2].contiguous().view(torch.float16).squeeze(-1).float()
    m = raw[..., 2:4].contiguous().view(torch.float16).squeeze(-1).float()
    qs = raw[..., 4:]
    codes = torch.cat([qs & 0x0F, qs >> 4], dim=-1)  # (N, K/32, 32)
    return codes.reshape(raw.shape[0], -1), d, m


def _unpermute_rows(n_rows: int, n_head: int) -> torch.Tensor:
    """Row order that undoes llama.cpp's rotary permutation of q/k weights (as transformers)."""
    dim = n_rows // n_head // 2
    return torch.arange(n_rows).view(n_head, dim, 2).transpose(1, 2).reshape(-1)


class _LazyWeights(Mapping):
    """A read-only mapping whose values are read when asked for, one at a time, so that the
    codes of a whole model are never all in memory next to the model."""

    def __init__(self, loaders: dict[str, Callable[[], tuple[torch.Tensor, ...]]], source):
        self._loaders = loaders
        self.source = source  # keeps the file reader open while the mapping lives

    def __getitem__(self, name: str):
        return self._loaders[name]()

    def __iter__(self):
        return iter(self._loaders)

    def __len__(self) -> int:
        return len(self._loaders)


def gguf_int4_weights(path: Path, config) -> Int4Weights:
    """The Q4_1 linear weights of a Llama GGUF file, by transformers weight name, as int4
    ``(codes, scale, zero)`` for Int4Linear (scale = d, zero = m + 8d: exactly ``d * q + m``).
    Each tensor is read from the file when asked for."""
    from gguf import GGMLQuantizationType, GGUFReader

    reader = GGUFReader(str(path))
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads

    def loader(tensor, kind: str):
        def load():
            codes, d, m = read_q4_1(tensor.data)
            if kind in ("attn_q", "attn_k"):
                order = _unpermute_rows(codes.shape[0], heads if kind == "attn_q" else kv_heads)
                codes, d, m = codes[order], d[order], m[order]
            return codes, d, m + 8 * d

        return load

    loaders = {}
    for tensor in reader.tensors:
        parts = tensor.name.split(".")  # blk.3.ffn_up.weight
        if len(parts) != 4 or parts[0] != "blk" or parts[2] not in _GGUF_NAMES:
            continue
        if tensor.tensor_type != GGMLQuantizationType.Q4_1:
            continue
        name = f"model.layers.{parts[1]}.{_GGUF_NAMES[parts[2]]}.weight"
        loaders[name] = loader(tensor, parts[2])
    return _LazyWeights(loaders, reader)


INT4_FILE_VERSION = 1


def save_int4_weights(weights: Int4Weights, path: Path) -> None:
    """Write int4 weights to a safetensors file that ``read_int4_weights`` reads back exactly:
    the codes two to a byte (the first of each pair in the low nibble), scale and zero in
    float32. Reading it costs neither the ``gguf`` reader (160 MB and 3 s for the built-in
    model's file, mostly its vocabulary) nor the unpacking of Q4_1 blocks."""
    from safetensors.torch import save_file

    tensors = {}
    for name, (codes, scale, zero) in weights.items():
        tensors[f"{name}.codes"] = codes[:, 0::2] | (codes[:, 1::2] << 4)
        tensors[f"{name}.scale"] = scale.float().contiguous()
        tensors[f"{name}.zero"] = zero.float().contiguous()
    save_file(tensors, str(path), metadata={"dungeon-int4": str(INT4_FILE_VERSION)})


def read_int4_weights(path: Path) -> Int4Weights | None:
    """The weights ``save_int4_weights`` wrote, each read when asked for; None for a file of
    another version (the caller then reads the weights from where they came from)."""
    from safetensors import safe_open

    try:  # pread: a memory map would keep every page read resident while the reader lives
        reader = safe_open(str(path), framework="pt", device="cpu", backend="pread")
    except TypeError:  # safetensors before its pread backend
        reader = safe_open(str(path), framework="pt", device="cpu")
    if (reader.metadata() or {}).get("dungeon-int4") != str(INT4_FILE_VERSION):
        return None

    def loader(name: str):
        def load():
            nibbles = reader.get_tensor(f"{name}.codes")
            codes = torch.stack([nibbles & 0x0F, nibbles >> 4], dim=-1).view(nibbles.shape[0], -1)
            return codes, reader.get_tensor(f"{name}.scale"), reader.get_tensor(f"{name}.zero")

        return load

    names = [k.removesuffix(".codes") for k in reader.keys() if k.endswith(".codes")]  # noqa: SIM118
    return _LazyWeights({name: loader(name) for name in sorted(names)}, reader)


# ---------------------------------------------------------------------------------------------
# What load_generator calls

HEAD_MODE = "int4+refine"
"""How the output layer is quantized when the rest is int4 (see RefinedInt4Linear and
docs/models.md: the built-in model's embedding, which is also its output layer, is 8-bit in the
GGUF file, and plain int4 of it costs 6% of perplexity)."""


def choose_mode(requested: str, device: str, *, from_4bit_file: bool) -> str:
    """The quantization that will run: ``int4``, ``int8`` or ``none``.

    ``auto`` quantizes only models that come from a 4-bit file (the built-in model), only on
    the CPU, and only with a kernel that is faster here than the dense product (timed once).
    An explicit ``int4`` or ``int8`` falls back to the other, then to ``none``, where the
    kernel is missing. Off the CPU, weights stay as they are: GPUs have their own fast paths.
    """
    if requested not in MODES:
        raise ValueError(f"unknown quantize {requested!r}; use {', '.join(MODES)}")
    if requested == "none":
        return "none"
    if device.split(":")[0] != "cpu":
        if requested != "auto":
            log.warning("quantize=%s is for the CPU; %s keeps its dense weights", requested, device)
        return "none"
    if requested == "auto":
        return fastest_mode() if from_4bit_file else "none"
    for mode in (requested, "int8"):
        if kernel_available(mode):
            if mode != requested:
                log.warning("no %s kernel in this torch build; using %s", requested, mode)
            return mode
    log.warning("no weight-only kernel in this torch build; keeping dense weights")
    return "none"


def quantize_loaded(
    model: nn.Module, mode: str, *, gguf: Path | None = None, int4_file: Path | None = None
) -> str:
    """Quantize a loaded model in place for ``mode``; returns a label for people, such as
    ``int4`` or ``int4, lm_head int4+refine``. int4 takes the model's own 4-bit weights from
    ``int4_file`` (``save_int4_weights``) when it is there and readable, else from ``gguf``'s
    blocks, when given."""
    exact = None
    if mode == "int4" and int4_file is not None and int4_file.is_file():
        try:
            exact = read_int4_weights(int4_file)
        except Exception as err:  # a damaged file: the GGUF has the same weights
            log.warning("cannot read %s (%s); reading the GGUF file instead", int4_file, err)
    if mode == "int4" and exact is None and gguf is not None:
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        exact = gguf_int4_weights(gguf, inner.config)
    head = HEAD_MODE if mode == "int4" else None
    quantize_model(model, mode, exact=exact, head=head)
    return mode if head in (None, mode) else f"{mode}, lm_head {head}"
