"""scripts/gpu_check.sh --dry-run: every step of the GPU check, on the CPU with the tiny GPT-2.

The real run needs a CUDA GPU; the dry run proves the steps still fit together (the flags of
finetune.py and bench_finetune.py, the fine-tuned folder play loads, the report's fields), so
a lent GPU's few minutes are not spent finding a renamed option.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def run_check(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(
        ["bash", str(SCRIPT), *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )


def test_dry_run_prints_one_json_line_with_mfu_and_tokens_per_s(tmp_path):
    done = run_check("--dry-run", "--python", sys.executable, "--out", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout  # the report is the only thing on stdout
    report = json.loads(lines[0])

    assert report["dry_run"] is True and report["device"].startswith("CPU")
    assert report["tokens_per_s"] > 0
    ft = report["finetune"]
    assert ft["steps"] == 4 and ft["tokens_per_step"] == 2 * 64 and ft["precision"] == "bf16"
    assert ft["eval_loss_before"] > 0 and ft["eval_loss_after"] > 0
    # MFU = 6 x parameters x tokens/s / peak (a nominal 1 TFLOP/s in the dry run).
    expected = 6 * ft["parameters"] * ft["tokens_per_s"] / (report["peak_tflops"] * 1e12)
    assert report["mfu"] == pytest.approx(expected, rel=0.01, abs=1e-4)
    assert "nominal" in report["peak_source"]
    assert report["bench"]["bare_loop"]["tokens_per_s"] > 0
    assert report["play"]["turns"] == 3

    assert (tmp_path / "full" / "model.safetensors").is_file()  # full fine-tune, not an adapter
    assert (tmp_path / "play.log").read_text().count("\n> You") == 3
    for step in ("finetune", "bench", "play"):
        assert f"gpu_check: {step} done" in done.stderr


def test_without_a_gpu_the_real_run_says_so(tmp_path):
    if "CUDA_VISIBLE_DEVICES" in os.environ and os.environ["CUDA_VISIBLE_DEVICES"] != "":
        pytest.skip("a GPU may be visible")
    env_has_gpu = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    if env_has_gpu == "True":
        pytest.skip("this machine has a GPU: the real run would start")
    done = run_check("--python", sys.executable, "--out", str(tmp_path), timeout=120)
    assert done.returncode == 2
    assert "no CUDA GPU here; run with --dry-run" in done.stderr
    assert done.stdout == ""


def test_bad_options_are_refused(tmp_path):
    done = run_check("--dry-run", "--frobnicate", timeout=30)
    assert done.returncode == 2 and "unknown option --frobnicate" in done.stderr
    done = run_check("--dry-run", "--python", str(tmp_path / "nope"), timeout=30)
    assert done.returncode == 2 and "cannot import dungeon" in done.stderr
