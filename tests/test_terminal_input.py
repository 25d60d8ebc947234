"""Terminal input helpers (dungeon.terminal_input) on their own: completion and the loading line."""

import io

from prompt_toolkit.document import Document

from dungeon.commands import REGISTRY, Command
from dungeon.game import Game
from dungeon.generator import FakeGenerator
from dungeon.scenarios import builtin_scenarios
from dungeon.session import Session
from dungeon.terminal_input import CommandCompleter, LoadingStatus


def test_loading_status_takes_whatever_progress_gives():
    stream = io.StringIO()
    with LoadingStatus("Loading x…", stream) as status:
        status("Converting \x1b[31mweights")
        status()
        status(None, 0.5, total=3)
    assert "Loading x…\n" in stream.getvalue()
    assert "Converting weights\n" in stream.getvalue()


def complete(text: str, session=None) -> list[str]:
    completer = CommandCompleter(session=lambda: session)
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
    assert "fantasy" in complete("/new fan") or "fantasy" not in builtin_scenarios()


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
