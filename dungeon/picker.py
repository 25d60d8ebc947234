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

The adherence picker (``AdherencePicker``) asks the model itself instead of the action's words:
how much more likely is each candidate after the player's action than after a contrast action
(pointwise mutual information, the MMI reranking idea), with the same penalties for broken text.
It needs a backend that can score continuations (dungeon.generator.ContinuationScorer: the local
transformers backend reads the prompt's cached keys and values once for every candidate); with
any other backend it picks as the story picker does.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from dungeon.cleanup import impersonates, incomplete, loop_score
from dungeon.contrast import contrast_actions, with_action
from dungeon.corpus.check import first_person_slip
from dungeon.game import PickInfo
from dungeon.generator import ContinuationScorer
from dungeon.story import Candidate

log = logging.getLogger(__name__)

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


def mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def pmi_scores(
    scorer: ContinuationScorer,
    turn: PickInfo,
    texts: Sequence[str],
    *,
    contrasts: int = 1,
    max_tokens: int | None = None,
) -> list[float] | None:
    """Each text's mean log-prob per token after the turn's context minus its mean over the
    contrast contexts (the action line swapped, see contrast_actions): nats per token, higher
    for a text that answers this action. None when the turn has no action line to swap."""
    others = contrast_actions(turn, contrasts)
    if not others:
        return None
    contexts = [turn.context.text, *(with_action(turn, a) for a in others)]
    scores = scorer.score_continuations(contexts, texts, max_tokens=max_tokens)
    return [
        mean(scores[0][j]) - mean([mean(scores[i][j]) for i in range(1, len(contexts))])
        for j in range(len(texts))
    ]


@dataclass(frozen=True)
class AdherencePicker:
    """A Game picker: the candidate the model finds most tied to the player's action.

    Each candidate gets its PMI (``pmi_scores``: mean log-prob after the real action minus
    after contrast actions) minus the story picker's repetition penalty; a candidate with
    fewer flaws (the story picker's incomplete, impersonation, first-person slip and length
    penalties) always comes first, so the picker never prefers broken text for its PMI (and
    only the candidates with the fewest flaws are scored). Ties go to the earlier candidate.

    ``scorer`` is the game's generator; without ContinuationScorer (a remote backend, a
    queue in front of the model), or on a turn with no action line, the choice is the story
    picker's. The PMI is the fine-tuned model's own, so the scores reuse the key/value cache
    the candidates were written from: about 0.5 s of CPU a turn for 3 candidates and 0.6 s
    for 4 on the built-in model, one thread (docs/eval.md, "Reranking candidates").
    """

    scorer: object | None = None
    weights: PickerWeights = PickerWeights()
    pmi: float = 4.0
    """Weight of the PMI (nats per token; candidates of one turn differ by about 0.05-0.3)."""
    contrasts: int = 1
    """Contrast actions per turn (1: a neutral one, 2: and the previous action); each adds a
    row per candidate to the scoring batch. On the continuity probes with 4 candidates, two
    chose no better than one (adherence 0.179 against 0.181) at 1.5 times the cost."""
    max_tokens: int | None = 48
    """Score only the first tokens of each candidate (the cost grows with them)."""

    def __post_init__(self) -> None:
        if self.contrasts not in (1, 2):
            raise ValueError(f"contrasts must be 1 or 2, got {self.contrasts}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be 1 or more (or None), got {self.max_tokens}")

    def __call__(self, turn: PickInfo, candidates: Sequence[Candidate]) -> int:
        texts = [c.text for c in candidates]
        parts = [score(turn, t, self.weights) for t in texts]
        if not isinstance(self.scorer, ContinuationScorer) or not contrast_actions(turn):
            totals = [p["total"] for p in parts]  # the story picker's choice
            return max(range(len(totals)), key=lambda i: (totals[i], -i))
        w = self.weights
        flaws = [
            w.incomplete * p["incomplete"]
            + w.impersonation * p["impersonation"]
            + w.slip * p["slip"]
            + w.length * p["length"]
            for p in parts
        ]
        # Only the candidates with the fewest flaws can be chosen, so only they are scored.
        fewest = [i for i, f in enumerate(flaws) if f == min(flaws)]
        if len(fewest) == 1:
            return fewest[0]
        pmis = pmi_scores(
            self.scorer,
            turn,
            [texts[i] for i in fewest],
            contrasts=self.contrasts,
            max_tokens=self.max_tokens,
        )
        assert pmis is not None  # the turn has contrast actions
        totals = {
            i: self.pmi * m - w.repetition * parts[i]["repetition"] for i, m in zip(fewest, pmis)
        }
        log.debug("adherence picker: pmi %s of candidates %s", [round(m, 3) for m in pmis], fewest)
        return max(fewest, key=lambda i: (totals[i], -i))


PICKERS = ("first", "story", "adherence")
"""The pickers a front end can name: ``first`` (the Game's default), ``story`` and
``adherence``."""


def named_picker(name: str, generator: object | None = None):
    """The picker called ``name`` (see PICKERS); a clear error for any other name.
    ``generator`` is the game's: the adherence picker scores the candidates with it."""
    from dungeon.game import first_candidate

    if name == "first":
        return first_candidate
    if name == "story":
        return StoryPicker()
    if name == "adherence":
        return AdherencePicker(generator)
    raise ValueError(f"no picker named {name!r}; choose one of: {', '.join(PICKERS)}")
