"""The scripted playtests of ``dungeon eval``: load them, play them through the Game API, and
measure a saved report again.

A script (``dungeon/playtests/*.json``) is a premise and the player's inputs::

    {"name": "fantasy-bridge", "genre": "fantasy", "premise": "You are ...",
     "inputs": ["look around", "\\"Who are you?", "x box", "", "!The box glows.", ...]}

A continuity probe adds the fact it sets up and the checks of the later turns that depend on
it (``"fact"``, ``"checks"``: see dungeon.evaluation.continuity). Every turn is measured
(dungeon.evaluation.measures); with a judge, its action adherence too
(dungeon.evaluation.adherence), in the context the Game built for that turn.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from dungeon.actions import make_action
from dungeon.commands import parse_input
from dungeon.evaluation.adherence import ACTION_MODES, adherence, other_action
from dungeon.evaluation.continuity import Check, parse_checks, probe_result
from dungeon.evaluation.measures import RECENT, PlaytestResult, TurnRecord, measure_turn
from dungeon.format import Mode
from dungeon.game import Game, GameSettings, Picker
from dungeon.generator import Generator, Scorer
from dungeon.story import Story


@dataclass(frozen=True)
class Playtest:
    name: str
    genre: str
    premise: str
    inputs: list[str]
    checks: tuple[Check, ...] = ()
    """A continuity probe's checks (empty for a plain script)."""
    fact: str = ""
    """A continuity probe's fact, in words (for people reading a failure)."""

    def check_at(self, index: int) -> Check | None:
        """The check of input ``index`` (1-based), if it has one."""
        return next((c for c in self.checks if c.turn == index), None)


def load_playtests(folder: Path | None = None) -> list[Playtest]:
    """The shipped playtest scripts (or those in ``folder``), sorted by name."""
    if folder is not None:
        entries = [
            (p.name, p.read_text(encoding="utf-8")) for p in sorted(Path(folder).glob("*.json"))
        ]
    else:
        base = resources.files("dungeon") / "playtests"
        entries = [
            (e.name, e.read_text(encoding="utf-8"))
            for e in sorted(base.iterdir(), key=lambda e: e.name)
            if e.name.endswith(".json")
        ]
    tests = []
    for name, text in entries:
        try:
            data = json.loads(text)
            inputs = list(data["inputs"])
            checks = parse_checks(data["checks"], len(inputs)) if "checks" in data else ()
            tests.append(
                Playtest(
                    data["name"],
                    data.get("genre", ""),
                    data["premise"],
                    inputs,
                    checks,
                    data.get("fact", ""),
                )
            )
        except (ValueError, KeyError, TypeError) as err:  # JSONDecodeError is a ValueError
            raise ValueError(f"playtest {name}: not a playtest script ({err})") from None
    return tests


def script_actions(test: Playtest) -> list[tuple[str, Mode]]:
    """Each input as the Game reads it: (action text, mode)."""
    out = []
    for raw in test.inputs:
        parsed = parse_input(raw)
        action = make_action(parsed.text, parsed.mode if parsed.kind == "action" else "do")
        out.append((action.text, action.mode))
    return out


def story_seed(seed: int, name: str) -> int:
    """The story seed of script ``name`` in a run with ``seed``: made from the name, not the
    script's place in the list, so a script plays the same turns whichever scripts run with it
    (``--limit``, ``--continuity-only``, another folder)."""
    return zlib.crc32(f"{seed}/{name}".encode()) & 0x7FFFFFFF


def run_playtests(
    generator: Generator,
    playtests: Sequence[Playtest],
    *,
    seed: int = 0,
    settings: GameSettings | None = None,
    judge: Scorer | None = None,
    picker: Picker | None = None,
    new_game: Callable[[Generator, Story], Game] | None = None,
    progress: Callable[[str], None] | None = None,
    on_turn: Callable[[TurnRecord], None] | None = None,
) -> PlaytestResult:
    """Play every script through the Game API and record each turn (``on_turn(record)`` as
    each one is played, so a long run's report survives an interruption).

    ``judge`` measures each turn's action adherence; ``picker`` chooses among a turn's
    candidates (the Game's default when None). ``new_game(generator, story)``, when given,
    makes each Game instead (``dungeon eval`` passes play's own, dungeon.startup.make_game),
    and ``settings`` and ``picker`` are not used."""
    result = PlaytestResult()
    extra = {"picker": picker} if picker is not None else {}
    for test in playtests:
        story = Story(premise=test.premise, seed=story_seed(seed, test.name))
        if new_game is not None:
            game = new_game(generator, story)
        else:
            game = Game(generator, story, settings, **extra)
        actions = script_actions(test)
        played: list[TurnRecord] = []
        for i, raw in enumerate(test.inputs):
            parsed = parse_input(raw)
            mode = parsed.mode if parsed.kind == "action" else "do"
            recent = [t.response for t in game.story.turns[-RECENT:]]
            started = time.perf_counter()
            try:
                turn = game.act(parsed.text, mode)
            except Exception as err:  # a crash is a finding, not the end of the eval
                result.crashes.append(f"{test.name} turn {i + 1}: {type(err).__name__}: {err}")
                continue
            seconds = time.perf_counter() - started
            record = measure_turn(
                test.name, i + 1, raw, turn.response, recent, seconds, check=test.check_at(i + 1)
            )
            other = other_action(actions, i)
            if judge is not None and other is not None and turn.mode in ACTION_MODES:
                score = adherence(
                    judge,
                    game.last_context.text,
                    (turn.action, turn.mode),
                    actions[other],
                    turn.response,
                )
                if score is not None:
                    record.adherence = round(score, 4)
                    record.counterfactual = test.inputs[other]
            played.append(record)
            result.turns.append(record)
            if on_turn:
                on_turn(record)
            if progress:
                progress(f"{test.name} {i + 1}/{len(test.inputs)}")
        if test.checks:
            result.probes.append(probe_result(test.name, test.checks, played))
    return result


def rescore(lines: Sequence[str], playtests: Sequence[Playtest] = ()) -> PlaytestResult:
    """Measure the turns of a saved report (``--report``) again, with this version's measures.

    The responses, inputs, latencies and adherence come from the report; no model runs. The
    continuity checks come from ``playtests`` (the scripts the report was played from), matched
    by name. Crashes are not in a report, so the result has none."""
    result = PlaytestResult()
    probes = {t.name: t for t in playtests if t.checks}
    history: dict[str, list[TurnRecord]] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            name, text, index = row["playtest"], row["response"], row["index"]
            probe = probes.get(name)
            record = measure_turn(
                name,
                index,
                row["input"],
                text,
                [t.response for t in history.get(name, [])[-RECENT:]],
                row["seconds"],
                check=probe.check_at(index) if probe else None,
            )
            record.adherence = row.get("adherence")
            record.counterfactual = row.get("counterfactual")
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"report line {n}: not a turn record ({err})") from None
        history.setdefault(name, []).append(record)
        result.turns.append(record)
    for name, records in history.items():
        if name in probes:
            result.probes.append(probe_result(name, probes[name].checks, records))
    return result
