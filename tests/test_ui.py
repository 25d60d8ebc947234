"""The terminal game driven through prompt_toolkit's pipe input, with a fake model.

Keys go in through ``create_pipe_input()`` ("\\r" is Enter, "\\x03" Ctrl-C, "\\x04" Ctrl-D,
"\\x1b\\r" Alt-Enter); the screen is a ``DummyOutput`` that also records the text written to
it, so tests can check what the player would read. Saves and history land in the per-test
data folder that conftest.py sets up.
"""

from __future__ import annotations

import json
import re

import pytest
from conftest import RecordingOutput
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import ColorDepth, DummyOutput

from dungeon import saves, ui
from dungeon.config import PlayOptions
from dungeon.generator import FakeGenerator
from dungeon.paths import config_dir, data_dir
from dungeon.session import list_saves, saves_dir

SCENARIO = {
    "name": "testland",
    "title": "The Test Cellar",
    "genre": "test",
    "description": "A cellar that exists only for tests.",
    "premise": "You are {hero}, locked in a cellar that smells of apples.",
    "memory": ["You are {hero}."],
    "grammar": {"hero": ["Ada"]},
}


@pytest.fixture(autouse=True)
def _test_scenario():
    folder = config_dir() / "scenarios"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "testland.json").write_text(json.dumps(SCENARIO), encoding="utf-8")


def play(keys: str, opts: PlayOptions | None = None, generator=None, monkeypatch=None):
    """Run the interactive game on ``keys``; returns (exit status, screen text)."""
    if generator is not None:
        monkeypatch.setattr(ui, "build_generator", lambda opts, progress=None: generator)
    opts = opts or PlayOptions(model="fake", scenario="testland", seed=3)
    screen = RecordingOutput()
    with create_pipe_input() as inp:
        inp.send_text(keys)
        code = ui.run_interactive(opts, input=inp, output=screen)
    return code, screen.text


@pytest.fixture
def toolbars(monkeypatch) -> list[str]:
    """The bottom toolbar's text each time the game draws it, in order."""
    seen: list[str] = []
    real = ui.TerminalGame._status_line

    def spy(self):
        line = real(self)
        seen.append("".join(text for _, text in line))
        return line

    monkeypatch.setattr(ui.TerminalGame, "_status_line", spy)
    return seen


def only_save():
    found = list_saves()
    assert len(found) == 1, found
    return saves.load(saves_dir() / f"{found[0][0]}.json")


class Scripted(FakeGenerator):
    """A FakeGenerator that fails in a chosen way on its first call only."""

    def __init__(self, error: BaseException):
        super().__init__(["The door swings open. Cold air rushes in. A bat flies out."])
        self.error = error
        self.streams = 0

    def stream(self, prompt, **kw):
        self.streams += 1
        first = self.streams == 1
        for i, piece in enumerate(super().stream(prompt, **kw)):
            if first and i == 8:
                raise self.error
            yield piece


# --- playing ---------------------------------------------------------------------------------


def test_an_action_is_played_shown_and_autosaved():
    code, screen = play("I look around\r/quit\r")
    assert code == 0
    assert "You are Ada, locked in a cellar" in screen
    assert "> You look around." in screen
    story = only_save().story
    assert [t.action for t in story.turns] == ["You look around."]
    assert " ".join(story.turns[0].response.split()) in " ".join(screen.split())
    assert "Goodbye" in screen


def test_commands_go_through_the_registry():
    code, screen = play("/remember The key is under the mat\r/memory\r/set temp 0.5\r/quit\r")
    assert code == 0
    assert "Remembered (2): The key is under the mat" in screen
    assert "2. The key is under the mat" in screen
    assert "temperature = 0.5" in screen
    data = only_save()
    assert data.story.memory[-1] == "The key is under the mat"
    assert data.sampling["temperature"] == 0.5


def test_an_unknown_command_suggests_the_nearest_one():
    code, screen = play("/undoo\r/quit\r")
    assert code == 0
    assert "unknown command /undoo; did you mean /undo?" in screen


def test_ctrl_c_during_a_turn_cancels_only_that_turn(monkeypatch):
    gen = Scripted(KeyboardInterrupt())
    code, screen = play("I open the door\rI wait\r/quit\r", generator=gen, monkeypatch=monkeypatch)
    assert code == 0
    assert "turn cancelled; the story is as it was" in screen
    story = only_save().story
    assert [t.action for t in story.turns] == ["You wait."]  # the cancelled turn left no trace


def test_ctrl_c_at_the_prompt_clears_the_line():
    code, _ = play("I dance a jig\x03/quit\r")
    assert code == 0
    assert only_save().story.turns == []


def test_ctrl_d_saves_and_leaves():
    code, screen = play("I look around\r\x04")
    assert code == 0
    assert len(only_save().story.turns) == 1
    assert "Saved as testland-" in screen


def test_an_error_in_a_turn_is_one_line_and_logged_and_the_game_goes_on(monkeypatch):
    gen = Scripted(RuntimeError("the model fell over"))
    code, screen = play("I open the door\rI wait\r/quit\r", generator=gen, monkeypatch=monkeypatch)
    assert code == 0
    assert "Something went wrong: RuntimeError: the model fell over" in screen
    log = (data_dir() / "dungeon.log").read_text()
    assert "Traceback" in log and "the model fell over" in log
    assert [t.action for t in only_save().story.turns] == ["You wait."]


def test_a_bug_while_reading_input_does_not_end_the_session(monkeypatch):
    real = ui.TerminalGame.read_line
    calls = []

    def flaky(self):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("toolbar exploded")
        return real(self)

    monkeypatch.setattr(ui.TerminalGame, "read_line", flaky)
    code, screen = play("I look around\r/quit\r")
    assert code == 0
    assert "Something went wrong reading the input: toolbar exploded" in screen
    assert len(only_save().story.turns) == 1


def test_save_new_story_and_load_back():
    keys = (
        "I look around\r/save mygame\r/new testland\rI wait\rI sing\r/undo\r/load mygame\r/quit\r"
    )
    code, screen = play(keys)
    assert code == 0
    assert "Saved to" in screen and "Undone: You sing." in screen
    assert "Loaded mygame." in screen
    assert [len(saves.load(saves_dir() / f"{n}.json").story.turns) for n, _ in list_saves()] == [
        1,
        1,
        1,
    ]
    assert len(saves.load(saves_dir() / "mygame.json").story.turns) == 1
    # --load continues it
    code, screen = play("/quit\r", PlayOptions(model="fake", load="mygame"))
    assert code == 0
    assert "Continuing mygame: 1 turn so far." in screen
    assert "> You look around." in screen


def test_alt_enter_inserts_a_new_line_in_the_input():
    code, _ = play("say hello\x1b\rthere\r/quit\r")
    assert code == 0
    assert only_save().story.turns[0].action == 'You say "Hello there."'


def test_alter_without_text_opens_a_prefilled_editor():
    code, screen = play("I look around\r/alter\r A goblin appears.\x1b\r/quit\r")
    assert code == 0
    assert "The last response now reads:" in screen
    turn = only_save().story.turns[-1]
    assert turn.response.endswith("A goblin appears.")
    assert len(turn.candidates) == 2  # the old response is kept


def test_alter_cancelled_with_ctrl_c_changes_nothing():
    code, screen = play("I look around\r/alter\r\x03/quit\r")
    assert code == 0
    assert "(unchanged)" in screen
    assert len(only_save().story.turns[-1].candidates) == 1


def test_new_starts_a_story_in_a_fresh_slot():
    code, screen = play("I look around\r/new testland\rI wait\r/quit\r")
    assert code == 0
    found = list_saves()
    assert len(found) == 2
    turns = sorted(len(saves.load(saves_dir() / f"{n}.json").story.turns) for n, _ in found)
    assert turns == [1, 1]


def test_input_history_is_kept_in_the_data_folder():
    play("I look around\r/quit\r")
    assert "I look around" in (data_dir() / "history").read_text()


# --- the start menu --------------------------------------------------------------------------


def menu_opts():
    return PlayOptions(model="fake", seed=3)


def test_menu_picks_a_scenario_by_name():
    code, screen = play("testland\r/quit\r", menu_opts())
    assert code == 0
    assert "How would you like to begin?" in screen and "A cellar that exists only" in screen
    assert only_save().story.premise.startswith("You are Ada")


def test_menu_picks_a_scenario_by_number():
    names = list(ui.available_scenarios()[0])
    number = names.index("testland") + 1  # no save yet: no "continue" entry
    code, _ = play(f"{number}\r/quit\r", menu_opts())
    assert code == 0
    assert only_save().story.premise.startswith("You are Ada")


def test_menu_defaults_to_continuing_the_last_game():
    play("I look around\r/quit\r")
    code, screen = play("\r/quit\r", menu_opts())
    assert code == 0
    assert "continue" in screen and "Continuing testland-" in screen
    assert len(only_save().story.turns) == 1  # the same game, not a new one


def test_menu_custom_premise():
    code, screen = play("c\rYou are a lighthouse keeper.\x1b\r/quit\r", menu_opts())
    assert code == 0
    story = only_save().story
    assert story.premise == "You are a lighthouse keeper."
    assert list_saves()[0][0].startswith("custom-")


def test_menu_says_so_when_the_choice_is_not_on_the_list():
    code, screen = play("zzz\rtestland\r/quit\r", menu_opts())
    assert code == 0
    assert "'zzz' is not on the list" in screen
    assert only_save().story.premise.startswith("You are Ada")


def test_ctrl_d_at_the_menu_leaves_without_saving():
    code, _ = play("\x04", menu_opts())
    assert code == 0
    assert list_saves() == []


def test_premise_file_skips_the_menu(tmp_path):
    premise = tmp_path / "opening.txt"
    premise.write_text("You are a cat on a warm roof.\n", encoding="utf-8")
    code, screen = play("/quit\r", PlayOptions(model="fake", premise_file=premise))
    assert code == 0
    assert "How would you like to begin?" not in screen
    assert only_save().story.premise == "You are a cat on a warm roof."
    assert list_saves()[0][0].startswith("opening-")


def test_a_bad_start_flag_is_an_error():
    code, screen = play("", PlayOptions(model="fake", scenario="no-such-scenario"))
    assert code == 2
    assert "no scenario named 'no-such-scenario'" in screen


def test_a_model_that_fails_to_load_is_one_line(monkeypatch):
    def broken(opts, progress=None):
        progress("Reading the weights")
        raise OSError("no such model folder: /nowhere")

    monkeypatch.setattr(ui, "build_generator", broken)
    code, screen = play("", PlayOptions(model="/nowhere", scenario="testland"))
    assert code == 1
    assert "Cannot load the model /nowhere: no such model folder: /nowhere" in screen
    assert "Traceback" in (data_dir() / "dungeon.log").read_text()


# --- colours and the toolbar -----------------------------------------------------------------


def test_toolbar_shows_model_turn_context_and_temperature(toolbars):
    seen = toolbars
    play("I look around\r/quit\r")
    assert re.search(r"fake │ turn 0 │ context \d+/1024 tokens │ temp 0.8", seen[0])
    assert "turn 1" in seen[1]


def test_no_color_turns_the_colours_off(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    game = ui.TerminalGame(PlayOptions(model="fake"), output=DummyOutput())
    assert game.out.color_depth == ColorDepth.DEPTH_1_BIT


# --- candidates ------------------------------------------------------------------------------

ALT_RIGHT, ALT_LEFT = "\x1b\x1b[C", "\x1b\x1b[D"


def test_alt_right_flips_to_the_next_candidate_and_the_save_follows(toolbars):
    seen = toolbars
    opts = PlayOptions(model="fake", scenario="testland", seed=3, candidates=3)
    code, screen = play("I look around\r" + ALT_RIGHT + ALT_RIGHT + ALT_LEFT + "/quit\r", opts)
    assert code == 0
    turn = only_save().story.turns[0]
    assert len(turn.candidates) == 3 and turn.chosen == 1  # right, right, left
    flat = " ".join(screen.split())
    assert "Response 2 of 3:" in flat and "Response 3 of 3:" in flat
    for c in turn.candidates:  # every candidate was read by the player
        assert " ".join(c.text.split()) in flat and c.shown
    assert re.search(r"│ resp(onse)? 1/3\b", seen[1])
    assert any(re.search(r"│ resp(onse)? 3/3\b", line) for line in seen[2:]), seen  # flipped


def test_choose_and_retry_use_the_ready_candidates():
    opts = PlayOptions(model="fake", scenario="testland", seed=3, candidates=2)
    code, screen = play("wait\r/choose\r/retry\r/choose 1\r/quit\r", opts)
    assert code == 0
    turn = only_save().story.turns[0]
    assert len(turn.candidates) == 2 and turn.chosen == 0  # retry took the ready one, no new
    assert "The last turn has 2 response(s):" in screen and "(new)" in screen
    assert "Response 1 of 2:" in screen


def test_set_candidates_changes_the_next_turn():
    code, screen = play("/set candidates 4\rwait\r/set candidates 99\r/quit\r")
    assert "candidates = 4" in screen
    assert "candidates must be between 1 and 8, got 99" in screen
    assert len(only_save().story.turns[0].candidates) == 4


def test_toolbar_counts_what_you_carry(toolbars):
    seen = toolbars
    play("/state add lantern\r/state add rope\r/quit\r")
    assert "carrying" not in seen[0]
    assert re.search(r"│ carrying 2\b", seen[-1]), seen
