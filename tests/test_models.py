"""Model loading: local folders, adapters, safety refusals, the hub offline, the built-in base,
torch's thread count, and how the command line reports model errors."""

from __future__ import annotations

import io
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dungeon import builtin_model, models
from dungeon.builtin_model import BUILTIN_MODEL
from dungeon.errors import ModelNotFoundError, UnsafeModelError
from dungeon.format import FormatSpec
from dungeon.generator import SamplingSettings
from dungeon.models import choose_placement, load_generator, resolve_base

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "You wake in a cellar that smells of apples.\n\n> You climb the stairs.\n"


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs the tiny model on one thread (see conftest.one_torch_thread)."""


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_the_model_modules_and_the_command_line_import_without_torch():
    """The CLI catches model errors by type, so the modules that define them must stay light."""
    code = (
        "import sys, dungeon, dungeon.models, dungeon.builtin_model, dungeon.errors, dungeon.cli; "
        "heavy = [m for m in ('torch', 'transformers', 'peft') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_one_name_for_the_builtin_model():
    from dungeon.config import DEFAULT_MODEL, PlayOptions

    assert BUILTIN_MODEL == "smollm2-135m"  # the name players type
    assert DEFAULT_MODEL == PlayOptions().model == BUILTIN_MODEL
    assert models.ModelNotFoundError is ModelNotFoundError  # still importable from models


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
    assert BUILTIN_MODEL in message and "local model folder" in message
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
    path = builtin_model.builtin_gguf_path()
    assert path.name == builtin_model.BUILTIN_GGUF and path.stat().st_size > 50_000_000
    assert builtin_model.BUILTIN_PACKAGE not in sys.modules


# --- local folders and safety -----------------------------------------------------------------


def test_loads_a_local_folder(tiny_gpt2):
    from safetensors.torch import load_file

    gen = load_generator(str(tiny_gpt2), device="cpu", dtype="float32")
    assert gen.name == str(tiny_gpt2)
    loaded = gen.model.state_dict()
    for key, weight in load_file(tiny_gpt2 / "model.safetensors").items():
        assert loaded[key].equal(weight), key  # the folder's weights, not a fresh init
    settings = SamplingSettings(max_new_tokens=8, min_new_tokens=8)
    text = gen.generate(PROMPT, seed=1, settings=settings)
    assert gen.last_stats.new_tokens == 8 and text.strip()
    assert gen.generate(PROMPT, seed=1, settings=settings) == text


@pytest.mark.parametrize("shards", [False, True])
def test_a_local_folder_read_one_tensor_at_a_time_has_from_pretrained_s_weights(
    tiny_gpt2, tmp_path, shards
):
    import torch
    from transformers import AutoModelForCausalLM

    folder = tiny_gpt2
    if shards:  # model-0000x-of-0000y.safetensors and their index
        folder = tmp_path / "sharded"
        AutoModelForCausalLM.from_pretrained(tiny_gpt2).save_pretrained(
            folder, max_shard_size="100KB"
        )
        assert (folder / "model.safetensors.index.json").is_file()
    read = models._read_local_weights(folder, torch.bfloat16)
    if read is None:
        pytest.skip("this transformers or safetensors reads a folder with from_pretrained only")
    plain = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    mine, theirs = read.state_dict(), plain.state_dict()
    assert sorted(mine) == sorted(theirs)
    for key, weight in theirs.items():
        assert mine[key].dtype == weight.dtype and mine[key].equal(weight), key
    assert read.lm_head.weight.data_ptr() == read.transformer.wte.weight.data_ptr()  # still tied
    assert read.generation_config.eos_token_id == plain.generation_config.eos_token_id


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
    original = load_generator(tiny_gpt2, device="cpu", dtype="float32")
    assert gen.generate(PROMPT, seed=1) == original.generate(PROMPT, seed=1)


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


def test_threads_are_set_only_when_asked(tiny_gpt2):
    """torch's thread count is global to the process: an embedding program keeps its own."""
    import torch

    torch.set_num_threads(2)  # the autouse fixture puts the old value back
    load_generator(tiny_gpt2, device="cpu")
    assert torch.get_num_threads() == 2
    load_generator(tiny_gpt2, device="cpu", threads=1)
    assert torch.get_num_threads() == 1
    with pytest.raises(ValueError, match="threads"):
        load_generator(tiny_gpt2, device="cpu", threads=0)
    assert torch.get_num_threads() == 1


def test_default_threads_is_one_on_small_machines(monkeypatch):
    for cores, expected in [(1, 1), (2, 1), (4, None), (64, None), (None, 1)]:
        monkeypatch.setattr(models.os, "cpu_count", lambda cores=cores: cores)
        assert models.default_threads() == expected, cores


def test_dungeon_play_picks_the_default_threads(tiny_gpt2, monkeypatch, capsys):
    import torch

    from dungeon.cli import main

    torch.set_num_threads(2)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # piped play, no input
    argv = ["play", "--model", str(tiny_gpt2), "--scenario", "fantasy", "--seed", "1"]
    assert main([*argv, "--threads", "3"]) == 0
    assert torch.get_num_threads() == 3
    assert main(argv) == 0
    assert torch.get_num_threads() == (models.default_threads() or 3)


# --- the command line reports model errors by type ---------------------------------------------


def test_cli_reports_a_missing_model_in_one_line(tmp_path, monkeypatch, capsys):
    from dungeon.cli import main

    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    argv = ["play", "--model", str(tmp_path / "nowhere"), "--scenario", "fantasy", "--seed", "1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dungeon: no model folder at") and "Traceback" not in err


def test_cli_catches_the_error_classes_not_their_names(monkeypatch):
    from dungeon import cli

    class UnsafeModelError(Exception):  # the same name, another class: a bug, not a message
        pass

    def play(args):
        raise UnsafeModelError("impostor")

    monkeypatch.setattr(cli, "cmd_play", play)
    with pytest.raises(UnsafeModelError, match="impostor"):
        cli.main(["play", "--model", "fake"])


# --- the built-in base ------------------------------------------------------------------------


def test_builtin_conversion_is_atomic(tmp_path, monkeypatch):
    """An interrupted conversion leaves no model folder; the next run converts again."""
    monkeypatch.setenv("DUNGEON_CACHE_DIR", str(tmp_path))

    def interrupted(gguf, out, steps):
        (out / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(builtin_model, "_convert_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        builtin_model.ensure_builtin()
    assert not builtin_model.builtin_dir().exists()
    assert not list(tmp_path.joinpath("models").iterdir())  # the partial folder is gone too
    stale = tmp_path / "models" / f"{BUILTIN_MODEL}.partial-999999999"
    stale.mkdir()  # left by a conversion that was killed

    def converted(gguf, out, steps):
        for _ in range(3):  # tokenizer, weights, saving
            steps.next()
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"stub")

    monkeypatch.setattr(builtin_model, "_convert_gguf", converted)
    messages = []
    folder = builtin_model.ensure_builtin(progress=messages.append)
    assert any("dequantizing" in m for m in messages)
    assert folder == builtin_model.builtin_dir() and (folder / builtin_model.CACHE_STAMP).is_file()
    assert [p.name for p in tmp_path.joinpath("models").iterdir()] == [folder.name]
    monkeypatch.setattr(builtin_model, "_convert_gguf", interrupted)
    assert builtin_model.ensure_builtin() == folder  # cached: no second conversion


def test_a_cache_from_another_version_is_rebuilt(tmp_path, monkeypatch):
    """A cache written before the 4-bit weights were cached (version 1) is converted again,
    not trusted: the new conversion writes them."""
    monkeypatch.setenv("DUNGEON_CACHE_DIR", str(tmp_path))
    old = builtin_model.builtin_dir()
    old.mkdir(parents=True)
    (old / "config.json").write_text("{}")
    (old / "model.safetensors").write_bytes(b"old")
    stamp = {"sha256": builtin_model.BUILTIN_SHA256, "version": 1}
    (old / builtin_model.CACHE_STAMP).write_text(json.dumps(stamp))

    def converted(gguf, out, steps):
        (out / "config.json").write_text("{}")
        (out / "model.safetensors").write_bytes(b"new")
        (out / builtin_model.INT4_FILE).write_bytes(b"int4")

    monkeypatch.setattr(builtin_model, "_convert_gguf", converted)
    folder = builtin_model.ensure_builtin(progress=lambda message: None)
    assert (folder / "model.safetensors").read_bytes() == b"new"
    assert (folder / builtin_model.INT4_FILE).is_file()
    stamp = json.loads((folder / builtin_model.CACHE_STAMP).read_text())
    assert stamp["version"] == builtin_model.BUILTIN_CACHE_VERSION > 1


@pytest.mark.slow
def test_builtin_model_loads_from_the_cache_quickly():
    builtin_model.ensure_builtin()
    started = time.monotonic()
    gen = load_generator(BUILTIN_MODEL)
    assert time.monotonic() - started < 20
    assert gen.context_window >= 2048
    text = gen.generate(PROMPT, seed=1)
    assert text.strip() and ">" not in text
    assert gen.generate(PROMPT, seed=1) == text


@pytest.mark.slow
def test_builtin_cache_matches_the_gguf_weights():
    import torch
    from transformers import AutoModelForCausalLM

    gguf = builtin_model.builtin_gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    cached = AutoModelForCausalLM.from_pretrained(
        builtin_model.ensure_builtin(), dtype=torch.float32
    )
    ids = torch.tensor([[1, 504, 3458, 314, 253, 1345]])
    with torch.inference_mode():
        assert torch.allclose(direct(ids).logits, cached(ids).logits, atol=1e-4)


# VmHWM, not ru_maxrss: a child's ru_maxrss starts from its parent's resident memory at fork,
# and pytest's process may hold a model of its own.
PEAK_RSS_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
from dungeon.models import load_generator
from dungeon.startup import shipped_adapter
gen = load_generator("smollm2-135m", adapter=shipped_adapter("smollm2-135m"), threads=1)
prompt = "The rain has not stopped for three days. " * 110 + "\\n\\n> You open the door.\\n"
gen.generate(prompt, seed=0)
status = open("/proc/self/status").read()
print(int(status.split("VmHWM:")[1].split()[0]) // 1024)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads Linux's VmHWM")
def test_playing_the_builtin_model_stays_under_1_gb():
    """Issue 11's memory target: load (the shipped adapter on the 4-bit weights) and a turn of
    about 1,000 tokens of context, in a process of its own, peak resident memory under 1 GB."""
    builtin_model.ensure_builtin()
    done = subprocess.run(
        [sys.executable, "-c", PEAK_RSS_SCRIPT, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    peak_mb = int(done.stdout.split()[-1])
    assert peak_mb < 1000, f"peak RSS {peak_mb} MB"


# --- a model's recommended sampling (dungeon.json's "sampling") -------------------------------


def test_recommended_sampling_is_checked_key_by_key():
    good, problems = models.check_sampling(
        {"temperature": 0.5, "top_k": "many", "top_p": 2.0, "warmth": 1, "ban_marker": True}
    )
    assert good == {"temperature": 0.5, "ban_marker": True}
    assert [p.split()[0] for p in problems] == ["top_k", "top_p", "no"]
    assert "warmth" in problems[2]
    assert models.check_sampling({"min_new_tokens": 90})[0] == {}  # over max_new_tokens (80)
    assert models.check_sampling([0.5])[0] == {}


def test_the_adapter_s_recommendation_wins_and_a_bad_key_warns_and_is_ignored(
    tiny_gpt2, tiny_lora, tmp_path, caplog
):
    fmt = FormatSpec().to_dict()
    base = copy_model(tiny_gpt2, tmp_path / "base")
    (base / "dungeon.json").write_text(
        json.dumps({"format": fmt, "sampling": {"temperature": 0.6, "top_p": 0.85}})
    )
    adapter = copy_model(tiny_lora, tmp_path / "adapter")
    (adapter / "dungeon.json").write_text(
        json.dumps({"format": fmt, "sampling": {"temperature": 0.5, "top_k": -3}})
    )
    with caplog.at_level(logging.WARNING, logger="dungeon.models"):
        gen = load_generator(base, adapter=adapter, device="cpu", dtype="float32")
    assert gen.recommended_sampling == {"temperature": 0.5, "top_p": 0.85}
    assert (gen.settings.temperature, gen.settings.top_p, gen.settings.top_k) == (0.5, 0.85, 50)
    [warning] = [r.getMessage() for r in caplog.records]
    assert str(adapter / "dungeon.json") in warning and "top_k" in warning
    assert "ignored" in warning
