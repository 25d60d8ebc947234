"""The per-turn measures of ``dungeon eval`` and the summary made from them (pure: no model).

Each played turn becomes a TurnRecord: whether the response writes a player action
(impersonation), is empty, ends mid-sentence, repeats a recent turn (a loop), slips out of the
second person, its distinct-2 ratio and latency; then, where they were measured, its action
adherence (dungeon.evaluation.adherence) and, on a continuity probe's check turn, whether the
check passed (dungeon.evaluation.continuity). ``PlaytestResult.summary`` is the summary line.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field

from dungeon.cleanup import impersonates, incomplete, loop_score
from dungeon.corpus.check import first_person_slip
from dungeon.evaluation.continuity import Check, ProbeResult, check_response
from dungeon.game import GameSettings

# A loop is judged as Game judges it: against the last few responses, by shared trigrams.
LOOP_THRESHOLD = GameSettings.loop_threshold
RECENT = GameSettings.loop_window


def second_person_slip(text: str) -> bool:
    return first_person_slip(text)


def distinct_2(text: str) -> float:
    words = re.findall(r"\w+", text.lower())
    pairs = list(zip(words, words[1:]))
    return len(set(pairs)) / len(pairs) if pairs else 0.0


@dataclass
class TurnRecord:
    """One played turn and its measures (one line of a ``--report``)."""

    playtest: str
    index: int
    """1-based, as in the script's inputs."""
    input: str
    response: str
    impersonation: bool
    empty: bool
    incomplete: bool
    loop: bool
    slip: bool
    distinct2: float
    seconds: float
    adherence: float | None = None
    """Mean log-prob per token of the response after its action minus after another turn's
    action, by the judge; None where not measured (no judge, a story or continue turn)."""
    counterfactual: str | None = None
    """The input whose action stood in for this turn's when adherence was measured."""
    continuity: bool | None = None
    """On a continuity probe's check turn: whether the check passed; else None."""


@dataclass
class PlaytestResult:
    turns: list[TurnRecord] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    probes: list[ProbeResult] = field(default_factory=list)
    """One outcome per continuity probe played."""

    def rate(self, attr: str) -> float:
        return sum(getattr(t, attr) for t in self.turns) / len(self.turns) if self.turns else 0.0

    def summary(self) -> dict:
        secs = [t.seconds for t in self.turns]
        scored = [t.adherence for t in self.turns if t.adherence is not None]
        return {
            "turns": len(self.turns),
            "crashes": len(self.crashes),
            "impersonation_rate": round(self.rate("impersonation"), 4),
            "empty_rate": round(self.rate("empty"), 4),
            "loop_rate": round(self.rate("loop"), 4),
            "incomplete_rate": round(self.rate("incomplete"), 4),
            "second_person_slip_rate": round(self.rate("slip"), 4),
            "distinct_2": round(statistics.fmean(t.distinct2 for t in self.turns), 4)
            if self.turns
            else 0.0,
            "median_turn_s": round(statistics.median(secs), 3) if secs else 0.0,
            "adherence": round(statistics.fmean(scored), 4) if scored else None,
            "adherence_positive": round(sum(a > 0 for a in scored) / len(scored), 4)
            if scored
            else None,
            "continuity_passed": sum(p.passed for p in self.probes),
            "continuity_total": len(self.probes),
        }


def measure_turn(
    playtest: str,
    index: int,
    raw: str,
    text: str,
    recent: list[str],
    seconds: float,
    *,
    check: Check | None = None,
) -> TurnRecord:
    """Every model-free measure of one response (``recent``: the responses before it in its
    game; ``check``: the continuity check of this turn, if it has one)."""
    return TurnRecord(
        playtest,
        index,
        raw,
        text,
        impersonation=impersonates(text),
        empty=not text.strip(),
        incomplete=incomplete(text),
        loop=loop_score(text, recent) >= LOOP_THRESHOLD,
        slip=second_person_slip(text),
        distinct2=distinct_2(text),
        seconds=seconds,
        continuity=check_response(check, text).passed if check is not None else None,
    )
