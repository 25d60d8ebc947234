"""The playtest scripts shipped in dungeon/playtests/ (what ``dungeon eval`` plays): their shape,
the hard inputs they cover, and the continuity probes (scripts with ``checks``). Their genre
coverage is checked where eval loads them."""

from __future__ import annotations

import json
import re
from collections import Counter
from importlib import resources
from pathlib import Path

import pytest

from dungeon.evaluation.continuity import holds

PLAYTEST_DIR = Path(str(resources.files("dungeon") / "playtests"))
ALL = sorted(PLAYTEST_DIR.glob("*.json"))
DATA = {p.stem: json.loads(p.read_text(encoding="utf-8")) for p in ALL}
PLAYTESTS = [p for p in ALL if "checks" not in DATA[p.stem]]
PROBES = [p for p in ALL if "checks" in DATA[p.stem]]


def check_common_shape(path: Path, data: dict) -> None:
    assert data["name"] == path.stem
    assert isinstance(data["genre"], str) and data["genre"].strip()
    premise = data["premise"]
    assert isinstance(premise, str) and premise.startswith("You ")
    assert 3 <= len(re.findall(r"[.!?](?:\s|$)", premise)) <= 5
    inputs = data["inputs"]
    assert isinstance(inputs, list) and all(isinstance(i, str) for i in inputs)
    assert not any(i.startswith("/") for i in inputs), "no slash commands in playtests"


@pytest.mark.parametrize("path", PLAYTESTS, ids=lambda p: p.stem)
def test_playtest_shape(path):
    data = DATA[path.stem]
    check_common_shape(path, data)
    assert len(data["inputs"]) == 15


def test_playtests_cover_the_hard_inputs():
    every = [i for p in PLAYTESTS for i in DATA[p.stem]["inputs"]]
    assert "" in every  # continue
    assert any(i.startswith('"') for i in every)  # speech
    assert any(i.startswith('"') and i.rstrip().endswith("?") for i in every)  # a question
    assert any(i.startswith("!") for i in every)  # story text
    assert any(re.match(r"I\b", i) or " my " in f" {i} " for i in every)  # first person
    assert any(i in {"n", "s", "e", "w", "u", "d", "l", "i", "z"} for i in every)  # terse
    assert any(300 <= len(i) <= 600 for i in every)  # long rambling
    repeats = 0
    for path in PLAYTESTS:
        typed = [i for i in DATA[path.stem]["inputs"] if i]
        repeats += len(typed) > len(set(typed))
    assert repeats >= 3  # the same action typed again


# --- continuity probes ------------------------------------------------------------------------


@pytest.mark.parametrize("path", PROBES, ids=lambda p: p.stem)
def test_continuity_probe_shape(path):
    """A short script: an early input establishes the fact, a later one depends on it without
    naming it, and its check lists the fact's words and what would contradict it."""
    data = DATA[path.stem]
    check_common_shape(path, data)
    assert path.stem.startswith("continuity-")
    assert data["kind"] in ("object", "name", "wound", "door")
    assert isinstance(data["fact"], str) and data["fact"].strip()
    inputs = data["inputs"]
    assert 4 <= len(inputs) <= 8 and all(i.strip() for i in inputs)
    assert data["checks"]
    for check in data["checks"]:
        assert set(check) == {"turn", "expect", "contradictions"}
        turn, expect = check["turn"], check["expect"]
        assert 3 <= turn <= len(inputs), "at least one turn between the fact and its check"
        assert expect and check["contradictions"]
        asked = inputs[turn - 1]
        assert not any(holds(asked, w) for w in expect), (
            f"the check's input names the fact: {asked}"
        )
        assert any(holds(i, w) for i in inputs[: turn - 1] for w in expect), "no input sets it up"


def test_the_continuity_probes_cover_every_kind_of_fact_and_many_genres():
    assert len(PROBES) >= 12
    kinds = Counter(DATA[p.stem]["kind"] for p in PROBES)
    assert set(kinds) == {"object", "name", "wound", "door"} and min(kinds.values()) >= 3
    assert len({DATA[p.stem]["genre"] for p in PROBES}) >= 10
