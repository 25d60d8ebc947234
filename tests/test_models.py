"""Model loading: local folders, adapters, safety refusals, the hub offline, the built-in base."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dungeon import models
from dungeon.format import FormatSpec
from dungeon.generator import SamplingSettings
from dungeon.models import (
    BUILTIN,
    ModelNotFoundError,
    UnsafeModelError,
    choose_placement,
    load_generator,
    resolve_base,
)

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "You wake in a cellar that smells of apples.\n\n> You climb the stairs.\n"


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs the tiny model on one thread (see conftest.one_torch_thread)."""


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_importing_dungeon_and_models_stays_light():
    code = (
        "import sys, dungeon, dungeon.models; "
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --- finding models ---------------------------------------------------------------------------


def test_resolve_base_gives_a_local_folder_back(tiny_gpt2):
    assert resolve_base(tiny_gpt2) == str(tiny_gpt2)


def test_resolve_base_rejects_a_missing_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no model folder"):
        resolve_base(tmp_path / "nowhere")
    with pytest.raises(ModelNotFoundError, match="no model folder"):
        resolve_base("./models/mine")


def test_hub_id_offline_fails_fast_with_a_way_out(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))  # nothing downloaded before
    started = time.monotonic()
    with pytest.raises(ModelNotFoundError) as err:
        load_generator("gpt2")
    assert time.monotonic() - started < 5
    message = str(err.value)
    assert BUILTIN in message and "local model folder" in message
    assert "Traceback" not in message and len(message.splitlines()) <= 3


def test_unreachable_hub_fails_fast_without_offline_mode(tmp_path, monkeypatch):
    from huggingface_hub import constants

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="not reachable"):
        resolve_base("HuggingFaceTB/SmolLM2-135M")
    assert time.monotonic() - started < 5


def test_builtin_gguf_is_found_without_importing_its_package():
    path = models.builtin_gguf_path()
    assert path.name == models.BUILTIN_GGUF and path.stat().st_size > 50_000_000
    assert models.BUILTIN_PACKAGE not in sys.modules


# --- local folders and safety -----------------------------------------------------------------


def test_loads_a_local_folder(tiny_gpt2):
    gen = load_generator(str(tiny_gpt2), device="cpu")
    assert gen.name == str(tiny_gpt2)
    assert gen.model.dtype.is_floating_point
    assert isinstance(gen.generate(PROMPT, seed=1), str)


def test_refuses_pickle_only_weights_unless_allowed(tiny_gpt2, tmp_path):
    import torch
    from safetensors.torch import load_file

    folder = copy_model(tiny_gpt2, tmp_path / "pickled")
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(UnsafeModelError, match="allow_pickle"):
        load_generator(folder)
    gen = load_generator(folder, allow_pickle=True, device="cpu", dtype="float32")
    assert isinstance(gen.generate(PROMPT, seed=1), str)


def test_refuses_a_model_that_brings_its_own_code(tiny_gpt2, tmp_path):
    folder = copy_model(tiny_gpt2, tmp_path / "remote")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_evil.py").write_text("raise SystemExit('this must never run')\n")
    with pytest.raises(UnsafeModelError, match="auto_map"):
        load_generator(folder)


def test_a_folder_without_weights_is_not_found(tiny_gpt2, tmp_path):
    folder = copy_model(tiny_gpt2, tmp_path / "empty")
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelNotFoundError, match="no weights"):
        load_generator(folder)


def test_warns_when_the_story_format_does_not_match(tiny_gpt2, tmp_path, caplog):
    folder = copy_model(tiny_gpt2, tmp_path / "tuned")
    fmt = FormatSpec().to_dict()
    info = {"format": fmt, "base": "gpt2", "training": {}}
    (folder / "dungeon.json").write_text(json.dumps(info))
    with caplog.at_level(logging.WARNING, logger="dungeon.models"):
        assert models.check_dungeon_json(folder) == info
    assert not caplog.records
    info["format"] = {**fmt, "version": fmt["version"] + 1}
    (folder / "dungeon.json").write_text(json.dumps(info))
    with caplog.at_level(logging.WARNING, logger="dungeon.models"):
        load_generator(folder, device="cpu")
    assert any("story format" in r.getMessage() for r in caplog.records)


# --- adapters ---------------------------------------------------------------------------------


def test_adapter_folder_names_its_base(tiny_gpt2, tiny_lora):
    settings = SamplingSettings(temperature=0.0, max_new_tokens=12, min_new_tokens=12)
    plain = load_generator(tiny_gpt2, device="cpu", dtype="float32")
    tuned = load_generator(tiny_lora, device="cpu", dtype="float32")
    assert json.loads((tiny_lora / "adapter_config.json").read_text())[
        "base_model_name_or_path"
    ] == str(tiny_gpt2)
    assert tuned.name.endswith(tiny_lora.name)
    assert tuned.generate(PROMPT, seed=0, settings=settings) != plain.generate(
        PROMPT, seed=0, settings=settings
    )
    # The same adapter given explicitly, merged or not, gives the same text.
    explicit = load_generator(tiny_gpt2, adapter=tiny_lora, device="cpu", dtype="float32")
    unmerged = load_generator(
        None, adapter=tiny_lora, device="cpu", dtype="float32", merge_adapter=False
    )
    expected = tuned.generate(PROMPT, seed=0, settings=settings)
    assert explicit.generate(PROMPT, seed=0, settings=settings) == expected
    assert unmerged.generate(PROMPT, seed=0, settings=settings) == expected


def test_adapter_with_a_missing_base(tiny_lora, tmp_path):
    folder = copy_model(tiny_lora, tmp_path / "orphan")
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (folder / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelNotFoundError):
        load_generator(folder)


# --- placement --------------------------------------------------------------------------------


def test_choose_placement():
    p = choose_placement("cpu", "auto")
    assert (p.dtype, p.decode_dtype) in (("float32", "float16"), ("bfloat16", None))
    assert choose_placement("cpu", "mixed") == models.Placement("cpu", "float32", "float16")
    assert choose_placement("cpu", "bf16").dtype == "bfloat16"
    assert choose_placement("cpu", "fp32").dtype == "float32"
    with pytest.raises(ValueError, match="dtype"):
        choose_placement("cpu", "int3")
    with pytest.raises(ValueError, match="device"):
        choose_placement("tpu")


def test_threads(tiny_gpt2):
    import torch

    load_generator(tiny_gpt2, device="cpu", threads=1)
    assert torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="threads"):
        load_generator(tiny_gpt2, device="cpu", threads=0)
    assert models.default_threads() in (1, None)


# --- the built-in base ------------------------------------------------------------------------


def test_builtin_conversion_is_atomic(tmp_path, monkeypatch):
    """An interrupted conversion leaves no model folder; the next run converts again."""
    monkeypatch.setenv("DUNGEON_CACHE_DIR", str(tmp_path))

    def interrupted(gguf, out, steps):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        models.ensure_builtin()
    assert not models.builtin_dir().exists()
    assert not list(tmp_path.joinpath("models").iterdir())  # the partial folder is gone too
    stale = tmp_path / "models" / f"{models.BUILTIN}.partial-999999999"
    stale.mkdir()  # left by a conversion that was killed

    def converted(gguf, out, steps):
        for _ in range(3):  # tokenizer, weights, saving
            steps.next()
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"stub")

    monkeypatch.setattr(models, "_convert_gguf", converted)
    messages = []
    folder = models.ensure_builtin(progress=messages.append)
    assert any("dequantizing" in m for m in messages)
    assert folder == models.builtin_dir() and (folder / models.CACHE_STAMP).is_file()
    assert [p.name for p in tmp_path.joinpath("models").iterdir()] == [folder.name]
    monkeypatch.setattr(models, "_convert_gguf", interrupted)
    assert models.ensure_builtin() == folder  # cached: no second conversion


@pytest.mark.slow
def test_builtin_model_loads_from_the_cache_quickly():
    models.ensure_builtin()
    started = time.monotonic()
    gen = load_generator(BUILTIN)
    assert time.monotonic() - started < 20
    assert gen.context_window >= 2048
    text = gen.generate(PROMPT, seed=1)
    assert isinstance(text, str) and ">" not in text


@pytest.mark.slow
def test_builtin_cache_matches_the_gguf_weights():
    import torch
    from transformers import AutoModelForCausalLM

    gguf = models.builtin_gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    cached = AutoModelForCausalLM.from_pretrained(models.ensure_builtin(), dtype=torch.float32)
    ids = torch.tensor([[1, 504, 3458, 314, 253, 1345]])
    with torch.inference_mode():
        assert torch.allclose(direct(ids).logits, cached(ids).logits, atol=1e-4)
