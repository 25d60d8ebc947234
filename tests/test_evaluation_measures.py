"""dungeon.evaluation.measures: the per-turn measures and the summary line."""

import json

from dungeon.evaluation.continuity import ProbeResult
from dungeon.evaluation.measures import (
    PlaytestResult,
    distinct_2,
    impersonates,
    incomplete,
    measure_turn,
    second_person_slip,
)


def test_measures():
    assert impersonates("The door opens. You decide to go inside.")
    assert impersonates('He waits. You say "Fine, I will go."')
    assert not impersonates("The guard says nothing and looks away.")
    assert impersonates("The hall is dark.> You light the lamp.")
    assert not impersonates("The sign reads -> EXIT. You follow it.")
    assert incomplete("The guard says nothing and") and not incomplete('He says "Go."')
    assert second_person_slip("I walk to the door. My hands shake.")
    assert not second_person_slip('You hear him say "I am here, my friend."')
    assert distinct_2("the cat the cat the cat") < distinct_2("the cat sat on a warm mat")


def test_a_turn_is_measured_against_the_recent_ones():
    looped = measure_turn(
        "t", 2, "look", "A cat sleeps on the mat.", ["A cat sleeps on the mat."], 0.5
    )
    assert looped.loop and not looped.empty and looped.adherence is None
    assert looped.continuity is None  # no check on this turn
    assert measure_turn("t", 3, "wait", "", [], 0.1).empty


def test_the_summary_has_adherence_and_continuity():
    result = PlaytestResult()
    for i, score in enumerate([0.5, -0.25, 1.0, None], 1):
        record = measure_turn("t", i, "look", f"Turn {i} ends.", [], float(i))
        record.adherence = score
        result.turns.append(record)
    result.probes = [ProbeResult("a", True), ProbeResult("b", False, ["turn 3: none of key"])]
    summary = result.summary()
    assert summary["adherence"] == round((0.5 - 0.25 + 1.0) / 3, 4)
    assert summary["adherence_positive"] == round(2 / 3, 4)  # turns without a score left out
    assert summary["continuity_passed"] == 1 and summary["continuity_total"] == 2
    assert summary["turns"] == 4 and summary["median_turn_s"] == 2.5
    json.dumps(summary)


def test_a_summary_without_scores_says_so():
    summary = PlaytestResult().summary()
    assert summary["adherence"] is None and summary["adherence_positive"] is None
    assert summary["continuity_passed"] == summary["continuity_total"] == 0
