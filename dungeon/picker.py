"""The story picker: which of a turn's candidates answers the player best.

``Game(candidates=n)`` writes n responses in one batch; a picker chooses the one shown. This one
scores each candidate on what a reader notices, all cheap, pure text measures:

- **answers the action**: the action's content words ("draw", "knife", "firelight") or their
  stems come back in the response; a response that ignores what the player did scores low;
- **no repetition**: word trigrams shared with the last few responses (cleanup's loop score);
- **whole sentences**: the response ends a sentence;
- **sane length**: neither a few words nor a wall of text;
- **the player stays the player**: no narrating the player's next choice or words, no slip
  into the first person.

Use it as ``Game(..., picker=StoryPicker())`` or ``game.picker = StoryPicker()``; the weights
are a dataclass, so a game can tune them. The default Game picker keeps the first candidate.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from dungeon.cleanup import impersonates, incomplete, loop_score
from dungeon.corpus.check import first_person_slip
from dungeon.game import PickInfo
from dungeon.story import Candidate

# Words that say nothing about what the player did.
STOPWORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "you",
        "your",
        "yours",
        "yourself",
        "to",
        "of",
        "in",
        "on",
        "at",
        "by",
        "for",
        "with",
        "from",
        "into",
        "onto",
        "over",
        "under",
        "up",
        "down",
        "out",
        "off",
        "and",
        "or",
        "but",
        "so",
        "then",
        "than",
        "as",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "it",
        "its",
        "this",
        "that",
        "these",
        "those",
        "there",
        "here",
        "some",
        "any",
        "all",
        "my",
        "me",
        "i",
        "he",
        "she",
        "they",
        "them",
        "his",
        "her",
        "their",
        "him",
        "what",
        "who",
        "how",
        "do",
        "does",
        "did",
        "not",
        "no",
        "can",
        "could",
        "would",
        "should",
        "will",
        "just",
        "very",
        "again",
        "around",
        "say",
        "says",
    ]
)
SHORT_WORDS, LONG_WORDS = 8, 110


@dataclass(frozen=True)
class PickerWeights:
    """How much each measure counts (a candidate's score is the weighted sum)."""

    echo: float = 2.0
    """Share of the action's content words (by stem) found in the response, 0 to 1."""
    repetition: float = 3.0
    """Penalty per unit of loop score against the recent responses, 0 to 1."""
    incomplete: float = 1.0
    """Penalty for a response that stops mid-sentence."""
    length: float = 0.5
    """Penalty for a response shorter than SHORT_WORDS or longer than LONG_WORDS words."""
    impersonation: float = 2.0
    """Penalty for writing the player's next action or words."""
    slip: float = 1.0
    """Penalty for narration in the first person."""


def content_stems(text: str) -> set[str]:
    """The content words of ``text`` cut to a stem, their first four letters: "knives" ~
    "knife", "firelight" ~ "fire"."""
    words = re.findall(r"[a-z']+", text.lower())
    return {w[:4] for w in words if len(w) > 2 and w not in STOPWORDS}


def echo(action: str, response: str) -> float:
    """How much of the action the response takes up: the share of its content stems found."""
    wanted = content_stems(action)
    if not wanted:
        return 1.0  # a continue turn, or "You wait.": nothing to answer
    return len(wanted & content_stems(response)) / len(wanted)


def score(turn: PickInfo, text: str, weights: PickerWeights = PickerWeights()) -> dict[str, float]:
    """Every measure of one candidate, and the weighted ``total``."""
    words = len(text.split())
    parts = {
        "echo": echo(turn.action, text),
        "repetition": loop_score(text, list(turn.recent)),
        "incomplete": float(incomplete(text)),
        "length": float(words < SHORT_WORDS or words > LONG_WORDS),
        "impersonation": float(impersonates(text)),
        "slip": float(first_person_slip(text)),
    }
    parts["total"] = (
        weights.echo * parts["echo"]
        - weights.repetition * parts["repetition"]
        - weights.incomplete * parts["incomplete"]
        - weights.length * parts["length"]
        - weights.impersonation * parts["impersonation"]
        - weights.slip * parts["slip"]
    )
    return parts


@dataclass(frozen=True)
class StoryPicker:
    """A Game picker: the candidate with the best score; ties go to the earlier one."""

    weights: PickerWeights = PickerWeights()

    def __call__(self, turn: PickInfo, candidates: Sequence[Candidate]) -> int:
        totals = [score(turn, c.text, self.weights)["total"] for c in candidates]
        return max(range(len(totals)), key=lambda i: (totals[i], -i))


PICKERS = ("first", "story")
"""The pickers a front end can name: ``first`` (the Game's default) and ``story``."""


def named_picker(name: str):
    """The picker called ``name`` (see PICKERS); a clear error for any other name."""
    from dungeon.game import first_candidate

    if name == "first":
        return first_candidate
    if name == "story":
        return StoryPicker()
    raise ValueError(f"no picker named {name!r}; choose one of: {', '.join(PICKERS)}")
