"""The start-up path every front end shares (dungeon.startup): options -> story -> session."""

from __future__ import annotations

import json

import pytest

from dungeon import saves
from dungeon.config import PlayOptions
from dungeon.generator import FakeGenerator
from dungeon.piped import PlainOutput
from dungeon.scenarios import ScenarioError, builtin_scenarios, find_scenario
from dungeon.session import AUTOSAVE, slot_path
from dungeon.startup import (
    MAX_PREMISE_BYTES,
    StartError,
    available_scenarios,
    fresh_seed,
    open_session,
    premise_story,
    read_premise,
    start_from_options,
    user_scenario_dirs,
)
from dungeon.story import Story

TINY = {
    "name": "tiny",
    "title": "Tiny",
    "genre": "test",
    "description": "A tiny scenario.",
    "premise": "You are {hero}, alone in a very small room.",
    "grammar": {"hero": ["Ada"]},
}


def write_user_scenario(data: dict) -> None:
    folder = user_scenario_dirs()[0]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{data['name']}.json").write_text(json.dumps(data), encoding="utf-8")


def test_fresh_seed_keeps_an_asked_seed_and_otherwise_differs():
    assert fresh_seed(7) == 7 and fresh_seed(0) == 0
    assert len({fresh_seed() for _ in range(5)}) > 1


def test_a_user_scenario_is_found_by_name():
    write_user_scenario(TINY)
    start = start_from_options(PlayOptions(model="fake", scenario="tiny", seed=5))
    assert start is not None
    assert start.story.premise == "You are Ada, alone in a very small room."
    assert start.sampling == {} and not start.continued
    assert start.slot.startswith("tiny-")  # a fresh slot: a new story never overwrites another


def test_a_builtin_scenario_is_seeded():
    opts = PlayOptions(model="fake", scenario="pirates", seed=9)
    a, b = start_from_options(opts), start_from_options(opts)
    assert a.story.premise == b.story.premise == builtin_scenarios()["pirates"].start(9).premise


def test_nothing_asked_gives_the_default_or_none():
    assert start_from_options(PlayOptions(model="fake")) is None  # the terminal shows a menu
    piped = start_from_options(
        PlayOptions(model="fake", seed=1), default_scenario="fantasy", fresh_slot=False
    )
    assert piped.slot == AUTOSAVE
    assert piped.story.premise == find_scenario("fantasy").start(1).premise


def test_load_takes_up_the_saved_slot():
    story = Story(premise="You sit by a fire.", seed=3, title="Fireside")
    saves.save(slot_path("mine"), saves.SaveData(story, {"temperature": 0.5}))
    start = start_from_options(PlayOptions(model="fake", load="mine.json"))
    assert (start.slot, start.continued, start.sampling) == ("mine", True, {"temperature": 0.5})
    assert start.story.title == "Fireside"


def test_bad_starts_say_what_to_do(tmp_path):
    with pytest.raises(ScenarioError, match="no scenario named 'atlantis'; choose one of: "):
        start_from_options(PlayOptions(model="fake", scenario="atlantis"))
    with pytest.raises(ValueError, match="not a usable save name"):
        start_from_options(PlayOptions(model="fake", load="../etc/passwd"))
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"You stand\nin a caf\xe9.")
    with pytest.raises(
        StartError,
        match=r"latin\.txt:2: not UTF-8 text \(byte 0xe9 at offset 18\); save the premise as UTF-8",
    ):
        read_premise(latin)
    big = tmp_path / "big.txt"
    big.write_text("You walk. " * (MAX_PREMISE_BYTES // 10 + 1))
    with pytest.raises(StartError, match="too long for a premise"):
        read_premise(big)
    with pytest.raises(StartError, match="empty"):
        premise_story(" \x1b[2J \n", seed=1)


def test_a_broken_user_scenario_is_reported_and_hides_nothing():
    write_user_scenario(TINY)
    (user_scenario_dirs()[0] / "broken.json").write_text("{not json", encoding="utf-8")
    found, problems = available_scenarios()
    assert "tiny" in found and "fantasy" in found
    assert len(problems) == 1 and "broken.json" in problems[0]


def test_open_session_joins_generator_story_options_and_slot():
    opts = PlayOptions(model="fake", scenario="fantasy", seed=2, context_budget=300)
    start = start_from_options(opts)
    session = open_session(FakeGenerator(), start, opts, PlainOutput())
    assert session.slot == start.slot and session.game.story is start.story
    assert session.game.settings.context.budget == 300
    session.game.act("look around")  # every committed turn is autosaved to the slot
    assert saves.load(slot_path(start.slot)).story.turns[0].action == "You look around."


def test_build_generator_passes_the_play_options_to_the_loader(monkeypatch):
    from dungeon import models
    from dungeon.startup import build_generator

    seen = {}
    monkeypatch.setattr(models, "load_generator", lambda model, **kw: seen.update(kw, model=model))
    build_generator(PlayOptions(model="smollm2-135m", quantize="int8", threads=1))
    assert (seen["model"], seen["quantize"], seen["threads"]) == ("smollm2-135m", "int8", 1)
    assert seen["adapter"] is not None and seen["adapter"].endswith("adventure")  # shipped
    build_generator(PlayOptions(model="smollm2-135m", adapter="none"))
    assert seen["adapter"] is None and seen["quantize"] == "auto"


def test_guidance_on_a_backend_that_cannot_guide_is_announced(monkeypatch, caplog):
    import logging

    from dungeon import models
    from dungeon.startup import build_generator

    def load(model, **kw):  # a backend without stream_guided (as a remote model is)
        generator = FakeGenerator(settings=kw["settings"])
        generator.recommended_sampling = {"guidance": 1.0}
        return generator

    monkeypatch.setattr(models, "load_generator", load)
    with caplog.at_level(logging.WARNING, logger="dungeon.startup"):
        opts = PlayOptions(model="http://gpu:8000/v1")
        build_generator(opts)
        assert opts.sampling.guidance == 1.0
        assert "action guidance needs a local model" in caplog.text
        caplog.clear()
        monkeypatch.setattr(models, "load_generator", lambda model, **kw: FakeGenerator())
        build_generator(PlayOptions(model="http://gpu:8000/v1"))
    assert "action guidance" not in caplog.text  # off: nothing to say


def test_the_model_s_recommended_sampling_is_in_effect_under_the_user_s_and_a_save_s(
    monkeypatch, capsys
):
    from dungeon import models
    from dungeon.commands import dispatch
    from dungeon.config import merge
    from dungeon.startup import build_generator, make_game

    def load(model, **kw):  # a model whose dungeon.json recommends temperature 0.5
        generator = FakeGenerator(settings=kw["settings"])
        generator.recommended_sampling = {"temperature": 0.5, "top_k": 20}
        return generator

    monkeypatch.setattr(models, "load_generator", load)
    opts = merge({}, {"model": "smollm2-135m", "top_k": 50})  # --top-k 50: the default, chosen
    generator = build_generator(opts)
    assert (opts.sampling.temperature, opts.sampling.top_k) == (0.5, 50)
    assert generator.settings == opts.sampling  # serve's and eval's figures read these
    start = start_from_options(PlayOptions(scenario="fantasy", seed=1))
    session = open_session(generator, start, opts, PlainOutput())
    assert session.game.sampling.temperature == 0.5
    capsys.readouterr()
    dispatch(session, "/settings")
    assert "0.5" in next(
        line for line in capsys.readouterr().out.splitlines() if "temperature" in line
    )

    chosen = merge({"temperature": 0.8}, {"model": "smollm2-135m"})  # config file: the default
    build_generator(chosen)
    assert chosen.sampling.temperature == 0.8
    saved = make_game(generator, Story(premise="You wait."), opts, {"temperature": 1.2})
    assert saved.sampling.temperature == 1.2  # a save's own settings beat the model's
