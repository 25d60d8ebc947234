"""Player input parsing and the command registry (dungeon.commands), on their own."""

import pytest

from dungeon.commands import REGISTRY, Parsed, UnknownCommand, parse_input


def test_parse_input():
    assert parse_input("/undo") == parse_input("  /UNDO ")
    assert parse_input("/set temperature 0.7").text == "temperature 0.7"
    assert parse_input("/set temperature 0.7").command == "set"
    assert parse_input('"hello') == Parsed("action", '"hello', mode="say")
    assert parse_input("!The sky falls.") == Parsed("action", "The sky falls.", mode="story")
    assert parse_input("open the door") == Parsed("action", "open the door", mode="do")
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
