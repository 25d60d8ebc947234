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
