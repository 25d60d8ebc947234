"""``dungeon eval`` end to end: on a tiny GPT-2 (model and judge), and with the fake backend
for the flags."""

import json

import pytest
from story_factory import write_corpus

from dungeon.cli import main
from dungeon.config import PlayOptions

NEW_KEYS = ("adherence", "adherence_positive", "continuity_passed", "continuity_total")
PROBE = {
    "name": "probe",
    "genre": "horror",
    "premise": "You wake in a cellar.",
    "fact": "the door is bolted",
    "inputs": ["bolt the door", "wait", "listen"],
    "checks": [{"turn": 3, "expect": ["bolt"], "contradictions": ["the door is open"]}],
}


@pytest.fixture
def corpus(tmp_path):
    folder = write_corpus(tmp_path / "stories", ["a", "b", "c"], val=["a"])
    (folder / "validation-new.txt").write_text("b.txt\n")
    return folder


@pytest.fixture
def scripts(tmp_path):
    folder = tmp_path / "playtests"
    folder.mkdir()
    script = {"name": "cellar", "premise": "You wake in a cellar.", "inputs": ["look", '"hello']}
    (folder / "cellar.json").write_text(json.dumps(script))
    (folder / "probe.json").write_text(json.dumps(PROBE))
    return folder


def figures(capsys) -> dict:
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["measure", "value"]
    return json.loads(lines[-1])


def test_eval_on_a_tiny_gpt2_prints_a_table_a_json_line_and_a_report(
    tiny_gpt2, corpus, scripts, tmp_path, capsys, one_torch_thread
):
    import torch

    from dungeon.models import default_threads

    report = tmp_path / "turns.jsonl"
    argv = ["eval", "--model", str(tiny_gpt2), "--judge", str(tiny_gpt2), "--dtype", "float32"]
    argv += ["--stories", str(corpus), "--playtests", str(scripts), "--seed", "3"]
    torch.set_num_threads(2)  # one_torch_thread puts the old value back
    assert main([*argv, "--report", str(report)]) == 0
    assert torch.get_num_threads() == (default_threads() or 2)  # eval runs as play does
    out = figures(capsys)
    assert out["turns"] == 5 and out["crashes"] == 0 and out["seed"] == 3
    assert out["perplexity"] > 1 and out["perplexity_new"] > 1
    assert out["perplexity"] != out["perplexity_new"]  # two lists, two figures
    assert out["judge"] == str(tiny_gpt2) and out["continuity_total"] == 1
    assert isinstance(out["adherence"], float) and 0 <= out["adherence_positive"] <= 1
    turns = [json.loads(line) for line in report.read_text().splitlines()]
    assert [t["input"] for t in turns] == ["look", '"hello', "bolt the door", "wait", "listen"]
    assert [t["continuity"] for t in turns] == [None] * 4 + [out["continuity_passed"] == 1]
    assert [t["counterfactual"] for t in turns] == [
        '"hello',
        "look",
        "wait",
        "listen",
        "bolt the door",
    ]


def test_eval_flags_on_the_fake_backend(corpus, scripts, tmp_path, capsys):
    argv = ["eval", "--model", "fake", "--stories", str(corpus), "--playtests", str(scripts)]
    assert main([*argv, "--judge", "fake"]) == 0
    out = figures(capsys)
    assert all(k in out for k in NEW_KEYS) and out["turns"] == 5 and out["judge"] == "fake"
    assert main([*argv, "--no-adherence", "--continuity-only", "--no-perplexity"]) == 0
    out = figures(capsys)
    assert out["turns"] == 3 and out["continuity_total"] == 1 and "perplexity" not in out
    assert out["adherence"] is None and out["adherence_positive"] is None and "judge" not in out

    (scripts / "broken.json").write_text("{not json")
    assert main([*argv, "--no-perplexity"]) == 2
    assert "broken.json" in capsys.readouterr().err


def test_rescore_reads_a_report_and_judges_the_probes_again(scripts, tmp_path, capsys):
    report = tmp_path / "turns.jsonl"
    argv = ["eval", "--model", "fake", "--judge", "fake", "--no-perplexity"]
    assert main([*argv, "--playtests", str(scripts), "--report", str(report)]) == 0
    played = figures(capsys)
    assert main(["eval", "--rescore", str(report), "--playtests", str(scripts)]) == 0
    captured = capsys.readouterr()
    again = json.loads(captured.out.strip().splitlines()[-1])
    assert again["report"] == str(report)
    for key in ("turns", "impersonation_rate", "distinct_2", *NEW_KEYS):
        assert again[key] == played[key], key
    if not again["continuity_passed"]:
        assert "continuity: probe failed: turn 3: none of bolt" in captured.err

    report.write_text(report.read_text().splitlines()[0] + "\n{not json\n")
    assert main(["eval", "--rescore", str(report)]) == 2
    assert "report line 2" in capsys.readouterr().err


def test_eval_plays_with_play_settings_and_records_them(scripts, capsys):
    argv = ["eval", "--model", "fake", "--no-perplexity", "--playtests", str(scripts)]
    assert main(argv) == 0
    default, play = figures(capsys), PlayOptions()  # eval plays as play does by default
    assert (default["candidates"], default["picker"]) == (play.candidates, play.picker)
    assert (default["state"], default["context_budget"]) == (play.state, play.context_budget)
    flags = ["--candidates", "3", "--picker", "story", "--no-state", "--context-budget", "300"]
    assert main([*argv, *flags]) == 0
    chosen = figures(capsys)
    assert (chosen["candidates"], chosen["picker"]) == (3, "story")
    assert chosen["state"] is False and chosen["context_budget"] == 300
    assert main([*argv, "--candidates", "99"]) == 2
    assert "candidates must be between 1 and 8" in capsys.readouterr().err


def test_eval_plays_at_a_given_temperature_and_records_the_sampling(scripts, capsys):
    argv = ["eval", "--model", "fake", "--no-perplexity", "--playtests", str(scripts)]
    assert main([*argv, "--temperature", "0.5", "--top-p", "0.9"]) == 0
    sampling = figures(capsys)["sampling"]
    assert (sampling["temperature"], sampling["top_p"], sampling["top_k"]) == (0.5, 0.9, 50)
    assert main([*argv, "--temperature", "7"]) == 2
    assert "temperature must be between 0 and 5, got 7" in capsys.readouterr().err
