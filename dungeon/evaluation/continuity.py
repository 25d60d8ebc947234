"""Continuity probes: does a later response remember what an earlier turn established?

A probe is a playtest script with ``checks`` (dungeon/playtests/continuity-*.json). An early
turn establishes a fact (an object taken, a name given, a wound, a locked door); a later action
depends on it without naming it, and its check lists the words that show the fact was kept
(any one will do) and the phrases that contradict it::

    "checks": [{"turn": 5, "expect": ["rope", "coil"],
                "contradictions": ["without a rope", "you have no rope"]}]

A check passes when its turn's response holds an expected word and no contradiction; a probe
passes when every check does (a turn that crashed fails its check). Words and phrases match
whole words, ignoring case, curly quotes and runs of spaces.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Check:
    """What one turn of a probe must and must not say."""

    turn: int
    """The 1-based index of the checked input in the script."""
    expect: tuple[str, ...]
    """Words (or phrases) of the fact; the response needs at least one."""
    contradictions: tuple[str, ...] = ()
    """Phrases that contradict the fact; the response must hold none."""


@dataclass(frozen=True)
class CheckResult:
    found: tuple[str, ...]
    """The expected words the response holds."""
    contradicted: tuple[str, ...]
    """The contradictions the response holds."""

    @property
    def passed(self) -> bool:
        return bool(self.found) and not self.contradicted


def _normal(text: str) -> str:
    text = text.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')
    return " ".join(text.lower().split())


def holds(text: str, phrase: str) -> bool:
    """Whether ``phrase`` occurs in ``text`` as whole words (case and spacing ignored)."""
    words = _normal(phrase).split()
    if not words:
        return False
    pattern = r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)"
    return re.search(pattern, _normal(text)) is not None


def check_response(check: Check, text: str) -> CheckResult:
    return CheckResult(
        tuple(w for w in check.expect if holds(text, w)),
        tuple(c for c in check.contradictions if holds(text, c)),
    )


def parse_checks(raw: object, inputs: int) -> tuple[Check, ...]:
    """The ``checks`` of a script with ``inputs`` inputs; raises ValueError saying what is wrong."""
    if not isinstance(raw, list) or not raw:
        raise ValueError("'checks' must be a non-empty list")
    checks, turns = [], set()
    for n, item in enumerate(raw, 1):
        if not isinstance(item, dict):
            raise ValueError(f"check {n} must be an object with turn, expect, contradictions")
        turn = item.get("turn")
        if not isinstance(turn, int) or not 1 <= turn <= inputs:
            raise ValueError(f"check {n}: 'turn' must be an input's number, 1 to {inputs}")
        if turn in turns:
            raise ValueError(f"check {n}: turn {turn} is checked twice")
        turns.add(turn)
        expect, contra = item.get("expect"), item.get("contradictions", [])
        if not _strings(expect) or not expect:
            raise ValueError(f"check {n}: 'expect' must be a non-empty list of words")
        if not _strings(contra):
            raise ValueError(f"check {n}: 'contradictions' must be a list of phrases")
        checks.append(Check(turn, tuple(expect), tuple(contra)))
    return tuple(sorted(checks, key=lambda c: c.turn))


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)


class _Turn(Protocol):
    index: int
    response: str


@dataclass
class ProbeResult:
    """The outcome of one probe."""

    name: str
    passed: bool
    problems: list[str] = field(default_factory=list)
    """Why it failed: one line per failed check."""


def probe_result(name: str, checks: Sequence[Check], turns: Sequence[_Turn]) -> ProbeResult:
    """Judge a probe from its played turns (records with ``index`` and ``response``)."""
    by_index = {t.index: t for t in turns}
    problems = []
    for check in checks:
        turn = by_index.get(check.turn)
        if turn is None:
            problems.append(f"turn {check.turn}: not played (it crashed)")
            continue
        result = check_response(check, turn.response)
        if not result.found:
            problems.append(f"turn {check.turn}: none of {', '.join(check.expect)}")
        if result.contradicted:
            said = ", ".join(repr(c) for c in result.contradicted)
            problems.append(f"turn {check.turn}: contradicts the fact ({said})")
    return ProbeResult(name, not problems, problems)
