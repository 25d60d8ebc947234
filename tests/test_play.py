"""Piped play (stdin is not a terminal) and the CLI entry points, with the fake generator."""

import io
import subprocess
import sys
from pathlib import Path

import pytest

from dungeon import saves
from dungeon.cli import main
from dungeon.commands import REGISTRY, UnknownCommand, parse_input
from dungeon.config import ConfigError, PlayOptions, merge, read_config
from dungeon.paths import data_dir
from dungeon.play import PlainOutput, run_piped

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


def test_parse_input():
    assert parse_input("/undo") == parse_input("  /UNDO ")
    assert parse_input("/set temperature 0.7").text == "temperature 0.7"
    assert parse_input('"hello').name == "say"
    assert parse_input("!The sky falls.").name == "story"
    assert parse_input("!The sky falls.").text == "The sky falls."
    assert parse_input("open the door").name == "do"
    assert parse_input("//slash").text == "/slash"
    assert parse_input("").text == ""


def test_registry_prefixes_aliases_and_suggestions():
    assert REGISTRY.find("und").name == "undo"
    assert REGISTRY.find("q").name == "quit"
    with pytest.raises(UnknownCommand, match=r"did you mean /undo\?"):
        REGISTRY.find("undoo")
    with pytest.raises(UnknownCommand, match="/help"):
        REGISTRY.find("xyzzy")
    needed = "help do say story undo redo retry alter continue memory remember forget note world set settings save load saves export new quit"
    assert set(needed.split()) <= set(REGISTRY.commands)


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


def test_config_file_and_flags(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text('temperature = 0.4\nmodel = "fake"\ncolor = false\n')
    opts = merge(read_config(cfg), {"temperature": 0.6, "top_p": None})
    assert opts.sampling.temperature == 0.6 and opts.model == "fake" and opts.color is False
    cfg.write_text("warmth = 3\n")
    with pytest.raises(ConfigError, match="unknown setting"):
        read_config(cfg)
    cfg.write_text("temperature = 99\n")
    with pytest.raises(ConfigError, match="temperature"):
        merge(read_config(cfg), {})


def test_python_dash_m_dungeon_plays_from_a_pipe(premise, tmp_path):
    env = {"DUNGEON_DATA_DIR": str(tmp_path / "d"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dungeon",
            "play",
            "--model",
            "fake",
            "--premise",
            str(premise),
            "--seed",
            "2",
        ],
        input="look around\n/quit\n",
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "> You look around." in result.stdout


def test_cli_help_and_no_command(capsys):
    assert main([]) == 2
    with pytest.raises(SystemExit):
        main(["play", "--help"])
    assert "NO_COLOR" in capsys.readouterr().out


def test_importing_dungeon_is_light():
    code = "import sys, dungeon; print('torch' in sys.modules, 'transformers' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "False False"


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
    """The built-in base with no flag plays with the shipped adventure adapter; --no-adapter
    plays the raw base. The adapter must score a held-out story better than the base does."""
    from dungeon.evaluate import perplexity, validation_texts
    from dungeon.generator import SamplingSettings
    from dungeon.play import build_generator

    held_out = [validation_texts(ROOT / "stories")[0][:1500]]
    tuned = build_generator(PlayOptions())
    assert tuned.name.endswith("+adventure")
    tuned_ppl = perplexity(tuned.model, tuned.tokenizer, held_out)
    del tuned
    base = build_generator(PlayOptions(adapter="none"))
    assert "+" not in base.name
    assert tuned_ppl < 0.9 * perplexity(base.model, base.tokenizer, held_out)
    del base

    out, err = io.StringIO(), io.StringIO()
    opts = PlayOptions(
        premise_file=premise, seed=3, sampling=SamplingSettings(max_new_tokens=24), color=False
    )
    assert run_piped(opts, io.StringIO("look around\n/quit\n"), PlainOutput(out, err)) == 0
    text = out.getvalue()
    response = text.split("> You look around.\n", 1)[1].strip()
    assert response and "\x1b" not in response, text
    data = saves.load(data_dir() / "saves" / "autosave.json")
    assert " ".join(data.story.turns[0].response.split()) == " ".join(response.split())
