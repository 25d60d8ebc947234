"""dungeon eval: the per-turn measures, and a smoke run on a tiny model."""

import json

import pytest

from dungeon.evaluate import (
    Playtest,
    distinct_2,
    impersonates,
    incomplete,
    load_playtests,
    perplexity,
    run_playtests,
    second_person_slip,
)
from dungeon.generator import FakeGenerator


def test_measures():
    assert impersonates("The door opens. You decide to go inside.")
    assert impersonates('He waits. You say "Fine, I will go."')
    assert not impersonates("The guard says nothing and looks away.")
    assert impersonates("The hall is dark.> You light the lamp.")
    assert not impersonates("The sign reads -> EXIT. You follow it.")
    assert incomplete("The guard says nothing and") and not incomplete('He says "Go."')
    assert second_person_slip("I walk to the door. My hands shake.")
    assert not second_person_slip('You hear him say "I am here, my friend."')
    assert distinct_2("the cat the cat the cat") < distinct_2("the cat sat on a warm mat")


def test_shipped_playtests_cover_the_genres():
    tests = load_playtests()
    assert len(tests) >= 10
    assert len({t.genre for t in tests}) >= 10
    assert all(len(t.inputs) == 15 and t.premise for t in tests)


def test_playtest_counts_problems_and_crashes():
    script = ["The door creaks. You decide to run.", "", "Half a sente", "A cat sleeps."]
    tests = [Playtest("t", "g", "You are in a hall.", ["look", "wait", "go on", "sit"])]
    result = run_playtests(FakeGenerator(script), tests, seed=1)
    s = result.summary()
    assert s["turns"] == 4 and s["crashes"] == 0
    assert s["impersonation_rate"] > 0 and s["incomplete_rate"] > 0

    class Broken(FakeGenerator):
        def stream(self, prompt, **kw):
            raise RuntimeError("boom")
            yield ""

    crashed = run_playtests(Broken(), tests)
    assert crashed.summary()["crashes"] == 4 and "boom" in crashed.crashes[0]


def test_eval_smoke_on_a_tiny_gpt2(tiny_gpt2, tmp_path):
    pytest.importorskip("torch")
    from dungeon.models import load_generator

    gen = load_generator(str(tiny_gpt2), dtype="float32")
    gen.settings = gen.settings.with_value("max_new_tokens", "12")
    import math

    import torch

    texts = ["You are in a hall.\n\n> You look around.\nIt is dark."]
    ids = gen.tokenizer(texts[0] + gen.tokenizer.eos_token, return_tensors="pt").input_ids
    with torch.inference_mode():
        expected = math.exp(float(gen.model(ids, labels=ids).loss))
    assert perplexity(gen.model, gen.tokenizer, texts, window=64) == pytest.approx(
        expected, rel=1e-4
    )
    windowed = perplexity(gen.model, gen.tokenizer, texts, window=8, stride=4)
    assert math.isfinite(windowed) and windowed > 1
    tests = load_playtests()[:1]
    tests[0] = Playtest(tests[0].name, tests[0].genre, tests[0].premise, tests[0].inputs[:3])
    a = run_playtests(gen, tests, seed=5).summary()
    b = run_playtests(gen, tests, seed=5).summary()
    a.pop("median_turn_s"), b.pop("median_turn_s")
    assert a == b and a["turns"] == 3 and a["crashes"] == 0
    json.dumps(a)


def test_eval_command_on_a_tiny_gpt2_prints_a_table_a_json_line_and_a_report(
    tiny_gpt2, tmp_path, capsys, one_torch_thread
):
    from dungeon.cli import main

    folder = tmp_path / "playtests"
    folder.mkdir()
    script = {"name": "cellar", "premise": "You wake in a cellar.", "inputs": ["look", '"hello']}
    (folder / "cellar.json").write_text(json.dumps(script))
    report = tmp_path / "turns.jsonl"
    argv = ["eval", "--model", str(tiny_gpt2), "--dtype", "float32", "--playtests", str(folder)]
    assert main([*argv, "--seed", "3", "--report", str(report)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["measure", "value"]
    figures = json.loads(lines[-1])
    assert figures["turns"] == 2 and figures["crashes"] == 0
    assert figures["perplexity"] > 1 and figures["seed"] == 3
    turns = [json.loads(line) for line in report.read_text().splitlines()]
    assert [t["input"] for t in turns] == ["look", '"hello']

    (folder / "broken.json").write_text("{not json")
    assert main([*argv, "--no-perplexity"]) == 2
    assert "broken.json" in capsys.readouterr().err


def test_rescore_of_a_report_gives_the_figures_of_the_run(tmp_path, capsys):
    from dataclasses import asdict

    from dungeon.cli import main
    from dungeon.evaluate import rescore

    tests = load_playtests()[:2]
    result = run_playtests(FakeGenerator(), tests, seed=2)
    lines = [json.dumps(asdict(t)) for t in result.turns]
    assert rescore(lines).summary() == result.summary()
    report = tmp_path / "turns.jsonl"
    report.write_text("\n".join(lines) + "\n")
    assert main(["eval", "--rescore", str(report)]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["turns"] == 30 and figures["report"] == str(report)

    report.write_text(lines[0] + "\n{not json\n")
    assert main(["eval", "--rescore", str(report)]) == 2
    assert "report line 2" in capsys.readouterr().err
