"""The playtest scripts shipped in dungeon/playtests/ (what ``dungeon eval`` plays): their shape
and the hard inputs they cover. Their genre coverage is checked where eval loads them."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import pytest

PLAYTEST_DIR = Path(str(resources.files("dungeon") / "playtests"))
PLAYTESTS = sorted(PLAYTEST_DIR.glob("*.json"))


@pytest.mark.parametrize("path", PLAYTESTS, ids=lambda p: p.stem)
def test_playtest_shape(path):
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data["name"] == path.stem
    assert isinstance(data["genre"], str) and data["genre"].strip()
    premise = data["premise"]
    assert isinstance(premise, str) and premise.startswith("You ")
    assert 3 <= len(re.findall(r"[.!?](?:\s|$)", premise)) <= 5
    inputs = data["inputs"]
    assert isinstance(inputs, list) and len(inputs) == 15
    assert all(isinstance(i, str) for i in inputs)
    assert not any(i.startswith("/") for i in inputs), "no slash commands in playtests"


def test_playtests_cover_the_hard_inputs():
    every = [i for p in PLAYTESTS for i in json.loads(p.read_text(encoding="utf-8"))["inputs"]]
    assert "" in every  # continue
    assert any(i.startswith('"') for i in every)  # speech
    assert any(i.startswith('"') and i.rstrip().endswith("?") for i in every)  # a question
    assert any(i.startswith("!") for i in every)  # story text
    assert any(re.match(r"I\b", i) or " my " in f" {i} " for i in every)  # first person
    assert any(i in {"n", "s", "e", "w", "u", "d", "l", "i", "z"} for i in every)  # terse
    assert any(300 <= len(i) <= 600 for i in every)  # long rambling
    repeats = 0
    for path in PLAYTESTS:
        typed = [i for i in json.loads(path.read_text(encoding="utf-8"))["inputs"] if i]
        repeats += len(typed) > len(set(typed))
    assert repeats >= 3  # the same action typed again
