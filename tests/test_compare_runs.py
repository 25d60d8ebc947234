"""scripts/compare_runs.py: the recipe-search table from finished run folders."""

from __future__ import annotations

import json

import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def compare():
    return load_script("compare_runs")


def write_run(folder, *, lr, after, full=False, targets=("q_proj", "v_proj"), val=("a", "b")):
    folder.mkdir(parents=True)
    meta = {
        "training": {
            "full": full,
            "lora_r": 16,
            "lora_alpha": 32,
            "lora_targets": list(targets),
            "lr": lr,
            "peak_lr": lr,
            "steps_per_epoch": 200,
            "block_size": 256,
            "val_stories": list(val),
        },
        "results": {
            "steps": 100,
            "train_tokens": 102400,
            "wall_seconds": 600.0,
            "train_tokens_per_s": 170.6,
            "perplexity_before": 40.0,
            "perplexity_after": after,
            "best_step": 100,
        },
    }
    (folder / "dungeon.json").write_text(json.dumps(meta), encoding="utf-8")


def test_table_rows_best_and_skips(compare, tmp_path, capsys):
    write_run(tmp_path / "slow", lr=5e-4, after=30.0)
    write_run(tmp_path / "fast", lr=2e-3, after=25.0, full=True)
    (tmp_path / "unfinished").mkdir()
    code = compare.main([str(tmp_path / n) for n in ("slow", "fast", "unfinished")])
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert out[2].startswith("| fast | full | 0.002 | 100 (0.5) | 102,400 | 10 |")
    assert "| 25.00 | -37.5% |" in out[2]
    assert out[3].startswith("| slow | LoRA r16 a32 (q,v) | 0.0005 |")
    assert any(line.startswith("skipped") and "unfinished" in line for line in out)
    result = json.loads(out[-1])
    assert result["best"] == "fast"
    assert [r["run"] for r in result["runs"]] == ["fast", "slow"]


def test_warns_when_held_out_differs(compare, tmp_path, capsys):
    write_run(tmp_path / "a", lr=1e-3, after=30.0, val=("x",))
    write_run(tmp_path / "b", lr=1e-3, after=29.0, val=("x", "y"))
    assert compare.main([str(tmp_path / "a"), str(tmp_path / "b"), "--sort", "perplexity"]) == 0
    out = capsys.readouterr().out
    assert "do not compare" in out
    assert out.splitlines()[2].startswith("| b |")


def test_no_finished_run_is_an_error(compare, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert compare.main([str(tmp_path / "empty")]) == 2
    assert "no finished runs" in capsys.readouterr().err
