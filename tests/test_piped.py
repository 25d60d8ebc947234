"""Piped play (stdin is not a terminal), with the fake generator, a tiny GPT-2 and the real model."""

import io
import re
from pathlib import Path

import pytest

from dungeon import saves
from dungeon.config import PlayOptions
from dungeon.paths import data_dir
from dungeon.piped import PlainOutput, run_piped

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def premise(tmp_path):
    path = tmp_path / "premise.txt"
    path.write_text("You stand at the edge of a dark forest with a lantern.\n")
    return path


def play(lines: str, **opts) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    options = PlayOptions(model="fake", color=False, **opts)
    rc = run_piped(options, io.StringIO(lines), PlainOutput(out, err))
    return rc, out.getvalue(), err.getvalue()


def test_piped_session_plays_and_saves(premise):
    rc, out, err = play("look around\n/save test\n/quit\n", premise_file=premise, seed=7)
    assert rc == 0
    assert out.startswith(
        "You stand at the edge of a dark forest with a lantern.\n\n> You look around.\n"
    )
    assert "\x1b" not in out  # plain text: no colours
    data = saves.load(data_dir() / "saves" / "test.json")
    assert data.story.turns[0].action == "You look around."
    assert data.model["model"] == "fake"


def test_same_seed_and_input_give_the_same_output(premise):
    script = "look around\nsay who is there\n\n/retry\nopen the door\n"
    assert (
        play(script, premise_file=premise, seed=3)[1]
        == play(script, premise_file=premise, seed=3)[1]
    )
    assert (
        play(script, premise_file=premise, seed=3)[1]
        != play(script, premise_file=premise, seed=4)[1]
    )


def test_errors_are_reported_and_the_game_goes_on(premise):
    rc, out, err = play(
        "/frobnicate\n/undo\n/forget 3\n/set top_p 7\nwait\n", premise_file=premise, seed=1
    )
    assert rc == 0
    assert "unknown command /frobnicate; type /help" in err
    assert "nothing to undo" in err and "no memory entry 3" in err and "top_p must be in" in err
    assert "> You wait." in out


def test_load_resumes_a_saved_game(premise):
    play("look around\n/save slot1\n", premise_file=premise, seed=5)
    rc, out, err = play("/settings\n", load="slot1")
    assert rc == 0 and err == ""
    rc, out, err = play("/load slot1\n/undo\n/quit\n", premise_file=premise, seed=9)
    assert "Loaded slot1." in out and "Undone: You look around." in out


def test_bad_premise_file_and_bad_save_fail_clearly(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9")
    rc, out, err = play("", premise_file=bad)
    assert rc == 2 and "not UTF-8" in err
    rc, out, err = play("", load="missing")
    assert rc == 2 and "no such save" in err
    rc, out, err = play("", premise_file=tmp_path / "nope.txt")
    assert rc == 2 and "cannot read the premise" in err


def test_piped_session_on_a_tiny_gpt2(tiny_gpt2, premise):
    from dungeon.generator import SamplingSettings

    settings = SamplingSettings(max_new_tokens=8, min_new_tokens=1)
    script = "look around\nsay hello\n/retry\n/quit\n"

    def run():
        out, err = io.StringIO(), io.StringIO()
        opts = PlayOptions(
            model=str(tiny_gpt2), dtype="float32", premise_file=premise, seed=4, sampling=settings
        )
        assert run_piped(opts, io.StringIO(script), PlainOutput(out, err)) == 0, err.getvalue()
        return out.getvalue()

    first = run()
    assert "> You look around.\n" in first and '> You say "Hello."\n' in first
    assert "\x1b" not in first
    assert run() == first  # same seed, same input, same output


def test_default_play_uses_the_shipped_adapter_and_plays_a_turn(premise, one_torch_thread):
    """The built-in base with no flag plays with the shipped adventure adapter: one turn,
    shown as it is saved."""
    from dungeon.generator import SamplingSettings

    out, err = io.StringIO(), io.StringIO()
    opts = PlayOptions(
        premise_file=premise, seed=3, sampling=SamplingSettings(max_new_tokens=24), color=False
    )
    assert run_piped(opts, io.StringIO("look around\n/quit\n"), PlainOutput(out, err)) == 0
    text = out.getvalue()
    response = text.split("> You look around.\n", 1)[1].strip()
    assert response and "\x1b" not in response, text
    data = saves.load(data_dir() / "saves" / "autosave.json")
    assert data.model["name"].endswith("+adventure")
    assert " ".join(data.story.turns[0].response.split()) == " ".join(response.split())


@pytest.mark.slow
def test_the_shipped_adapter_reads_held_out_stories_better_than_the_base(one_torch_thread):
    """--no-adapter plays the raw base; the adapter must score a held-out story better."""
    from dungeon.evaluation import perplexity, validation_texts
    from dungeon.startup import build_generator

    held_out = [validation_texts(ROOT / "stories")[0][:1500]]
    tuned = build_generator(PlayOptions())
    assert tuned.name.endswith("+adventure")
    tuned_ppl = perplexity(tuned, held_out)
    del tuned
    base = build_generator(PlayOptions(adapter="none"))
    assert "+" not in base.name
    assert tuned_ppl < 0.9 * perplexity(base, held_out)


def test_state_commands_show_and_fix_the_world_state(premise):
    script = (
        "take the rope\n/state\n/state add lucky coin\n/state drop rope\n/state drop sword\n"
        "/state forget Nobody\n/state burn it\n/set state off\n/state\n/settings\n/save st\n"
    )
    rc, out, err = play(script, premise_file=premise, seed=2)
    assert rc == 0
    assert "You carry: rope (turn 1)" in out and "People you have met: (none)" in out
    assert "[You now carry: lucky coin]" in out and "[You no longer carry: rope]" in out
    assert "you carry no sword; /state lists what you carry" in err
    assert "the state lists no Nobody" in err and "use /state, /state add ITEM" in err
    assert "[state = off]" in out and "left out of the model's context: /set state on" in out
    assert "You carry: lucky coin (you)" in out
    assert re.search(r"state\s+off", out)
    state = saves.load(data_dir() / "saves" / "st.json").story.state
    assert state.names("inventory") == ["lucky coin"]
    assert [(e.op, e.name) for e in state.edits] == [("add", "lucky coin"), ("drop", "rope")]


def test_state_can_be_turned_off_in_the_options(premise):
    rc, out, err = play("/settings\n", premise_file=premise, seed=2, state=False)
    assert rc == 0 and re.search(r"state\s+off", out)
