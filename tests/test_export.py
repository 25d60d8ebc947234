"""dungeon export: the merged folder, the GGUF round trip and every refusal.

The GGUF files are read back with transformers' own GGUF loader (no llama.cpp here) and their
logits compared over a short story prompt, as the largest difference relative to the spread
(standard deviation) of the reference logits. The stated tolerances:

- against the merged model itself (TOLERANCE): f32 1e-4, f16 5e-2 (q8_0 has no useful bound
  here: the weights of a tiny random model are all noise, and its logits nearly flat);
- against the merged model with its matrices rounded to the file's type by the gguf package's
  reference quantizer (EXACT): 1e-5 for every type: the file holds exactly those weights, in
  llama.cpp's layout, and they come back out unchanged.

Two tiny models carry the checks: the tiny GPT-2 on the real GPT-2 BPE with a LoRA adapter
(tests/conftest.py), and a tiny Llama with a byte-level BPE trained here on the project's
stories, with a LoRA on every projection. The real built-in model runs in a slow test.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dungeon.cli import main
from dungeon.format import FormatSpec

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = {"f32": 1e-4, "f16": 5e-2}
EXACT = 1e-5
PROMPT = (
    "You stand at the edge of the lake. The lantern under the water blinks twice.\n\n"
    "> You wade in.\nThe water is cold and smells of iron."
)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["export", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def error_line(err: str) -> str:
    """The one line the export's error printed (progress lines may come before it)."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("dungeon export:")]
    assert len(lines) == 1, err
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name)


def logits(model, tokenizer, text: str = PROMPT):
    import torch

    ids = tokenizer(text, return_tensors="pt").input_ids
    with torch.inference_mode():
        return model(ids).logits[0].float()


def relative_error(a, b) -> float:
    return float((a - b).abs().max() / a.std())


def rounded(model, kind: str, keep: tuple[str, ...] = ()):
    """A copy of ``model`` with its matrices (but ``keep``) stored and read back as ``kind``."""
    import copy

    import gguf
    import torch

    qtype = gguf.GGMLQuantizationType[kind.upper()]
    copied = copy.deepcopy(model)
    with torch.no_grad():
        for name, weight in copied.named_parameters():
            if weight.ndim == 2 and name not in keep:
                packed = gguf.quants.quantize(weight.numpy(), qtype)
                weight.copy_(torch.from_numpy(gguf.quants.dequantize(packed, qtype)))
    return copied


def load_gguf(path: Path, **config):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32, **config
    )
    return model.eval(), AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def gguf_fields(path: Path) -> tuple[dict, dict]:
    """(metadata key -> value, tensor name -> type name) as llama.cpp would read them."""
    import gguf

    reader = gguf.GGUFReader(path)
    skip = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type")
    meta = {k: f.contents() for k, f in reader.fields.items() if k not in skip}
    meta["tokenizer.ggml.token_type"] = reader.fields["tokenizer.ggml.token_type"].contents()
    return meta, {t.name: t.tensor_type.name for t in reader.tensors}


# ---------------------------------------------------------------------------------------------
# Tiny models


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    """A tiny random Llama (GQA, tied embeddings) with a 300-token byte-level BPE trained on
    stories/, shaped like the built-in model's tokenizer; the embedding table has 20 more rows
    than the vocabulary (padding, as real models often have)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from dungeon.tiny import make_tiny_llama

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = [p.read_text(encoding="utf-8") for p in sorted((ROOT / "stories").glob("*.txt"))[:6]]
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    model = make_tiny_llama(
        len(tokenizer) + 20,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_llama_lora(tiny_llama, tmp_path_factory) -> Path:
    """A LoRA adapter (non-zero) on every projection of the tiny Llama, as finetune.py saves."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=4, lora_alpha=16, target_modules=targets, init_lora_weights=False)
    model = get_peft_model(base, config)
    out = tmp_path_factory.mktemp("llama-lora")
    model.save_pretrained(out)
    info = {"format": FormatSpec().to_dict(), "base": str(tiny_llama), "kind": "lora"}
    (out / "dungeon.json").write_text(json.dumps(info))
    return out


@pytest.fixture(scope="module")
def gpt2_source(tiny_lora):
    from dungeon.export import load_source

    return load_source(tiny_lora)


@pytest.fixture(scope="module")
def llama_source(tiny_llama_lora):
    from dungeon.export import load_source

    return load_source(tiny_llama_lora)


def test_importing_the_export_package_stays_light():
    import subprocess
    import sys

    code = (
        "import sys, dungeon.export, dungeon.export.command; "
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'gguf', 'numpy') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# ---------------------------------------------------------------------------------------------
# The merged folder


def test_merged_folder_matches_the_adapter_on_its_base(
    tiny_gpt2, tiny_lora, tmp_path, capsys, one_torch_thread
):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dungeon.models import check_dungeon_json, load_generator

    out = tmp_path / "merged"
    code, stdout, err = run_cli(capsys, tiny_lora, "--merged", out)
    assert code == 0, err
    assert f"wrote {out}" in stdout
    names = {p.name for p in out.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "dungeon.json",
        "README.md",
    } <= names
    assert not any(n.startswith("adapter_") for n in names)
    assert leftovers(tmp_path) == []

    meta = check_dungeon_json(out)
    assert meta["format"] == FormatSpec().to_dict()
    assert meta["kind"] == "merged" and meta["export"]["from_kind"] == "lora"
    assert meta["export"]["command"][:3] == ["dungeon", "export", str(tiny_lora)]
    card = (out / "README.md").read_text()
    assert f"dungeon play --model {out}" in card and "\\n>" in card

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_gpt2), tiny_lora)
    merged = AutoModelForCausalLM.from_pretrained(out)
    expected = logits(adapted.eval(), tokenizer)
    base = logits(AutoModelForCausalLM.from_pretrained(tiny_gpt2).eval(), tokenizer)
    assert relative_error(expected, base) > 0.01  # the adapter changes the model...
    assert relative_error(expected, logits(merged.eval(), tokenizer)) < 1e-5  # ...and is in it

    gen = load_generator(out, device="cpu", dtype="float32")  # plays with no adapter
    assert gen.name == str(out)
    assert isinstance(gen.generate(PROMPT + "\n\n> You look around.\n", seed=1), str)


def test_merged_dtype_is_the_stored_one_unless_asked(gpt2_source, tmp_path):
    import torch
    from safetensors import safe_open

    from dungeon.export import export_merged

    before = {k: v.clone() for k, v in gpt2_source.model.state_dict().items()}
    out = export_merged(gpt2_source, tmp_path / "half", dtype="float16")
    with safe_open(out / "model.safetensors", "pt") as f:
        names = f.keys()
        assert {str(f.get_tensor(k).dtype) for k in names} == {"torch.float16"}
        assert "lm_head.weight" not in names  # tied to the embeddings: stored once
    assert json.loads((out / "config.json").read_text())["dtype"] == "float16"
    assert json.loads((out / "dungeon.json").read_text())["export"]["dtype"] == "float16"
    after = gpt2_source.model.state_dict()  # a GGUF written next still gets float32
    assert all(torch.equal(before[k], after[k]) for k in before)
    out = export_merged(gpt2_source, tmp_path / "auto")
    assert json.loads((out / "config.json").read_text())["dtype"] == "float32"  # as stored


# ---------------------------------------------------------------------------------------------
# GGUF round trips through transformers' loader


def test_gguf_round_trip_tiny_gpt2(gpt2_source, tmp_path, one_torch_thread):
    """f16 only: transformers' loader spends ~15 s per file parsing GPT-2's 50,257 tokens and
    50,000 merges; the other types go through the same code on the tiny Llama below."""
    from dungeon.export import export_gguf

    kind = "f16"
    path = export_gguf(gpt2_source, tmp_path / "tiny-gpt2.gguf", gguf_type=kind)
    assert leftovers(tmp_path) == []
    # transformers reads gpt2.context_length into n_ctx, not n_positions (the tiny GPT-2 has
    # 512 positions, not GPT-2's 1024): say it, or its loader builds the wrong position table.
    model, tokenizer = load_gguf(path, n_positions=512)
    assert tokenizer(PROMPT).input_ids == gpt2_source.tokenizer(PROMPT).input_ids
    expected = logits(gpt2_source.model, gpt2_source.tokenizer)
    got = logits(model, gpt2_source.tokenizer)
    assert relative_error(expected, got) < TOLERANCE[kind]
    assert (expected.argmax(-1) == got.argmax(-1)).float().mean() > 0.9
    same = rounded(gpt2_source.model, kind, keep=("transformer.wpe.weight",))
    assert relative_error(logits(same, gpt2_source.tokenizer), got) < EXACT

    meta, tensors = gguf_fields(path)
    assert meta["general.architecture"] == "gpt2"
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == "gpt-2"
    assert meta["tokenizer.ggml.add_bos_token"] is False
    assert meta["dungeon.format.stop_strings"] == list(FormatSpec().stop_strings)
    assert tensors["blk.0.attn_norm.weight"] == "F32"
    assert tensors["position_embd.weight"] == "F32"
    assert tensors["blk.0.attn_qkv.weight"] == kind.upper()


@pytest.mark.parametrize("kind", ["f32", "f16", "q8_0", "q4_0"])
def test_gguf_round_trip_tiny_llama(llama_source, tmp_path, kind, one_torch_thread):
    from dungeon.export import export_gguf

    path = export_gguf(llama_source, tmp_path / "tiny-llama.gguf", gguf_type=kind)
    model, tokenizer = load_gguf(path)
    assert tokenizer(PROMPT).input_ids == llama_source.tokenizer(PROMPT).input_ids
    assert tokenizer.eos_token == "<|im_end|>"
    expected = logits(llama_source.model, llama_source.tokenizer)
    got = logits(model, llama_source.tokenizer)
    if kind in TOLERANCE:
        assert relative_error(expected, got) < TOLERANCE[kind]
        assert (expected.argmax(-1) == got.argmax(-1)).float().mean() > 0.9
    same = logits(rounded(llama_source.model, kind), llama_source.tokenizer)
    assert relative_error(same, got) < EXACT

    meta, tensors = gguf_fields(path)
    assert meta["general.architecture"] == "llama"
    assert meta["llama.attention.head_count_kv"] == 2 and meta["llama.rope.dimension_count"] == 16
    assert meta["tokenizer.ggml.pre"] == "gpt-2"
    vocab = len(llama_source.tokenizer)
    types = meta["tokenizer.ggml.token_type"]
    assert len(types) == vocab + 20 and set(types[vocab:]) == {5}  # UNUSED padding rows
    assert [types[i] for i in range(3)] == [3, 3, 3]  # the special tokens are CONTROL
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    assert tensors["blk.1.attn_k.weight"] == kind.upper()


def test_gguf_names_the_smollm_split_and_refuses_unknown_ones():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from dungeon.export import ExportError
    from dungeon.export.gguf_file import tokenizer_metadata

    def tokenizer(pre):
        bpe = Tokenizer(models.BPE(vocab={"a": 0, "b": 1, "ab": 2}, merges=[("a", "b")]))
        bpe.pre_tokenizer, bpe.decoder = pre, decoders.ByteLevel()
        return PreTrainedTokenizerFast(tokenizer_object=bpe)

    digits = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    vocab = tokenizer_metadata(tokenizer(digits), 3)
    assert vocab.pre == "smollm" and vocab.merges == ["a b"] and vocab.tokens == ["a", "b", "ab"]
    with pytest.raises(ExportError, match=r"cannot name for llama\.cpp"):
        tokenizer_metadata(tokenizer(pre_tokenizers.Whitespace()), 3)
    with pytest.raises(ExportError, match="only 2 embeddings"):
        tokenizer_metadata(tokenizer(digits), 2)


# ---------------------------------------------------------------------------------------------
# Refusals: one line, exit 2, nothing written


def test_bad_runs_are_refused_in_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "unfinished.partial").mkdir()
    (tmp_path / "file.txt").write_text("x")
    cases = {
        empty: "is not a model folder",
        tmp_path / "missing": "no folder at",
        tmp_path / "unfinished": "has not finished",
        tmp_path / "file.txt": "is a file",
    }
    for run, message in cases.items():
        code, stdout, err = run_cli(capsys, run, "--gguf", tmp_path / "out.gguf")
        assert code == 2 and message in error_line(err)
        assert not (tmp_path / "out.gguf").exists()
    code, _, err = run_cli(capsys, empty)
    assert code == 2 and "--merged OUT, --gguf OUT.gguf, or both" in err


def test_existing_outputs_need_force(tiny_lora, tmp_path, capsys):
    out, gguf_out = tmp_path / "merged", tmp_path / "model.gguf"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    code, _, err = run_cli(capsys, tiny_lora, "--merged", out, "--gguf", gguf_out)
    assert code == 2 and "already exists; pass --force" in error_line(err)
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and not gguf_out.exists()

    gguf_out.write_text("old")
    code, _, err = run_cli(capsys, tiny_lora, "--gguf", gguf_out, "--force", "--gguf-type", "q8_0")
    assert code == 0, err
    assert gguf_out.read_bytes()[:4] == b"GGUF"
    code, _, err = run_cli(capsys, tiny_lora, "--merged", out, "--force")
    assert code == 0 and (out / "model.safetensors").is_file() and not (out / "mine.txt").exists()
    assert leftovers(tmp_path) == []


def test_unknown_architecture_writes_nothing(tiny_gpt2, tmp_path, capsys):
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2)
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    neox = tmp_path / "neox"
    GPTNeoXForCausalLM(config).save_pretrained(neox)
    tokenizer.save_pretrained(neox)
    code, _, err = run_cli(
        capsys, neox, "--merged", tmp_path / "merged", "--gguf", tmp_path / "neox.gguf"
    )
    assert code == 2 and "'gpt_neox' model; GGUF export knows llama and gpt2" in error_line(err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neox"]


def test_no_disk_space_writes_nothing(tiny_lora, tmp_path, capsys, monkeypatch):
    from types import SimpleNamespace

    from dungeon.export import output

    full = SimpleNamespace(total=10**9, used=10**9 - 2**20, free=2**20)
    monkeypatch.setattr(output.shutil, "disk_usage", lambda path: full)
    for flag, target in (("--merged", tmp_path / "m"), ("--gguf", tmp_path / "m.gguf")):
        code, _, err = run_cli(capsys, tiny_lora, flag, target)
        assert code == 2 and "not enough disk space" in error_line(err)
    assert list(tmp_path.iterdir()) == []


def test_room_for_one_output_is_not_room_for_two(
    gpt2_source, tiny_lora, tmp_path, capsys, monkeypatch
):
    from types import SimpleNamespace

    from dungeon.export import gguf_file, merged, output

    sizes = [merged.estimated_bytes(gpt2_source), gguf_file.estimated_bytes(gpt2_source, "f16")]
    free = output.SPACE_MARGIN_BYTES + max(sizes) + 2**20
    disk = SimpleNamespace(total=10**10, used=10**10 - free, free=free)
    monkeypatch.setattr(output.shutil, "disk_usage", lambda path: disk)
    code, _, err = run_cli(
        capsys, tiny_lora, "--merged", tmp_path / "m", "--gguf", tmp_path / "m.gguf"
    )
    assert code == 2 and "not enough disk space" in error_line(err)
    assert list(tmp_path.iterdir()) == []
    assert run_cli(capsys, tiny_lora, "--gguf", tmp_path / "m.gguf")[0] == 0  # one fits


@pytest.mark.parametrize("failure", ["disk full", "interrupted"])
def test_a_failed_write_leaves_nothing(gpt2_source, tmp_path, monkeypatch, failure):
    import errno

    import gguf

    from dungeon.export import ExportError, export_gguf, export_merged

    def fail(*args, **kwargs):
        if failure == "interrupted":
            raise KeyboardInterrupt
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", fail)
    monkeypatch.setattr(type(gpt2_source.tokenizer), "save_pretrained", fail)
    expected = KeyboardInterrupt if failure == "interrupted" else ExportError
    (tmp_path / "old.gguf").write_text("the old file")
    with pytest.raises(expected, match=None if failure == "interrupted" else "disk filled up"):
        export_gguf(gpt2_source, tmp_path / "old.gguf", force=True)
    with pytest.raises(expected):
        export_merged(gpt2_source, tmp_path / "merged")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.gguf"]
    assert (tmp_path / "old.gguf").read_text() == "the old file"


# ---------------------------------------------------------------------------------------------
# The real built-in model and the shipped adapter


@pytest.mark.slow
def test_shipped_adapter_exports_to_gguf_that_matches_play(tmp_path, capsys, one_torch_thread):
    from dungeon.models import load_generator

    adapter = ROOT / "dungeon" / "adapters" / "adventure"
    gguf_out, merged = tmp_path / "adventure-q8.gguf", tmp_path / "adventure"
    code, _, err = run_cli(
        capsys, adapter, "--merged", merged, "--gguf", gguf_out, "--gguf-type", "q8_0"
    )
    assert code == 0, err
    played = load_generator(
        "smollm2-135m", adapter=adapter, device="cpu", dtype="float32", quantize="none"
    )
    expected = logits(played.model, played.tokenizer)
    model, tokenizer = load_gguf(gguf_out)
    assert tokenizer(PROMPT).input_ids == played.tokenizer(PROMPT).input_ids
    got = logits(model, played.tokenizer)
    assert relative_error(expected, got) < 0.1  # a trained model: q8_0 rounding barely shows
    assert (expected.argmax(-1) == got.argmax(-1)).float().mean() > 0.9
    meta, _ = gguf_fields(gguf_out)
    assert meta["llama.block_count"] == 30 and meta["tokenizer.ggml.eos_token_id"] == 2


def test_merged_folder_keeps_the_recommended_sampling(tiny_lora, tmp_path, capsys):
    from dungeon.models import check_dungeon_json

    run = tmp_path / "run"
    shutil.copytree(tiny_lora, run)
    info = json.loads((run / "dungeon.json").read_text())
    info["sampling"] = {"temperature": 0.5}
    (run / "dungeon.json").write_text(json.dumps(info))
    out = tmp_path / "merged"
    code, _, err = run_cli(capsys, run, "--merged", out)
    assert code == 0, err
    assert check_dungeon_json(out)["sampling"] == {"temperature": 0.5}
