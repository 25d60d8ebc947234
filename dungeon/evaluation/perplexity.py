"""Held-out perplexity: the validation stories scored token by token, exactly as play shows
them to the model (dungeon.format).

Two figures: ``perplexity`` on the fixed list (``stories/validation.txt``, comparable with
every earlier run) and ``perplexity_new`` on the other lists (``validation-new.txt``: the new
material). dungeon.corpus.sources says which stories each list holds out.
"""

from __future__ import annotations

import math
from pathlib import Path

from dungeon.context import ContextSettings
from dungeon.corpus.sources import VALIDATION_LIST, find_stories
from dungeon.format import read_story_file
from dungeon.generator import Scorer

PERPLEXITY_WINDOW = ContextSettings.budget
"""Tokens per perplexity window: play's default context budget."""


def _held_out(stories: Path):
    files = find_stories(stories)
    if files.problems:
        raise ValueError("\n".join(files.problems))
    if not files.held_out:
        raise ValueError(
            f"{stories}/validation.txt lists no stories: pass --stories with a corpus folder "
            "that has one (or --no-perplexity)"
        )
    return files


def validation_texts(stories: Path) -> list[str]:
    """The model text of every held-out story of ``stories``, whichever list holds it out."""
    return [read_story_file(path).model_text() for path in _held_out(stories).held_out]


def held_out_texts(stories: Path) -> tuple[list[str], list[str]]:
    """The model texts of the stories the fixed list holds out, and of those the other lists
    hold out (either may be empty, not both)."""
    files = _held_out(stories)
    fixed = {n for lst in files.lists if lst.path.name == VALIDATION_LIST for n in lst.names}
    texts: tuple[list[str], list[str]] = ([], [])
    for path in files.held_out:
        texts[files.name(path) not in fixed].append(read_story_file(path).model_text())
    return texts


def perplexity(scorer: Scorer, texts: list[str], *, window: int = PERPLEXITY_WINDOW) -> float:
    """Token-weighted perplexity of ``texts``, each followed by the end-of-text token.

    Texts longer than ``window`` tokens are read with a sliding window (each token scored
    once, with at least half a window of context: see Scorer.token_logprobs)."""
    logprobs = [
        lp for text in texts for lp in scorer.token_logprobs("", text, end=True, window=window)
    ]
    if not logprobs:
        raise ValueError("no tokens to score: the texts are empty")
    return math.exp(-math.fsum(logprobs) / len(logprobs))
