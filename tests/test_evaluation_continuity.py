"""dungeon.evaluation.continuity: checks of a later turn for a fact an earlier one set up."""

import json
from dataclasses import asdict

import pytest

from dungeon.evaluation.continuity import Check, check_response, holds, parse_checks, probe_result
from dungeon.evaluation.playtests import Playtest, load_playtests, rescore, run_playtests
from dungeon.generator import FakeGenerator

DOOR = Check(4, ("bolt", "bolted", "locked"), ("the door is open", "door swings open"))


def test_words_and_phrases_match_whole_words_in_any_case_and_spacing():
    assert holds("The BOLT holds.", "bolt")
    assert not holds("A thunderbolt falls.", "bolt")
    assert holds("You see that the door\n  is open.", "the door is open")
    assert holds("You don’t know the password.", "you don't know the password")
    assert not holds("The door is opening.", "the door is open")


def test_a_check_passes_with_a_fact_word_and_no_contradiction():
    assert check_response(DOOR, "Something rattles the bolt, but it holds.").passed
    missing = check_response(DOOR, "Footsteps stop outside. Silence.")
    assert not missing.passed and missing.found == ()
    both = check_response(DOOR, "The bolt snaps and the door swings open.")
    assert (
        not both.passed and both.found == ("bolt",) and both.contradicted == ("door swings open",)
    )


def test_checks_are_read_and_refused_with_a_reason():
    raw = [
        {"turn": 4, "expect": ["bolt"], "contradictions": ["door is open"]},
        {"turn": 3, "expect": ["key"]},
    ]
    assert parse_checks(raw, 4) == (Check(3, ("key",), ()), Check(4, ("bolt",), ("door is open",)))
    for bad, why in [
        ([], "non-empty list"),
        ([{"turn": 5, "expect": ["a"]}], "1 to 4"),
        ([{"turn": 2, "expect": []}], "'expect'"),
        ([{"turn": 2, "expect": ["a"], "contradictions": "b"}], "'contradictions'"),
        ([{"turn": 2, "expect": ["a"]}, {"turn": 2, "expect": ["b"]}], "twice"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_checks(bad, 4)


def test_a_probe_fails_on_any_failed_check_or_a_crashed_turn():
    class T:
        def __init__(self, index, response):
            self.index, self.response = index, response

    second = Check(5, ("key",), ())
    good = [T(4, "The bolt holds."), T(5, "You turn the key.")]
    assert probe_result("p", [DOOR, second], good).passed
    bad = probe_result("p", [DOOR, second], [T(4, "The door is open. The bolt hangs loose.")])
    assert not bad.passed
    assert bad.problems == [
        "turn 4: contradicts the fact ('the door is open')",
        "turn 5: not played (it crashed)",
    ]


PROBE = Playtest(
    "probe",
    "horror",
    "You are in a farmhouse kitchen.",
    ["bolt the cellar door", "light a candle", "!Footsteps climb the stairs.", "listen"],
    (DOOR,),
    "the cellar door is bolted",
)


@pytest.mark.parametrize(
    "check_turn, passed",
    [
        ("Something pulls at the door, but the bolt holds.", True),
        ("Nothing but silence from below.", False),  # the fact is missing
        ("The bolt is drawn back and the door swings open.", False),  # a contradiction
    ],
)
def test_a_probe_played_through_the_game(check_turn, passed):
    script = ["You slide the bolt.", "The candle flares.", "They come closer.", check_turn]
    result = run_playtests(FakeGenerator(script), [PROBE])
    assert [t.continuity for t in result.turns] == [None, None, None, passed]
    assert result.summary()["continuity_passed"] == int(passed)
    assert result.summary()["continuity_total"] == 1
    # Rescoring a report judges the probe again from the scripts, with no model.
    lines = [json.dumps(asdict(t)) for t in result.turns]
    again = rescore(lines, [PROBE])
    assert again.summary() == result.summary() and again.probes == result.probes
    assert rescore(lines).summary()["continuity_total"] == 0  # without the scripts: none


def test_the_shipped_probes_load_with_their_checks():
    probes = [t for t in load_playtests() if t.checks]
    assert len(probes) >= 12
    assert all(t.fact and t.check_at(t.checks[0].turn) is t.checks[0] for t in probes)
    assert all(not t.checks for t in load_playtests() if not t.name.startswith("continuity-"))
