"""Fine-tuning (dungeon/training/, run by scripts/finetune.py and ``dungeon finetune``) on a
tiny GPT-2: LoRA and full runs, resume after SIGKILL, two CPU processes, a user's plain-text
corpus from start to play, and every kind of bad input.

Runs happen in this process (``finetune.main(argv)``) where they can, to keep the suite fast;
the SIGKILL, torchrun and exit-code tests start real processes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from story_factory import make_story, transcript, write_corpus

from dungeon.format import FormatSpec, render_story_file

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "finetune.py"


@pytest.fixture(scope="module")
def finetune():
    from dungeon.training import finetune

    return finetune


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("finetune")


@pytest.fixture(scope="module")
def hf_cache(workdir):
    """Keep the datasets cache of these runs out of the user's; subprocesses get it too."""
    import datasets

    cache = workdir / "hf-datasets"
    old = datasets.config.HF_DATASETS_CACHE
    datasets.config.HF_DATASETS_CACHE = cache
    yield cache
    datasets.config.HF_DATASETS_CACHE = old


@pytest.fixture(scope="module")
def corpus(workdir):
    names = [f"tale-{i}" for i in range(6)]
    return write_corpus(workdir / "stories", names, val=["tale-5"])


@contextlib.contextmanager
def fresh_accelerate():
    """accelerate's process-wide state reset around an in-process run.

    accelerate offers no public reset: this is the one its own AccelerateTestCase does in
    tearDown (accelerate.test_utils.testing), so a later version will keep it working."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    try:
        yield
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def run(finetune, argv: list[str]) -> int:
    """One in-process run of the fine-tuning module."""
    with fresh_accelerate():
        return finetune.main([str(a) for a in argv])


def cli(argv: list) -> int:
    """``dungeon ARGV`` in this process."""
    from dungeon.cli import main

    with fresh_accelerate():
        return main([str(a) for a in argv])


def common(corpus, tiny_gpt2) -> list[str]:
    return [
        "--data", corpus, "--base", tiny_gpt2, "--block-size", 64, "--batch-size", 2,
        "--max-steps", 6, "--eval-every", 3, "--save-every", 2, "--max-eval-samples", 2,
        "--log-every", 2, "--sample-tokens", 8, "--precision", "fp32", "--seed", 7,
    ]  # fmt: skip


def subprocess_env(hf_cache) -> dict:
    env = dict(os.environ, HF_DATASETS_CACHE=str(hf_cache), PYTHONPATH=str(ROOT))
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


@pytest.fixture(scope="module")
def lora_run(finetune, workdir, corpus, tiny_gpt2, hf_cache):
    """An uninterrupted LoRA run: the smoke test, and the reference for resumed runs."""
    out = workdir / "runs" / "lora"
    assert run(finetune, [*common(corpus, tiny_gpt2), "--output", out]) == 0
    return out


def results(folder: Path) -> dict:
    return json.loads((folder / "dungeon.json").read_text())["results"]


def generate(folder: Path) -> str:
    from dungeon.generator import SamplingSettings
    from dungeon.models import load_generator

    gen = load_generator(folder, settings=SamplingSettings(max_new_tokens=4, min_new_tokens=1))
    return gen.generate("You wake in a cellar.\n\n> You look around.\n", seed=1)


# --- smoke runs -------------------------------------------------------------------------------


def test_lora_run_writes_a_model_folder_that_play_loads(lora_run, tiny_gpt2):
    names = {p.name for p in lora_run.iterdir()}
    expected = {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json",
                "dungeon.json", "README.md", "loss.png"}  # fmt: skip
    if importlib.util.find_spec("tensorboard") is not None:
        expected.add("logs")  # TensorBoard logs only where tensorboard is installed
    assert expected <= names
    assert not {"checkpoints", "best", "settings.json"} & names
    assert not lora_run.with_name("lora.partial").exists()

    adapter = json.loads((lora_run / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_gpt2)  # the name the user gave
    assert adapter["fan_in_fan_out"] is True  # GPT-2's Conv1D layers
    assert set(adapter["target_modules"]) == {"c_attn", "c_proj", "c_fc"}

    meta = json.loads((lora_run / "dungeon.json").read_text())
    assert meta["format"] == FormatSpec().to_dict()
    assert meta["base"] == str(tiny_gpt2) and meta["kind"] == "lora"
    assert meta["training"]["block_size"] == 64 and meta["training"]["seed"] == 7
    assert meta["training"]["val_stories"] == ["tale-5.txt"]
    r = meta["results"]
    assert r["steps"] == 6 and [e["step"] for e in r["evals"]] == [0, 3, 6]
    assert r["perplexity_before"] > 1 and r["perplexity_after"] > 1
    assert r["train_tokens"] == 6 * 2 * 64 and r["train_tokens_per_s"] > 0
    assert r["samples"] and all(isinstance(s["sample"], str) for s in r["samples"])

    card = (lora_run / "README.md").read_text()
    assert "perplexity" in card and f"{r['perplexity_before']:.2f}" in card
    if importlib.util.find_spec("tensorboard") is not None:
        assert list((lora_run / "logs").rglob("events.out.tfevents*"))
    assert isinstance(generate(lora_run), str)


def test_full_run_with_gradient_checkpointing(finetune, workdir, corpus, tiny_gpt2, hf_cache):
    out = workdir / "runs" / "full"
    argv = [*common(corpus, tiny_gpt2), "--output", out, "--full", "--gradient-checkpointing",
            "--max-steps", 2, "--eval-every", 0, "--save-every", 0, "--report-to", "none"]  # fmt: skip
    assert run(finetune, argv) == 0
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert json.loads((out / "config.json").read_text())["use_cache"] is True
    meta = json.loads((out / "dungeon.json").read_text())
    assert meta["kind"] == "full" and meta["results"]["steps"] == 2
    assert isinstance(generate(out), str)


def test_from_scratch_without_held_out_stories(finetune, workdir, corpus, tiny_gpt2, hf_cache):
    out = workdir / "runs" / "scratch"
    argv = [*common(corpus, tiny_gpt2), "--output", out, "--full", "--from-scratch",
            "--max-steps", 2, "--save-every", 0, "--report-to", "none",
            "--val-list", "none", "--val-fraction", 0]  # fmt: skip
    assert run(finetune, argv) == 0
    meta = json.loads((out / "dungeon.json").read_text())
    assert meta["training"]["from_scratch"] is True and meta["training"]["val_stories"] == []
    r = meta["results"]
    assert r["evals"] == [] and r["exported"] == "last" and r["perplexity_after"] is None
    assert (out / "model.safetensors").is_file()
    assert "random init" in (out / "README.md").read_text()


def test_the_commands_and_corpus_readers_import_without_torch_or_datasets():
    """`dungeon --help`, `dungeon finetune --help` and check-corpus start without the heavy
    libraries; only the run itself imports them."""
    code = (
        "import sys, dungeon.cli, dungeon.training, dungeon.training.command, "
        "dungeon.training.settings, dungeon.corpus.loading, dungeon.corpus.readers, "
        "dungeon.corpus.tables, dungeon.corpus.check; "
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'accelerate') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


# --- a user's plain text, from `dungeon finetune` to `dungeon play` -----------------------------


def test_dungeon_finetune_trains_on_a_plain_text_file_and_play_loads_it(
    workdir, tiny_gpt2, hf_cache, capsys
):
    big = workdir / "adventures.txt"  # one big file, AI Dungeon-style transcripts
    big.write_text("\n<|endoftext|>\n".join(transcript(f"hero-{i}", turns=6) for i in range(8)))
    out = workdir / "runs" / "plain"
    argv = ["finetune", "--data", big, "--base", tiny_gpt2, "--output", out, "--block-size", 64,
            "--batch-size", 2, "--max-steps", 2, "--eval-every", 0, "--save-every", 0,
            "--sample-tokens", 0, "--report-to", "none", "--precision", "fp32"]  # fmt: skip
    assert cli(argv) == 0
    err = capsys.readouterr().err
    assert "text file" in err and "action line(s) rewritten as play sends them" in err
    meta = json.loads((out / "dungeon.json").read_text())
    held = meta["training"]["val_stories"]
    assert len(held) == 1 and held[0].startswith("adventures.txt#")  # 5% of 8: say which
    assert f"held out (1): {held[0]}" in err
    listed = (out / "held-out.txt").read_text().splitlines()
    assert listed[-1] == held[0] and listed[0].startswith("#")
    assert meta["training"]["command"][:2] == ["dungeon", "finetune"]
    assert "dungeon finetune --data" in (out / "README.md").read_text()

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run(
        [sys.executable, "-m", "dungeon", "play", "--model", str(out), "--seed", "1",
         "--max-new-tokens", "4", "--no-color"],
        input="look\n/quit\n", capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "\n> You look around.\n" in done.stdout


def test_dungeon_finetune_reports_bad_sources_all_at_once(workdir, tiny_gpt2, capsys, hf_cache):
    folder = workdir / "bad-plain"
    folder.mkdir(exist_ok=True)
    (folder / "ok.txt").write_text(transcript("ok"))
    (folder / "empty.md").write_text("")
    (folder / "blob.txt").write_bytes(b"\0\1\2binary")
    (folder / "cp1252.txt").write_bytes(b"You wake.\n\n> look\nA \x93quote\x94.\n")
    argv = ["finetune", "--data", folder, "--separator", "@@@", "--base", tiny_gpt2,
            "--output", workdir / "runs" / "never"]  # fmt: skip
    assert cli(argv) == 2
    problems = errors(capsys)
    assert problems == [
        f"{folder / 'blob.txt'}: a binary file, not text (a NUL byte in its first bytes)",
        f"{folder / 'cp1252.txt'}:4: not UTF-8 text (byte 0x93 at offset 20); save it as UTF-8, "
        "or pass --encoding (e.g. cp1252)",
        f"{folder / 'empty.md'}: empty file",
        f"--separator '@@@' occurs nowhere in {folder}",
    ]
    assert not (workdir / "runs" / "never.partial").exists()


# --- checkpoints and resume -------------------------------------------------------------------


def wait_for(path: Path, proc=None, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (code {proc.returncode}) before {path} appeared")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.05)


def assert_same_run(a: Path, b: Path) -> None:
    ra, rb = results(a), results(b)
    assert ra["steps"] == rb["steps"] == 6
    assert rb["final_train_loss"] == pytest.approx(ra["final_train_loss"], abs=1e-6)
    assert rb["final_eval_loss"] == pytest.approx(ra["final_eval_loss"], abs=1e-6)
    assert [h["train_loss"] for h in rb["history"]] == pytest.approx(
        [h["train_loss"] for h in ra["history"]], abs=1e-6
    )


def test_resume_after_sigkill_matches_an_uninterrupted_run(
    finetune, workdir, corpus, tiny_gpt2, hf_cache, lora_run
):
    out = workdir / "runs" / "killed"
    argv = [*common(corpus, tiny_gpt2), "--output", out]
    proc = subprocess.Popen(
        [sys.executable, SCRIPT, *map(str, argv), "--slow-down", "0.3"],
        env=subprocess_env(hf_cache),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(out.with_name("killed.partial") / "checkpoints" / "step-0000002", proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, err.decode()[-2000:]
    assert not out.exists()  # no half-written model folder

    assert run(finetune, [*argv, "--resume"]) == 0
    assert_same_run(lora_run, out)


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_finishes_the_same(
    finetune, workdir, corpus, tiny_gpt2, hf_cache, lora_run
):
    out = workdir / "runs" / "stopped"
    argv = [*common(corpus, tiny_gpt2), "--output", out]
    first = out.with_name("stopped.partial") / "checkpoints" / "step-0000002"

    def stop_when_saved():
        wait_for(first)
        os.kill(os.getpid(), signal.SIGTERM)

    killer = threading.Thread(target=stop_when_saved, daemon=True)
    killer.start()
    assert run(finetune, [*argv, "--slow-down", "0.3"]) == 128 + signal.SIGTERM
    killer.join()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers given back
    assert not out.exists()
    assert run(finetune, [*argv, "--resume"]) == 0
    assert_same_run(lora_run, out)


# --- data-parallel ----------------------------------------------------------------------------


def test_two_cpu_processes_end_with_the_same_weights(workdir, corpus, tiny_gpt2, hf_cache):
    out = workdir / "runs" / "ddp"
    argv = [*common(corpus, tiny_gpt2), "--output", out, "--max-steps", 3, "--save-every", 0,
            "--eval-every", 0, "--sample-tokens", 0, "--report-to", "none"]  # fmt: skip
    env = subprocess_env(hf_cache)
    env["OMP_NUM_THREADS"] = "1"
    # `torchrun -m dungeon finetune`: the installed command under a launcher (the script is the
    # same code; the SIGKILL test runs it)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", "29517", "-m", "dungeon", "finetune", *map(str, argv)]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    failures = [line for line in done.stderr.splitlines() if "Error" in line or "error:" in line]
    assert done.returncode == 0, "\n".join(failures[:20]) + done.stderr[-2000:]
    r = results(out)
    meta = json.loads((out / "dungeon.json").read_text())
    assert (
        meta["training"]["world_size"] == 2 and "MULTI_CPU" in meta["training"]["distributed_type"]
    )
    assert len(r["rank_weight_sha256"]) == 2 and r["ranks_in_sync"] is True
    assert r["train_tokens"] == 3 * 2 * 64 * 2


# --- bad input: one line each, all at once, exit code 2, before any training ------------------


def errors(capsys) -> list[str]:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("finetune: error: ")]
    return [line.removeprefix("finetune: error: ") for line in lines]


def test_every_problem_is_listed_at_once(finetune, workdir, capsys, hf_cache):
    empty = workdir / "empty"
    empty.mkdir(exist_ok=True)
    argv = ["--data", empty, "--base", workdir / "no-such-model", "--from-scratch", "--resume",
            "--overwrite", "--output", workdir / "runs" / "never"]  # fmt: skip
    assert run(finetune, argv) == 2
    problems = errors(capsys)
    assert any("--from-scratch" in p and "--full" in p for p in problems)
    assert any("--resume" in p and "--overwrite" in p for p in problems)
    assert any("no story files" in p for p in problems)
    assert any("base model" in p and "not found" in p for p in problems)
    assert not (workdir / "runs" / "never.partial").exists()


def test_story_problems_name_file_and_line(finetune, workdir, tiny_gpt2, capsys, hf_cache):
    folder = write_corpus(workdir / "bad-stories", ["ok-1", "ok-2"])
    (folder / "broken.txt").write_text("title: t\ngenre: g\ntags: x\n---\nA premise.\n\n> \n")
    (folder / "latin1.txt").write_bytes(b"title: t\ngenre: g\ntags: x\n---\nCaf\xe9 au lait.\n")
    argv = ["--data", folder, "--base", tiny_gpt2, "--output", workdir / "runs" / "never"]
    assert run(finetune, argv) == 2
    problems = errors(capsys)
    assert any(p.startswith(f"{folder / 'broken.txt'}:7: ") for p in problems)
    assert any(p.startswith(f"{folder / 'latin1.txt'}:5: not UTF-8") for p in problems)


def test_corpus_smaller_than_one_block(finetune, workdir, tiny_gpt2, capsys, hf_cache):
    folder = workdir / "one-story"
    folder.mkdir(exist_ok=True)
    (folder / "short.txt").write_text(render_story_file(make_story("short", turns=1)))
    argv = ["--data", folder, "--base", tiny_gpt2, "--block-size", 512, "--val-fraction", 0,
            "--output", workdir / "runs" / "never"]  # fmt: skip
    assert run(finetune, argv) == 2
    [problem] = errors(capsys)
    assert "less than one block of 512" in problem


def test_existing_output_is_refused_unless_overwrite(finetune, workdir, corpus, capsys, hf_cache):
    out = workdir / "runs" / "taken"
    out.mkdir(parents=True, exist_ok=True)
    missing = workdir / "no-model"
    assert run(finetune, ["--data", corpus, "--base", missing, "--output", out]) == 2
    assert any("taken exists: pass --overwrite" in p for p in errors(capsys))
    assert run(finetune, ["--data", corpus, "--base", missing, "--output", out, "--overwrite"]) == 2
    assert not any("exists" in p for p in errors(capsys))  # only the missing base is left
    assert out.is_dir()  # nothing was touched before the checks passed


def test_resume_refuses_what_it_cannot_continue(finetune, workdir, corpus, tiny_gpt2, capsys, hf_cache):  # fmt: skip
    out = workdir / "runs" / "fresh"
    assert run(finetune, [*common(corpus, tiny_gpt2), "--output", out, "--resume"]) == 2
    assert any("nothing to resume" in p for p in errors(capsys))
    # A fake unfinished run whose settings differ from the command line.
    partial = out.with_name("fresh.partial")
    (partial / "checkpoints" / "step-0000002").mkdir(parents=True)
    (partial / "checkpoints" / "step-0000002" / "trainer_state.json").write_text("{}")
    record = {"settings": {"lr": 0.001, "block_size": 64}, "corpus_sha256": "0" * 64}
    (partial / "settings.json").write_text(json.dumps(record))
    assert run(finetune, [*common(corpus, tiny_gpt2), "--output", out, "--resume"]) == 2
    problems = errors(capsys)
    assert any("--lr None (was 0.001)" in p for p in problems)
    assert any("changed since the run" in p for p in problems)


@pytest.mark.slow
def test_the_command_line_exits_2_with_one_line_per_problem(workdir, hf_cache):
    cmd = [sys.executable, SCRIPT, "--data", workdir / "nowhere", "--base", workdir / "nothing",
           "--block-size", 0, "--output", workdir / "runs" / "never"]  # fmt: skip
    done = subprocess.run(
        [str(c) for c in cmd], env=subprocess_env(hf_cache), capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("finetune: error: ")]
    assert len(lines) == 3, done.stderr
