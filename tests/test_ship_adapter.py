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


def test_ship_writes_the_recommended_sampling_into_dungeon_json(
    ship_script, tiny_gpt2, tiny_lora, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(tiny_lora, run)
    (run / "dungeon.json").write_text(json.dumps({"version": 1, "base": "tiny"}))
    (run / "README.md").write_text("# tiny\n")
    sampling = ship_script.parse_sampling(["temperature=0.5", "top_k = 40"])
    assert sampling == {"temperature": 0.5, "top_k": 40}
    dest = tmp_path / "adventure"
    assert ship_script.ship(run, dest, "fp16", sampling)["sampling"] == sampling
    info = json.loads((dest / "dungeon.json").read_text())
    assert info == {"version": 1, "base": "tiny", "sampling": sampling}
    assert "--sampling temperature=0.5 --sampling top_k=40" in (dest / "README.md").read_text()
    gen = load_generator(tiny_gpt2, adapter=dest, device="cpu", dtype="float32")
    assert (gen.settings.temperature, gen.settings.top_k) == (0.5, 40)  # play reads it back


def test_a_bad_sampling_is_refused_before_anything_is_written(ship_script, tmp_path, capsys):
    with pytest.raises(ValueError) as refused:
        ship_script.parse_sampling(["temperature=hot", "warmth=2", "top_p", "top_k=5"])
    message = str(refused.value)
    assert "temperature takes a float value, got 'hot'" in message
    assert "no setting 'warmth'" in message and "write KEY=VALUE" in message
    with pytest.raises(ValueError, match="temperature must be between 0 and 5, got 9"):
        ship_script.parse_sampling(["temperature=9"])
    with pytest.raises(ValueError, match="min_new_tokens must be between 0 and max_new_tokens"):
        ship_script.parse_sampling(["min_new_tokens=50", "max_new_tokens=20"])
    dest = tmp_path / "a"
    assert ship_script.main([str(tmp_path), "--dest", str(dest), "--sampling", "top_p=0"]) == 2
    assert "top_p must be in (0, 1], got 0.0" in capsys.readouterr().err
    assert not dest.exists()
