"""scripts/ship_adapter.py: a LoRA run becomes the package's 16-bit adapter, or a clear refusal."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from conftest import load_script

from dungeon.generator import SamplingSettings
from dungeon.models import load_generator

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "You wake in a cellar that smells of apples.\n\n> You climb the stairs.\n"


@pytest.fixture(scope="module")
def ship_script():
    return load_script("ship_adapter")


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """The tiny model runs on one thread (see conftest.one_torch_thread)."""


def test_ship_writes_16bit_weights_that_play_like_the_original(
    ship_script, tiny_gpt2, tiny_lora, tmp_path
):
    from safetensors.torch import load_file

    dest = tmp_path / "adapters" / "adventure"
    dest.mkdir(parents=True)
    (dest / "stale.txt").write_text("from an older adapter")
    result = ship_script.ship(tiny_lora, dest, "fp16")

    assert not (dest / "stale.txt").exists()  # the folder is replaced, not merged
    assert not dest.with_name("adventure.tmp").exists()
    weights = load_file(dest / "adapter_model.safetensors")
    assert weights and all(str(t.dtype) == "torch.float16" for t in weights.values())
    assert {p.name for p in dest.iterdir()} >= {
        "adapter_model.safetensors",
        "adapter_config.json",
        "dungeon.json",
    }
    size = (dest / "adapter_model.safetensors").stat().st_size
    assert size < 0.6 * (tiny_lora / "adapter_model.safetensors").stat().st_size
    assert result["bytes"] == sum(p.stat().st_size for p in dest.iterdir())
    assert 0 < result["max_abs_rounding_error"] < 1e-3

    settings = SamplingSettings(temperature=0.0, max_new_tokens=12, min_new_tokens=12)
    original = load_generator(tiny_gpt2, adapter=tiny_lora, device="cpu", dtype="float32")
    shipped = load_generator(tiny_gpt2, adapter=dest, device="cpu", dtype="float32")
    assert shipped.generate(PROMPT, seed=0, settings=settings) == original.generate(
        PROMPT, seed=0, settings=settings
    )


def test_ship_refuses_what_is_not_a_lora_run_of_the_built_in_base(
    ship_script, tiny_lora, tmp_path, capsys
):
    # tiny_lora names the tiny GPT-2 as its base: not the built-in base play ships with.
    assert ship_script.main([str(tiny_lora), "--dest", str(tmp_path / "a")]) == 2
    assert "--base smollm2-135m" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()

    assert ship_script.main([str(tmp_path / "nowhere"), "--dest", str(tmp_path / "a")]) == 2
    assert "no run folder" in capsys.readouterr().err

    (tmp_path / "run.partial").mkdir()
    assert ship_script.main([str(tmp_path / "run"), "--dest", str(tmp_path / "a")]) == 2
    assert "--resume" in capsys.readouterr().err

    full = tmp_path / "full"
    full.mkdir()
    (full / "model.safetensors").write_bytes(b"")
    assert ship_script.main([str(full), "--dest", str(tmp_path / "a")]) == 2
    assert "not --full" in capsys.readouterr().err


def test_ship_keeps_the_old_adapter_when_the_new_one_is_too_big(
    ship_script, tiny_lora, tmp_path, monkeypatch
):
    dest = tmp_path / "adventure"
    shutil.copytree(tiny_lora, dest)
    before = sorted(p.name for p in dest.iterdir())
    monkeypatch.setattr(ship_script, "MAX_BYTES", 1000)
    with pytest.raises(ValueError, match="over the"):
        ship_script.ship(tiny_lora, dest, "bf16")
    assert sorted(p.name for p in dest.iterdir()) == before
    assert not dest.with_name("adventure.tmp").exists()


def test_the_shipped_adapter_is_16bit_small_and_made_for_the_built_in_base():
    folder = ROOT / "dungeon" / "adapters" / "adventure"
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "smollm2-135m"
    assert (folder / "adapter_model.safetensors").stat().st_size <= 20 * 2**20
    from safetensors.torch import load_file

    dtypes = {str(w.dtype) for w in load_file(folder / "adapter_model.safetensors").values()}
    assert dtypes <= {"torch.float16", "torch.bfloat16"}, dtypes
    info = json.loads((folder / "dungeon.json").read_text())
    assert (
        info["kind"] == "lora"
        and info["results"]["perplexity_after"] < info["results"]["perplexity_before"]
    )
