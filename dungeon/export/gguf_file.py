"""``dungeon export RUN --gguf OUT.gguf``: one file for llama.cpp, KoboldCpp, Ollama, LM Studio.

The file follows llama.cpp's conventions (as its convert_hf_to_gguf.py writes them), so those
programs load it like any converted model:

- architectures ``llama`` (the built-in SmolLM2 and other Llama-shaped models) and ``gpt2``;
- llama's query and key projections are permuted to llama.cpp's rotary layout, GPT-2's Conv1D
  weights transposed to (out, in);
- 1-D tensors (norms, biases) and GPT-2's position embeddings stay float32; the other weights
  take the chosen type (``--gguf-type``), falling back to f16 where a row does not split into
  whole quantization blocks;
- the tokenizer travels in the file (``tokenizer.ggml.*``: byte-level BPE tokens, types,
  merges, special ids, whether BOS is added, and the name of the pre-tokenizer llama.cpp must
  split text with), so no other file is needed;
- no chat template: the model continues a story in the dungeon story format, it does not chat.
  The story format's name, version and stop strings are recorded under ``dungeon.*``.

The types are those the installed ``gguf`` package can quantize to in Python (GGUF_TYPES). The
round trip is tested with transformers' own GGUF loader (tests/test_export.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dungeon.builtin_model import Progress, report
from dungeon.export.output import atomic_output, check_space, check_target
from dungeon.export.source import ExportError, Source
from dungeon.format import FormatSpec

ARCHITECTURES = ("llama", "gpt2")


@dataclass(frozen=True)
class GGUFType:
    """One ``--gguf-type``: the tensor type for 2-D weights and the file type it announces."""

    tensor: str
    """gguf.GGMLQuantizationType member name."""
    file_type: str
    """gguf.LlamaFileType member name (general.file_type)."""


GGUF_TYPES: dict[str, GGUFType] = {
    "f32": GGUFType("F32", "ALL_F32"),
    "f16": GGUFType("F16", "MOSTLY_F16"),
    "bf16": GGUFType("BF16", "MOSTLY_BF16"),
    "q8_0": GGUFType("Q8_0", "MOSTLY_Q8_0"),
    "q5_1": GGUFType("Q5_1", "MOSTLY_Q5_1"),
    "q5_0": GGUFType("Q5_0", "MOSTLY_Q5_0"),
    "q4_1": GGUFType("Q4_1", "MOSTLY_Q4_1"),
    "q4_0": GGUFType("Q4_0", "MOSTLY_Q4_0"),
}
"""The types this export writes, best quality first (K-quants need llama.cpp's llama-quantize:
export f16 and quantize that)."""

# How llama.cpp names the way a byte-level BPE tokenizer splits text before merging
# (tokenizer.ggml.pre), recognised by the steps of tokenizer.json's pre_tokenizer.
GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_BYTES = {"type": "ByteLevel", "add_prefix_space": False}
_GPT2_RULES = (  # GPT-2's split: built into ByteLevel, or spelled out as a Split before it
    [{**_BYTES, "use_regex": True}],
    [
        {
            "type": "Split",
            "pattern": {"Regex": GPT2_REGEX},
            "behavior": "Isolated",
            "invert": False,
        },
        {**_BYTES, "use_regex": False},
    ],
)
_DIGITS = {"type": "Digits", "individual_digits": True}


# ---------------------------------------------------------------------------------------------
# The entry point


def export_gguf(
    source: Source,
    out: str | Path,
    *,
    gguf_type: str = "f16",
    force: bool = False,
    progress: Progress | None = None,
) -> Path:
    """Write ``source`` as a GGUF file at ``out``, atomically; return ``out``."""
    import gguf

    out = Path(out)
    if gguf_type not in GGUF_TYPES:
        raise ExportError(f"unknown --gguf-type {gguf_type!r}; use {', '.join(GGUF_TYPES)}")
    check_target(out, force=force, kind="file")
    vocab = check_gguf_exportable(source)
    arch = source.model_type
    planned = plan_tensors(source, gguf_type)
    check_space(out, sum(_nbytes(data.shape, kind) for _, data, kind in planned))

    report(progress, f"Writing {out} ({gguf_type}, {len(planned)} tensors)")
    with atomic_output(out, force=force, folder=False) as tmp:
        writer = gguf.GGUFWriter(tmp, arch)
        try:
            write_metadata(writer, source, arch, gguf_type)
            write_tokenizer(writer, vocab)
            for name, data, kind in planned:
                if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                    writer.add_tensor(
                        name, data.astype("float16" if kind.name == "F16" else "float32")
                    )
                else:
                    writer.add_tensor(name, gguf.quants.quantize(data, kind), raw_dtype=kind)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()
    return out


def check_gguf_exportable(source: Source) -> Vocab:
    """Raise ExportError when ``source`` cannot be written as GGUF (architecture, tokenizer,
    rotary scaling); return its tokenizer in GGUF's terms. Nothing is written."""
    arch = source.model_type
    if arch not in ARCHITECTURES:
        raise ExportError(
            f"{source.name} is a {arch!r} model; GGUF export knows {' and '.join(ARCHITECTURES)}: "
            f"export --merged and convert that folder with llama.cpp's convert_hf_to_gguf.py"
        )
    if arch == "llama":
        _rope_theta(source)
    return tokenizer_metadata(source.tokenizer, source.model.config.vocab_size)


def _rope_theta(source: Source) -> float:
    cfg = source.model.config
    rope = dict(getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise ExportError(
            f"{source.name} uses {rope.get('rope_type', rope.get('type'))!r} rotary scaling, "
            f"which this GGUF export does not write: export --merged and convert that folder "
            f"with llama.cpp's convert_hf_to_gguf.py"
        )
    return float(rope.get("rope_theta") or getattr(cfg, "rope_theta", None) or 10000.0)


def plan_tensors(source: Source, gguf_type: str) -> list[tuple[str, object, object]]:
    """``(llama.cpp name, float32 array, GGML type)`` for every tensor the file will hold."""
    import gguf

    model = source.model
    tensors = llama_tensors(model) if source.model_type == "llama" else gpt2_tensors(model)
    wanted = getattr(gguf.GGMLQuantizationType, GGUF_TYPES[gguf_type].tensor)
    return [(name, data, tensor_type(name, data, wanted)) for name, data in tensors]


def estimated_bytes(source: Source, gguf_type: str) -> int:
    """About how large the GGUF file will be (the tensors; metadata adds a few MB)."""
    return sum(_nbytes(data.shape, kind) for _, data, kind in plan_tensors(source, gguf_type))


def tensor_type(name: str, data, wanted):
    """The type a tensor is stored in: float32 for 1-D and position tables, else ``wanted``
    (f16 where a row is not a whole number of ``wanted``'s blocks)."""
    import gguf

    Q = gguf.GGMLQuantizationType
    if data.ndim < 2 or name == "position_embd.weight" or wanted == Q.F32:
        return Q.F32
    block = gguf.GGML_QUANT_SIZES[wanted][0]
    return wanted if data.shape[-1] % block == 0 else Q.F16


def _nbytes(shape, kind) -> int:
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[kind]
    count = 1
    for n in shape:
        count *= int(n)
    return count // block * size


# ---------------------------------------------------------------------------------------------
# Metadata


def write_metadata(writer, source: Source, arch: str, gguf_type: str) -> None:
    import gguf

    cfg = source.model.config
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(source.name)
    writer.add_description(
        f"dungeon text-adventure model ({source.kind}"
        + (f" on {source.base}" if source.base else "")
        + "): continues stories in the dungeon story format"
    )
    writer.add_file_type(getattr(gguf.LlamaFileType, GGUF_TYPES[gguf_type].file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    fmt = (source.info or {}).get("format") or FormatSpec().to_dict()
    writer.add_string("dungeon.format.name", str(fmt.get("name")))
    writer.add_uint32("dungeon.format.version", int(fmt.get("version", 0)))
    writer.add_array("dungeon.format.stop_strings", [str(s) for s in fmt.get("stop_strings", [])])
    if arch == "llama":
        heads, kv_heads = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads or cfg.num_attention_heads,
        )
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
        writer.add_vocab_size(cfg.vocab_size)
        writer.add_context_length(cfg.max_position_embeddings)
        writer.add_embedding_length(cfg.hidden_size)
        writer.add_block_count(cfg.num_hidden_layers)
        writer.add_feed_forward_length(cfg.intermediate_size)
        writer.add_head_count(heads)
        writer.add_head_count_kv(kv_heads)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(_rope_theta(source))
        writer.add_layer_norm_rms_eps(float(cfg.rms_norm_eps))
        if head_dim * heads != cfg.hidden_size:
            writer.add_key_length(head_dim)
            writer.add_value_length(head_dim)
    else:
        writer.add_context_length(cfg.n_positions)
        writer.add_embedding_length(cfg.n_embd)
        writer.add_block_count(cfg.n_layer)
        writer.add_feed_forward_length(cfg.n_inner or 4 * cfg.n_embd)
        writer.add_head_count(cfg.n_head)
        writer.add_layer_norm_eps(float(cfg.layer_norm_epsilon))


# ---------------------------------------------------------------------------------------------
# The tokenizer


@dataclass
class Vocab:
    """The tokenizer as GGUF stores it."""

    tokens: list[str]
    types: list[int]
    merges: list[str]
    pre: str
    special: dict[str, int]
    """bos / eos / unk / pad -> id, for those the tokenizer has."""
    add_bos: bool
    add_eos: bool


def tokenizer_metadata(tokenizer, vocab_size: int) -> Vocab:
    """Read a byte-level BPE tokenizer (GPT-2's, SmolLM2's) into GGUF's terms.

    Raises ExportError for other kinds (sentencepiece, WordPiece) and for splitting rules
    llama.cpp has no name for: a GGUF with the wrong rule tokenizes differently from training.
    """
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError("GGUF export needs a fast tokenizer (tokenizer.json)")
    spec = json.loads(backend.to_str())
    model = spec.get("model") or {}
    decoder = spec.get("decoder") or {}
    if model.get("type") != "BPE" or decoder.get("type") != "ByteLevel":
        raise ExportError(
            f"GGUF export writes byte-level BPE tokenizers (GPT-2, SmolLM2, Llama 3); this one "
            f"is {model.get('type')} with a {decoder.get('type')} decoder: export --merged and "
            f"convert that folder with llama.cpp's convert_hf_to_gguf.py"
        )
    pre = _pre_tokenizer_name(spec.get("pre_tokenizer"))

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    size = max(vocab_size, max(by_id) + 1)
    if size > vocab_size:
        raise ExportError(
            f"the tokenizer has {size} tokens but the model only {vocab_size} embeddings"
        )
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    T = gguf.TokenType
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(T.UNUSED)
            continue
        tokens.append(by_id[i])
        if i in added:
            types.append(T.CONTROL if added[i].get("special") else T.USER_DEFINED)
        else:
            types.append(T.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]

    special = {}
    for key in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{key}_token_id", None)
        if token_id is not None:
            special[key] = int(token_id)
    probe = tokenizer("a").input_ids
    add_bos = "bos" in special and bool(probe) and probe[0] == special["bos"]
    add_eos = "eos" in special and bool(probe) and probe[-1] == special["eos"]
    return Vocab(tokens, [int(t) for t in types], merges, pre, special, add_bos, add_eos)


def _pre_tokenizer_name(pre: dict | None) -> str:
    steps = (pre or {}).get("pretokenizers", []) if (pre or {}).get("type") == "Sequence" else [pre]
    for rule in _GPT2_RULES:
        if _matches(steps, rule):
            return "gpt-2"
        if _matches(steps, [_DIGITS, *rule]):
            return "smollm"  # digits one by one, then GPT-2's split (LLAMA_VOCAB_PRE_TYPE_SMOLLM)
    raise ExportError(
        f"this tokenizer splits text in a way the GGUF export cannot name for llama.cpp "
        f"({json.dumps(pre)[:100]}...); export --merged and use llama.cpp's convert_hf_to_gguf.py"
    )


def _matches(steps: list, rule: list[dict]) -> bool:
    return len(steps) == len(rule) and all(
        isinstance(step, dict) and all(step.get(k) == v for k, v in want.items())
        for step, want in zip(steps, rule)
    )


def write_tokenizer(writer, vocab: Vocab) -> None:
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    for key, token_id in vocab.special.items():
        getattr(
            writer,
            {"unk": "add_unk_token_id", "pad": "add_pad_token_id"}.get(key, f"add_{key}_token_id"),
        )(token_id)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)


# ---------------------------------------------------------------------------------------------
# Tensors: transformers names -> llama.cpp names, as float32 numpy arrays


def _state(model) -> dict:
    return {k: v.detach().to("cpu").float() for k, v in model.state_dict().items()}


def _unexpected(names: list[str], arch: str):
    return ExportError(
        f"the {arch} model has tensors this GGUF export does not map ({', '.join(names[:3])}"
        f"{'...' if len(names) > 3 else ''}); export --merged and convert with llama.cpp"
    )


def llama_tensors(model) -> list[tuple[str, object]]:
    """Llama tensors in llama.cpp's names; q and k rows reordered for its rotary layout."""
    cfg = model.config
    heads = cfg.num_attention_heads
    kv_heads = cfg.num_key_value_heads or heads
    state = _state(model)
    tied = bool(getattr(cfg, "tie_word_embeddings", False))
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": None if tied else "output.weight",
    }
    per_layer = {
        "input_layernorm.weight": "attn_norm.weight",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm.weight": "ffn_norm.weight",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    out, unknown = [], []
    for key, tensor in state.items():
        if key in names:
            if names[key]:
                out.append((names[key], tensor))
            continue
        gguf_name = _layer_name(key, "model.layers.", per_layer)
        if gguf_name is None:
            unknown.append(key)
            continue
        if ".attn_q." in gguf_name:
            tensor = _rotary_permute(tensor, heads)
        elif ".attn_k." in gguf_name:
            tensor = _rotary_permute(tensor, kv_heads)
        out.append((gguf_name, tensor))
    if unknown:
        raise _unexpected(unknown, "llama")
    return [(name, t.numpy()) for name, t in out]


def _rotary_permute(w, n_head: int):
    """transformers rotates the two halves of each head; llama.cpp (like Meta's original
    weights) rotates adjacent pairs. Reorder the rows of a q or k projection to match."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def gpt2_tensors(model) -> list[tuple[str, object]]:
    """GPT-2 tensors in llama.cpp's names; Conv1D weights (in, out) transposed to (out, in)."""
    state = _state(model)
    names = {
        "transformer.wte.weight": "token_embd.weight",
        "transformer.wpe.weight": "position_embd.weight",
        "transformer.ln_f.weight": "output_norm.weight",
        "transformer.ln_f.bias": "output_norm.bias",
        "lm_head.weight": "output.weight",  # llama.cpp's gpt2 loader asks for it, tied or not
    }
    per_layer = {
        "ln_1": "attn_norm",
        "attn.c_attn": "attn_qkv",
        "attn.c_proj": "attn_output",
        "ln_2": "ffn_norm",
        "mlp.c_fc": "ffn_up",
        "mlp.c_proj": "ffn_down",
    }
    if "lm_head.weight" not in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]
    out, unknown = [], []
    for key, tensor in state.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # causal-mask buffers of older transformers, not weights
        if key in names:
            out.append((names[key], tensor))
            continue
        gguf_name = _layer_name(key, "transformer.h.", per_layer)
        if gguf_name is None:
            unknown.append(key)
            continue
        if (
            gguf_name.endswith(".weight")
            and tensor.ndim == 2
            and not gguf_name.endswith("norm.weight")
        ):
            tensor = tensor.t().contiguous()
        out.append((gguf_name, tensor))
    if unknown:
        raise _unexpected(unknown, "gpt2")
    return [(name, t.numpy()) for name, t in out]


def _layer_name(key: str, prefix: str, per_layer: dict[str, str]) -> str | None:
    """``model.layers.3.self_attn.q_proj.weight`` -> ``blk.3.attn_q.weight`` (None: unknown)."""
    if not key.startswith(prefix):
        return None
    index, _, rest = key[len(prefix) :].partition(".")
    if not index.isdigit():
        return None
    for hf, ours in per_layer.items():
        if rest == hf:
            return f"blk.{index}.{ours}"
        if rest.startswith(hf + ".") and rest[len(hf) + 1 :] in ("weight", "bias"):
            return f"blk.{index}.{ours}.{rest[len(hf) + 1 :]}"
    return None
