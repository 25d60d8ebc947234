"""The story picker (dungeon.picker): the candidate that answers the action, whole and fresh."""

import pytest

from dungeon import FakeGenerator, Game, GameSettings, Story
from dungeon.context import Context
from dungeon.game import PickInfo, first_candidate
from dungeon.picker import StoryPicker, echo, named_picker, score
from dungeon.story import Candidate

CONTEXT = Context("...", 3, 1024, 0, False, ())


def info(action: str, recent=()) -> PickInfo:
    return PickInfo(action, "do", CONTEXT, tuple(recent))


def pick(action: str, texts: list[str], recent=()) -> int:
    return StoryPicker()(info(action, recent), [Candidate(t, i) for i, t in enumerate(texts)])


def test_echo_finds_the_actions_words_by_stem():
    action = "You draw your knife and step into the firelight."
    assert echo(action, "The knife glints as you step into the light of the fire.") == 0.75
    assert echo(action, "You throw yourself into the flames.") == 0.0
    assert echo("", "Anything at all.") == 1.0  # a continue turn asks for nothing


def test_the_response_that_answers_the_action_wins():
    action = "You draw your knife and step into the firelight."
    ignores = "You throw yourself into the flames and hold your breath for a long time."
    answers = "The knife glints as you step into the firelight. The singing stops at once."
    assert pick(action, [ignores, answers]) == 1


def test_repeats_fragments_and_acting_for_the_player_lose():
    action = "You open the chest."
    recent = ["The chest is full of old letters tied with red string and dust."]
    repeat = "The chest is full of old letters tied with red string and dust."
    fragment = "You open the chest and inside, under the letters, there is a"
    decides = "You open the chest. You decide to read every letter aloud."
    good = "You open the chest. A moth flies out; beneath it lie letters in your hand."
    assert pick(action, [repeat, fragment, decides, good], recent) == 3
    parts = score(info(action, recent), fragment)
    assert parts["incomplete"] == 1.0 and parts["total"] < score(info(action), good)["total"]


def test_ties_keep_the_first_candidate():
    assert pick("You wait.", ["Rain falls on the roof all night.", "Snow falls on the roof."]) == 0


def test_named_pickers_and_a_bad_name():
    assert named_picker("first") is first_candidate
    assert isinstance(named_picker("story"), StoryPicker)
    with pytest.raises(ValueError, match="no picker named 'best'; choose one of: first, story"):
        named_picker("best")


def test_the_game_shows_what_the_story_picker_chose():
    script = [
        "A bird sings somewhere far away in the hills above the valley.",
        "You light the lamp. Its flame shows a narrow stair going down.",
    ]
    gen = FakeGenerator(script)
    game = Game(gen, Story(premise="You stand in a dark hall.", seed=2), GameSettings(candidates=2))
    game.picker = StoryPicker()
    turn = game.act("light the lamp")
    assert turn.response == script[1] and turn.chosen == 1
    assert [c.shown for c in turn.candidates] == [False, True]
