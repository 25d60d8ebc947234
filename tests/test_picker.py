"""The pickers (dungeon.picker): the story picker (the candidate that answers the action, whole
and fresh) and the adherence picker (the candidate the model finds most tied to the action)."""

import json

import pytest

from dungeon import FakeGenerator, Game, GameSettings, Story
from dungeon.context import Context
from dungeon.contrast import contrast_actions, guidance_contrast
from dungeon.format import turn_prefix
from dungeon.game import PickInfo, first_candidate
from dungeon.picker import (
    PICKERS,
    AdherencePicker,
    StoryPicker,
    echo,
    named_picker,
    pmi_scores,
    score,
)
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
    gen = FakeGenerator()
    assert named_picker("adherence", gen) == AdherencePicker(gen)
    assert named_picker("adherence").scorer is None
    with pytest.raises(
        ValueError, match="no picker named 'best'; choose one of: first, story, adh"
    ):
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


# --- the adherence picker -----------------------------------------------------------------------

STORY = "You stand in a dark hall.\n\n> You open the door.\nA cold draught blows in."


def turn_info(action: str, mode="do", story: str = STORY, recent=()) -> PickInfo:
    text = story + turn_prefix(action, mode)
    return PickInfo(action, mode, Context(text, 30, 1024, 0), tuple(recent))


class TableScorer:
    """A ContinuationScorer with set figures: the mean log-prob of text j after context i is
    ``real[j]`` after the turn's own action line and ``other[j]`` after any other."""

    def __init__(self, action_line: str, real: list[float], other: list[float]):
        self.action_line, self.real, self.other = action_line, real, other
        self.calls: list[list[str]] = []
        self.texts: list[list[str]] = []

    def score_continuations(self, contexts, texts, *, max_tokens=None):
        self.calls.append(list(contexts))
        self.texts.append(list(texts))
        return [
            [
                [(self.real if c.endswith(self.action_line) else self.other)[j]] * 3
                for j in range(len(texts))
            ]
            for c in contexts
        ]


def test_contrast_actions_are_a_neutral_one_and_the_previous_action():
    assert contrast_actions(turn_info("You light the lamp.")) == [
        "You look around.",
        "You open the door.",
    ]
    assert contrast_actions(turn_info("You light the lamp."), most=1) == ["You look around."]
    # The same action again: the one before that stands in; none earlier: only a neutral one.
    again = STORY + "\n\n> You light the lamp.\nIt flickers."
    assert (
        contrast_actions(turn_info("You light the lamp.", story=again))[1] == "You open the door."
    )
    assert contrast_actions(turn_info("You look around.", story="A hall.")) == ["You wait."]
    looked = STORY + "\n\n> You look around.\nDust."
    assert contrast_actions(turn_info("You sit.", story=looked)) == [
        "You wait.",
        "You look around.",
    ]
    assert contrast_actions(turn_info("", "continue")) == []
    assert contrast_actions(turn_info("The wind howls.", "story")) == []
    said = turn_info('You say "Hello?"', "say")
    assert contrast_actions(said) == ["You look around.", "You open the door."]


def test_guidance_contrasts_the_prompt_with_a_neutral_action_line():
    said = turn_info('You say "Hello?"', "say")
    assert guidance_contrast(said) == STORY + turn_prefix("You look around.", "do")
    assert guidance_contrast(turn_info("You look around.")) == STORY + turn_prefix(
        "You wait.", "do"
    )
    assert guidance_contrast(turn_info("", "continue")) is None


def test_pmi_is_the_log_prob_after_the_action_minus_after_the_contrasts():
    info = turn_info("You light the lamp.")
    scorer = TableScorer(turn_prefix("You light the lamp.", "do"), [-2.0, -3.0], [-2.5, -4.0])
    assert pmi_scores(scorer, info, ["a", "b"], contrasts=2) == pytest.approx([0.5, 1.0])
    (contexts,) = scorer.calls
    assert contexts[0] == info.context.text
    assert contexts[1:] == [
        STORY + turn_prefix("You look around.", "do"),
        STORY + turn_prefix("You open the door.", "do"),
    ]


def test_the_adherence_picker_takes_the_candidate_with_the_higher_pmi():
    action = "You draw your knife and step into the firelight."
    echoes = "You draw your knife and step into the firelight, and nothing else happens at all."
    answers = "The singing stops at once. Six faces turn to the blade in your hand, unsmiling."
    info = turn_info(action)
    assert StoryPicker()(info, [Candidate(echoes, 0), Candidate(answers, 1)]) == 0
    # The echo is likelier after any action; the answer gains more from this one.
    scorer = TableScorer(turn_prefix(action, "do"), [-1.5, -2.5], [-1.7, -3.1])
    picker = AdherencePicker(scorer)
    assert picker(info, [Candidate(echoes, 0), Candidate(answers, 1)]) == 1


def test_broken_text_loses_whatever_its_pmi():
    action = "You open the chest."
    fragment = "You open the chest and inside, under the letters, there is a"
    decides = "A moth flies out of the chest. You decide to read every letter aloud."
    good = "A moth flies out; beneath it lie letters tied with red string."
    line = turn_prefix(action, "do")
    scorer = TableScorer(line, [-1.0, -1.0, -3.0], [-3.0, -3.0, -3.1])
    cands = [Candidate(t, i) for i, t in enumerate([fragment, decides, good])]
    assert AdherencePicker(scorer)(turn_info(action), cands) == 2
    assert scorer.calls == []  # the only whole candidate needs no scores
    good_too = "A moth flies out. Under it lie letters tied with red string."
    cands.append(Candidate(good_too, 3))
    assert AdherencePicker(scorer)(turn_info(action), cands) == 2
    assert scorer.texts == [[good, good_too]]  # only the whole candidates were scored


def test_adherence_picker_settings_are_checked():
    with pytest.raises(ValueError, match="contrasts must be 1 or 2"):
        AdherencePicker(contrasts=3)
    with pytest.raises(ValueError, match="max_tokens must be 1 or more"):
        AdherencePicker(max_tokens=0)


class NoScores:
    """A backend with no ContinuationScorer (as a remote one)."""


def test_without_scores_the_adherence_picker_picks_as_the_story_picker():
    action = "You draw your knife and step into the firelight."
    texts = [
        "You throw yourself into the flames and hold your breath for a long time.",
        "The knife glints as you step into the firelight. The singing stops at once.",
    ]
    cands = [Candidate(t, i) for i, t in enumerate(texts)]
    for info in (turn_info(action), turn_info("", "continue")):
        want = StoryPicker()(info, cands)
        assert AdherencePicker(NoScores())(info, cands) == want == (1 if info.action else 0)
        assert AdherencePicker()(info, cands) == want
    # A scorer on a turn with no action line to swap is not asked.
    scorer = TableScorer("", [0.0, 0.0], [0.0, 0.0])
    AdherencePicker(scorer)(turn_info("", "continue"), cands)
    assert scorer.calls == []


def test_the_game_shows_what_the_adherence_picker_chose():
    script = [
        "A bird sings somewhere far away in the hills above the valley.",
        "You light the lamp. Its flame shows a narrow stair going down.",
    ]
    gen = FakeGenerator(script)  # its toy scores favour words already in the context
    settings = GameSettings(candidates=2)
    game = Game(gen, Story(premise="You stand in a dark hall.", seed=2), settings)
    game.picker = named_picker("adherence", gen)
    turn = game.act("light the lamp")
    assert turn.response == script[1] and turn.chosen == 1


def test_adherence_is_a_picker_for_play_and_eval(tmp_path, capsys):
    from dungeon import cli
    from dungeon.config import merge

    assert "adherence" in PICKERS
    args = cli.build_parser().parse_args(["play", "--model", "fake", "--picker", "adherence"])
    assert cli._options(args).picker == "adherence"
    assert merge({"picker": "adherence"}, {}).picker == "adherence"
    argv = ["eval", "--model", "fake", "--no-perplexity", "--limit", "1", "--judge", "fake"]
    assert cli.main([*argv, "--candidates", "2", "--picker", "adherence"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (figures["picker"], figures["candidates"], figures["crashes"]) == ("adherence", 2, 0)
