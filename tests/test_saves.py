"""Saves: versioned JSON, atomic writes, clear errors, nothing executable, transcripts."""

import json
import os

import pytest

from dungeon import FakeGenerator, Game, Story, WorldEntry, saves
from dungeon.saves import SaveData, SaveError


def played_story() -> Story:
    game = Game(
        FakeGenerator(), Story(premise="You stand on a pier at dusk.", title="Pier", seed=3)
    )
    game.remember("You owe the harbourmaster money.")
    game.set_author_note("Melancholy.")
    game.add_world_entry(WorldEntry(["boat"], "The boat leaks.", ["sea"], constant=False))
    game.act("look at the boat")
    game.act("say ahoy")
    game.retry()
    game.act("jump in")
    game.undo()
    return game.story


def test_round_trip_keeps_everything(tmp_path):
    story = played_story()
    path = tmp_path / "slot.json"
    saves.save(path, SaveData(story, {"temperature": 0.7}, {"name": "fake"}))
    loaded = saves.load(path)
    assert loaded.story == story
    assert loaded.sampling == {"temperature": 0.7} and loaded.model == {"name": "fake"}
    doc = json.loads(path.read_text())
    assert doc["format"] == "dungeon-save" and doc["version"] == saves.SAVE_VERSION


def test_a_crash_while_saving_keeps_the_previous_save(tmp_path, monkeypatch):
    path = tmp_path / "slot.json"
    saves.save(path, SaveData(played_story()))
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(SaveError, match="cannot write the save"):
        saves.save(path, SaveData(Story(premise="Another story.")))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["slot.json"]  # no temp file left behind


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"format": "dungeon-save", "version": 1, "story": {"pre', "broken JSON"),
        (b"", "broken JSON"),
        (b'{"hello": "world"}', "not a dungeon save"),
        (b"\x80\x04\x95pickle", "not UTF-8"),
        (
            b'{"format": "dungeon-save", "version": 99, "story": {}}',
            "newer than this dungeon reads",
        ),
        (b'{"format": "dungeon-save", "version": 0, "story": {}}', "too old"),
        (b'{"format": "dungeon-save", "version": 1, "story": {"premise": 5}}', "damaged save"),
        (
            b'{"format": "dungeon-save", "version": 1, "story": {"premise": "p", "memory": [],'
            b' "turns": [{"action": "a", "mode": "fly", "chosen": 0, "candidates": []}], "seed": 1}}',
            "story.turns[0].mode is 'fly'",
        ),
    ],
)
def test_bad_files_get_a_clear_error_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(SaveError) as err:
        saves.load(path)
    assert str(path) in str(err.value) and message in str(err.value)


def test_missing_save_and_folder(tmp_path):
    with pytest.raises(SaveError, match="no such save"):
        saves.load(tmp_path / "nope.json")
    with pytest.raises(SaveError, match="is a folder"):
        saves.load(tmp_path)


def test_migration_path_is_used(tmp_path, monkeypatch):
    old = {
        "format": "dungeon-save",
        "version": 0,
        "story": {"premise": "Old.", "turns": [], "seed": 1},
    }
    monkeypatch.setitem(
        saves.MIGRATIONS, 0, lambda d: {**d, "version": 1, "story": {**d["story"], "memory": []}}
    )
    data = saves.loads(json.dumps(old))
    assert data.story.premise == "Old." and data.story.memory == []


def test_a_version_1_save_loads_with_every_candidate_shown():
    turn = {"action": "You wait.", "mode": "do", "chosen": 0, "candidates": []}
    turn["candidates"] = [{"text": "Rain.", "seed": 3, "flagged": False}]
    old = {
        "format": "dungeon-save",
        "version": 1,
        "story": {"premise": "Old.", "memory": [], "turns": [turn], "undone": [turn], "seed": 1},
    }
    story = saves.loads(json.dumps(old)).story
    assert story.turns[0].candidates[0].shown and story.undone[0].candidates[0].shown
    assert story.turns[0].ready == []


def test_escape_sequences_in_a_save_are_removed_on_load():
    doc = json.loads(saves.dumps(SaveData(Story(premise="Hi."))))
    doc["story"]["premise"] = "Hi.\x1b]0;owned\x07\x1b[2J"
    assert saves.loads(json.dumps(doc)).story.premise == "Hi."


def test_exports():
    story = played_story()
    text = saves.export_text(story)
    assert text.startswith("Pier\n\nYou stand on a pier at dusk.\n\n> You look at the boat.\n")
    md = saves.export_markdown(story)
    assert md.startswith("# Pier\n") and '> **You say "Ahoy."**' in md


# --- the world's state (version 3) -------------------------------------------------------------


def test_the_world_state_and_the_players_edits_round_trip(tmp_path):
    game = Game(FakeGenerator(["You take it. It is yours."]), Story(premise="You are Ada Quill."))
    game.act("take the lantern")
    game.edit_state("add", "silver coin")
    story = game.story
    assert story.state.names("inventory") == ["lantern", "silver coin"]
    path = tmp_path / "slot.json"
    saves.save(path, SaveData(story))
    loaded = saves.load(path).story
    assert loaded.state == story.state and loaded == story
    doc = json.loads(path.read_text())["story"]["state"]
    assert doc["inventory"][1] == {"name": "silver coin", "turn": 1, "by_player": True}
    assert doc["edits"] == [{"op": "add", "name": "silver coin", "after": 1}]
    # The game derives the same state again from the turns and the edits.
    assert Game(FakeGenerator(), loaded).story.state == story.state


def test_a_version_2_save_migrates_to_an_empty_state_the_game_fills_from_the_turns():
    turn = {"action": "You take the candle.", "mode": "do", "chosen": 0}
    turn["candidates"] = [{"text": "It is lit.", "seed": 3, "flagged": False, "shown": True}]
    old = {
        "format": "dungeon-save",
        "version": 2,
        "story": {"premise": "Old.", "memory": [], "turns": [turn], "undone": [], "seed": 1},
    }
    assert saves.MIGRATIONS[2](old)["story"]["state"]["edits"] == []
    story = saves.loads(json.dumps(old)).story
    assert story.state.inventory == () and story.state.edits == ()
    assert Game(FakeGenerator(), story).story.state.names("inventory") == ["candle"]
    # A version 1 save goes through both steps.
    old1 = {**old, "version": 1}
    del turn["candidates"][0]["shown"]
    assert saves.loads(json.dumps(old1)).story.turns[0].candidates[0].shown


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ("lots", "story.state should be"),
        ({"inventory": [], "people": [], "places": [], "edits": []}, "no 'condition'"),
        (
            {
                "inventory": [{"name": "key"}],
                "people": [],
                "places": [],
                "condition": [],
                "edits": [],
            },
            "story.state.inventory[0] has no 'turn'",
        ),
        (
            {
                **{k: [] for k in ("inventory", "people", "places", "condition")},
                "edits": [{"op": "burn", "name": "key", "after": 0}],
            },
            "story.state.edits[0].op is 'burn'",
        ),
    ],
)
def test_a_damaged_state_is_named_in_the_error(state, message):
    doc = json.loads(saves.dumps(SaveData(Story(premise="Hi."))))
    doc["story"]["state"] = state
    with pytest.raises(SaveError, match="damaged save") as err:
        saves.loads(json.dumps(doc))
    assert message in str(err.value)
