"""dungeon.evaluation.playtests: loading the scripts, playing them through the Game API, and
measuring a saved report again."""

import json
from dataclasses import asdict
from importlib import resources
from pathlib import Path

import pytest

from dungeon.evaluation.playtests import Playtest, load_playtests, rescore, run_playtests
from dungeon.generator import FakeGenerator


def test_load_playtests_reads_every_shipped_script_in_name_order():
    """(The shape of each script is checked in test_playtests.py; this is the loader.)"""
    folder = Path(str(resources.files("dungeon") / "playtests"))
    expected = sorted(p.name for p in folder.glob("*.json"))
    tests = load_playtests()
    assert [f"{t.name}.json" for t in tests] == expected
    first = next(t for t in tests if not t.checks)
    data = json.loads((folder / f"{first.name}.json").read_text(encoding="utf-8"))
    assert first == Playtest(data["name"], data["genre"], data["premise"], data["inputs"])


def test_the_shipped_playtests_cover_the_genres():
    plain = [t for t in load_playtests() if not t.checks]
    assert len(plain) >= 12 and len({t.genre for t in plain}) >= 10


def test_a_script_with_bad_checks_is_refused_by_name(tmp_path):
    script = {"name": "x", "premise": "You wake.", "inputs": ["look"], "checks": [{"turn": 3}]}
    (tmp_path / "x.json").write_text(json.dumps(script))
    with pytest.raises(ValueError, match=r"playtest x.json: .*1 to 1"):
        load_playtests(tmp_path)


def test_playtest_counts_problems_and_crashes():
    script = ["The door creaks. You decide to run.", "", "Half a sente", "A cat sleeps."]
    tests = [Playtest("t", "g", "You are in a hall.", ["look", "wait", "go on", "sit"])]
    result = run_playtests(FakeGenerator(script), tests, seed=1)
    # The empty response is retried by the Game, so the next script line stands in for it.
    assert [t.response for t in result.turns] == [script[0], script[2], script[3], script[2]]
    s = result.summary()
    assert s["turns"] == 4 and s["crashes"] == 0 and s["empty_rate"] == 0
    assert s["impersonation_rate"] == 0.25 and s["incomplete_rate"] == 0.5

    class Broken(FakeGenerator):
        def stream(self, prompt, **kw):
            raise RuntimeError("boom")
            yield ""

    crashed = run_playtests(Broken(), tests)
    assert crashed.summary()["crashes"] == 4 and "boom" in crashed.crashes[0]


def test_a_script_plays_the_same_turns_whichever_scripts_run_with_it():
    a, b = load_playtests()[:2]
    both = run_playtests(FakeGenerator(), [a, b], seed=4)
    alone = run_playtests(FakeGenerator(), [b], seed=4)
    assert [t.response for t in both.turns if t.playtest == b.name] == [
        t.response for t in alone.turns
    ]
    other_seed = run_playtests(FakeGenerator(), [b], seed=5)
    assert [t.response for t in other_seed.turns] != [t.response for t in alone.turns]


def test_the_picker_chooses_among_candidates():
    from dungeon.game import GameSettings

    tests = [Playtest("t", "g", "You are in a hall.", ["look"])]
    result = run_playtests(
        FakeGenerator(),
        tests,
        settings=GameSettings(candidates=3),
        picker=lambda context, candidates: len(candidates) - 1,
    )
    first = run_playtests(FakeGenerator(), tests, settings=GameSettings(candidates=3))
    assert result.turns[0].response != first.turns[0].response


def test_a_tiny_gpt2_plays_the_same_game_from_the_same_seed(tiny_gpt2, one_torch_thread):
    from dungeon.models import load_generator

    gen = load_generator(str(tiny_gpt2), dtype="float32")
    gen.settings = gen.settings.with_value("max_new_tokens", "12")
    test = next(t for t in load_playtests() if t.checks)
    a = run_playtests(gen, [test], seed=5, judge=gen).summary()
    b = run_playtests(gen, [test], seed=5, judge=gen).summary()
    a.pop("median_turn_s"), b.pop("median_turn_s")
    assert a == b and a["turns"] == len(test.inputs) and a["crashes"] == 0
    assert a["continuity_total"] == 1 and a["adherence"] is not None
    json.dumps(a)


def test_rescore_of_a_report_gives_the_figures_of_the_run():
    tests = [t for t in load_playtests() if not t.checks][:1]
    tests += [t for t in load_playtests() if t.checks][:2]
    result = run_playtests(FakeGenerator(), tests, seed=2, judge=FakeGenerator())
    lines = [json.dumps(asdict(t)) for t in result.turns]
    again = rescore(lines, tests)
    assert again.summary() == result.summary() and again.summary()["continuity_total"] == 2
    assert again.turns == result.turns
    # A report from before adherence and continuity were measured still reads.
    old = [json.dumps({k: v for k, v in asdict(t).items() if k in OLD_KEYS}) for t in result.turns]
    assert rescore(old).summary()["adherence"] is None
    with pytest.raises(ValueError, match="report line 2"):
        rescore([lines[0], "{not json"])


OLD_KEYS = {"playtest", "index", "input", "response", "seconds"}
