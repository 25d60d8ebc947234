"""dungeon.evaluation.adherence: how much a response depends on its action, by a fixed judge."""

import pytest

from dungeon.evaluation.adherence import adherence, mean_logprob, other_action
from dungeon.evaluation.playtests import Playtest, run_playtests, script_actions
from dungeon.format import turn_prefix
from dungeon.generator import FakeGenerator

HALL = "You are in a hall."
LAMP = ("You take the lamp.", "do")
SIT = ("You sit down.", "do")


class KnownScorer:
    """-1 per token after the lamp action, -3 after any other: adherence is exactly 2."""

    def __init__(self):
        self.prefixes = []

    def token_logprobs(self, prefix, continuation, *, end=False, window=None):
        self.prefixes.append(prefix)
        lp = -1.0 if prefix.endswith(turn_prefix(*LAMP)) else -3.0
        return [lp] * len(continuation.split())


def test_adherence_is_the_difference_of_two_means_in_the_same_context():
    judge = KnownScorer()
    context = HALL + turn_prefix(*LAMP)
    assert adherence(judge, context, LAMP, SIT, "The lamp glows softly.") == 2.0
    # Only the action line was swapped: the rest of the context is the Game's.
    assert judge.prefixes == [context, HALL + turn_prefix(*SIT)]
    assert adherence(judge, HALL + turn_prefix(*SIT), SIT, LAMP, "It glows.") == -2.0
    assert adherence(judge, context, LAMP, SIT, "  ") is None  # nothing to score
    with pytest.raises(ValueError, match="action line"):
        adherence(judge, HALL + turn_prefix(*SIT), LAMP, SIT, "It glows.")


def test_adherence_on_the_fake_scorer_by_hand():
    """FakeGenerator scores a token seen before -1 and a new one -4; the tokens of "The lamp
    glows." are The, space, lamp, space, glows, full stop."""
    fake = FakeGenerator()
    context = HALL + turn_prefix(*LAMP)
    assert mean_logprob(fake, context, "The lamp glows.") == (-4 - 1 - 1 - 1 - 4 - 1) / 6
    assert mean_logprob(fake, HALL + turn_prefix(*SIT), "The lamp glows.") == -15 / 6
    assert adherence(fake, context, LAMP, SIT, "The lamp glows.") == pytest.approx(0.5)


def test_the_other_action_is_half_a_script_away_and_a_different_do_or_say():
    actions = [
        ("You look.", "do"),
        ("", "continue"),
        ('You say "Hi."', "say"),
        ("The wind rises.", "story"),
        ("You look.", "do"),
        ("You run.", "do"),
    ]
    assert [other_action(actions, i) for i in range(6)] == [5, None, 5, None, 2, 2]
    assert other_action([("You look.", "do")], 0) is None
    assert other_action([("You look.", "do"), ("You look.", "do")], 0) is None


def test_playtests_score_each_turn_in_the_context_the_game_built():
    test = Playtest(
        "t", "g", HALL, ["take the lamp", "", "sit down", "!The wind rises.", '"Hello?']
    )
    script = [
        "The lamp is warm.",
        "Dust falls.",
        "The chair creaks.",
        "Leaves blow in.",
        "No one answers.",
    ]
    gen, judge = FakeGenerator(script), FakeGenerator()
    result = run_playtests(gen, [test], judge=judge)
    actions = script_actions(test)
    assert actions[0] == LAMP and actions[1] == ("", "continue")
    scored = [(t.index, t.counterfactual) for t in result.turns if t.adherence is not None]
    assert scored == [(1, "sit down"), (3, '"Hello?'), (5, "sit down")]
    for i, other in [(0, 2), (2, 4), (4, 2)]:
        turn = result.turns[i]
        expected = adherence(judge, gen.prompts[i], actions[i], actions[other], turn.response)
        assert turn.adherence == round(expected, 4)
    summary = result.summary()
    values = [t.adherence for t in result.turns if t.adherence is not None]
    assert summary["adherence"] == round(sum(values) / 3, 4)
    assert summary["adherence_positive"] == round(sum(v > 0 for v in values) / 3, 4)
    assert run_playtests(FakeGenerator(script), [test]).summary()["adherence"] is None
