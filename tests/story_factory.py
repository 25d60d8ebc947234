"""Made-up stories and story folders for the corpus and fine-tuning tests."""

from __future__ import annotations

import random
from pathlib import Path

from dungeon.format import StoryFile, render_story_file

WORDS = [
    "lantern",
    "cellar",
    "river",
    "door",
    "key",
    "shadow",
    "wind",
    "stone",
    "bridge",
    "candle",
    "map",
    "rope",
    "tower",
    "gate",
    "moss",
    "iron",
    "bell",
    "ash",
    "owl",
    "coin",
]


def make_story(name: str, turns: int = 6, seed: int = 0, genre: str = "fantasy") -> StoryFile:
    rng = random.Random(f"{name}/{seed}")

    def words(n: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(n))

    premise = f"You are {name.replace('-', ' ')}, a courier. The {words(12)} waits for you."
    pairs = [
        (f"You {rng.choice(['open', 'take', 'climb', 'follow'])} the {rng.choice(WORDS)}.",
         f"The {words(10)} answers. You hear \"{words(3)}\" from the dark.")
        for _ in range(turns)
    ]  # fmt: skip
    return StoryFile(name, genre, ["test"], premise, pairs)


def write_corpus(folder: Path, names: list[str], val: list[str] | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / f"{name}.txt").write_text(render_story_file(make_story(name)), encoding="utf-8")
    if val is not None:
        lines = ["# held out", *(f"{n}.txt" for n in val)]
        (folder / "validation.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def prose(name: str, paragraphs: int = 4, seed: int = 0) -> str:
    """A made-up tale without any player turns, hard-wrapped as a text file would be."""
    rng = random.Random(f"prose/{name}/{seed}")
    paras = []
    for _ in range(paragraphs):
        words = " ".join(rng.choice(WORDS) for _ in range(30))
        paras.append(f"The {words}.".replace(" bridge ", " bridge\n"))  # a hard wrap
    return "\n\n".join(paras) + "\n"


def transcript(name: str, turns: int = 4, seed: int = 0) -> str:
    """A made-up transcript in AI Dungeon's style: raw player lines (``> look``), responses
    of several paragraphs."""
    rng = random.Random(f"transcript/{name}/{seed}")
    actions = ["look", "I open my bag", "x lamp", "go north", "say hello there", "take the rope"]
    parts = [f"You are {name}, a lamplighter. The {rng.choice(WORDS)} is cold."]
    for _ in range(turns):
        first = " ".join(rng.choice(WORDS) for _ in range(8))
        second = " ".join(rng.choice(WORDS) for _ in range(6))
        parts.append(f"> {rng.choice(actions)}\nThe {first}.\n\nA {second} waits.")
    return "\n\n".join(parts) + "\n"
