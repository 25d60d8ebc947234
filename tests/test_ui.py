"""The terminal game driven through prompt_toolkit's pipe input, with a fake model.

Keys go in through ``create_pipe_input()`` ("\\r" is Enter, "\\x03" Ctrl-C, "\\x04" Ctrl-D,
"\\x1b\\r" Alt-Enter); the screen is a ``DummyOutput`` that also records the text written to
it, so tests can check what the player would read. Saves and history land in the per-test
data folder that conftest.py sets up.
"""

from __future__ import annotations

import io
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prompt_toolkit.data_structures import Size
from prompt_toolkit.document import Document
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import ColorDepth, DummyOutput
from prompt_toolkit.output.vt100 import Vt100_Output

from dungeon import saves, ui
from dungeon.commands import REGISTRY, Command
from dungeon.config import PlayOptions
from dungeon.game import Game
from dungeon.generator import FakeGenerator
from dungeon.paths import config_dir, data_dir
from dungeon.session import Session, list_saves, saves_dir
from dungeon.wrap import WordWrapper

SCENARIO = {
    "name": "testland",
    "title": "The Test Cellar",
    "genre": "test",
    "description": "A cellar that exists only for tests.",
    "premise": "You are {hero}, locked in a cellar that smells of apples.",
    "memory": ["You are {hero}."],
    "grammar": {"hero": ["Ada"]},
}


class RecordingOutput(DummyOutput):
    """A DummyOutput that keeps the text written to it."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, data: str) -> None:
        self.parts.append(data)

    def write_raw(self, data: str) -> None:
        self.parts.append(data)

    @property
    def text(self) -> str:
        return "".join(self.parts)


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


def test_system_text_is_sanitized():
    out = ui.TerminalOutput(RecordingOutput())
    out.system("bad \x1b[31mred\x07 \x9b2J name")
    assert "\x1b" not in out.output.text and "\x07" not in out.output.text
    assert "\x9b" not in out.output.text and "2J" not in out.output.text
    assert "bad red" in out.output.text


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


def test_loading_status_takes_whatever_progress_gives():
    stream = io.StringIO()
    with ui.LoadingStatus("Loading x…", stream) as status:
        status("Converting \x1b[31mweights")
        status()
        status(None, 0.5, total=3)
    assert "Loading x…\n" in stream.getvalue()
    assert "Converting weights\n" in stream.getvalue()


# --- colours and the toolbar -----------------------------------------------------------------


def vt100(buf: io.StringIO) -> Vt100_Output:
    return Vt100_Output(buf, lambda: Size(rows=24, columns=80), term="xterm-256color")


def test_colours_are_used_and_can_be_turned_off(monkeypatch):
    coloured, plain = io.StringIO(), io.StringIO()
    ui.TerminalOutput(vt100(coloured), color=True).player("You look around.")
    ui.TerminalOutput(vt100(plain), color=False).player("You look around.")
    colour = r"\x1b\[[0-9;]*[\[;]3[0-7][;m]"  # a foreground colour in an SGR sequence
    assert re.search(colour, coloured.getvalue())
    assert not re.search(colour, plain.getvalue())
    assert "You look around." in plain.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    game = ui.TerminalGame(PlayOptions(model="fake"), output=DummyOutput())
    assert game.out.color_depth == ColorDepth.DEPTH_1_BIT


def test_toolbar_shows_model_turn_context_and_temperature(monkeypatch):
    seen = []
    real = ui.TerminalGame._status_line

    def spy(self):
        line = real(self)
        seen.append("".join(text for _, text in line))
        return line

    monkeypatch.setattr(ui.TerminalGame, "_status_line", spy)
    play("I look around\r/quit\r")
    assert re.search(r"fake │ turn 0 │ context \d+/1024 tokens │ temp 0.8", seen[0])
    assert "turn 1" in seen[1]


def test_story_text_is_wrapped_to_the_terminal_width():
    buf = io.StringIO()
    out = ui.TerminalOutput(Vt100_Output(buf, lambda: Size(24, 30), term="xterm"), color=False)
    for word in ("The torchlight flickers across the damp stone walls of the old keep. " * 3).split(
        " "
    ):
        out.story_piece(word + " ")
    out.end_story()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue()).replace("\r", "")
    lines = [line for line in text.split("\n") if line]
    assert len(lines) > 3 and all(len(line) <= 29 for line in lines)


# --- the completer on its own ----------------------------------------------------------------


def complete(text: str, session=None) -> list[str]:
    completer = ui.CommandCompleter(session=lambda: session)
    return [c.text for c in completer.get_completions(Document(text), None)]


def test_completer_completes_command_names_and_aliases():
    assert complete("/he") == ["/help"]
    assert complete("/un") == ["/undo"]
    assert "/quit" in complete("/q")
    assert "/exit" in complete("/ex")  # an alias of /quit
    assert len(complete("/")) >= 20


def test_completer_completes_arguments():
    assert complete("/help un") == ["undo"]
    assert complete("/world r") == ["remove"]
    assert complete("/note c") == ["clear"]
    assert "fantasy" in complete("/new fan") or "fantasy" not in ui.available_scenarios()[0]


def test_completer_completes_setting_names_from_the_session():
    session = Session(Game(FakeGenerator(), "A cellar."), out=None)
    assert complete("/set tem", session) == ["temperature"]
    assert complete("/set tem") == []  # no session yet: nothing, and no error


def test_completer_leaves_actions_and_later_arguments_alone():
    assert complete("I look") == []
    assert complete("//not a command") == []
    assert complete("/world add dragon") == []
    assert complete("/nosuchcommand x") == []


def test_completer_survives_a_broken_argument_function(monkeypatch):
    def boom(session):
        raise RuntimeError("bug")

    broken = Command("broken", lambda s, a: None, "/broken", "test", (), boom)
    monkeypatch.setitem(REGISTRY.commands, "broken", broken)
    assert complete("/broken x") == []


# --- the word wrapper on its own -------------------------------------------------------------


def wrap_all(pieces, width, **kw) -> str:
    w = WordWrapper(width, **kw)
    return "".join(w.feed(p) for p in pieces) + w.finish()


def test_wrapper_breaks_at_words():
    text = "The torchlight flickers across the damp stone walls."
    assert wrap_all([text], 20) == "The torchlight\nflickers across the\ndamp stone walls."


def test_wrapper_holds_back_only_the_unfinished_word():
    w = WordWrapper(40)
    assert w.feed("The tor") == "The"
    assert w.feed("chlight ") == " torchlight"
    assert w.finish() == ""


def test_wrapper_keeps_newlines_and_indentation():
    assert wrap_all(["a b\n  c d\n\ne"], 20) == "a b\n  c d\n\ne"


def test_wrapper_indents_wrapped_lines():
    out = wrap_all(["You open the heavy door and step into the dark."], 20, indent="  ", column=2)
    assert out == "You open the heavy\n  door and step into\n  the dark."


def test_wrapper_hangs_under_a_second_column():
    out = wrap_all(["  /undo     Take back the last turn you played."], 30, hang=True)
    assert out == "  /undo     Take back the last\n            turn you played."


def test_wrapper_breaks_a_word_longer_than_the_line():
    assert (
        wrap_all(["see " + "x" * 25], 10) == "see\n" + "x" * 10 + "\n" + "x" * 10 + "\n" + "x" * 5
    )


def test_wrapper_counts_wide_characters_as_two_cells():
    out = wrap_all(["竜 竜 竜 竜 竜 竜"], 10)
    assert out.split("\n") == ["竜 竜 竜", "竜 竜 竜"]


words = st.text(alphabet="abcdefghij", min_size=1, max_size=14)
texts = st.lists(st.tuples(words, st.sampled_from([" ", "  ", "\n", " \n"])), max_size=40)


@given(texts, st.integers(min_value=12, max_value=60), st.data())
def test_wrapper_streaming_is_the_same_as_all_at_once(parts, width, data):
    text = "".join(w + sep for w, sep in parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=10)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    whole = wrap_all([text], width)
    assert wrap_all(pieces, width) == whole
    assert "".join(whole.split()) == "".join(text.split())  # nothing lost or added
    if all(len(w) <= width for w, _ in parts):
        assert whole.split() == text.split()  # words are only broken when they must be
    assert all(len(line) <= width for line in whole.split("\n"))
