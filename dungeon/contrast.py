"""The actions a turn's own action is contrasted with: by the adherence picker (how much more
likely a candidate is after the player's action than after these) and by action guidance (a
second cache row that follows the neutral one). Pure text over a turn's context."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from dungeon.format import MARKER, turn_prefix

if TYPE_CHECKING:
    from dungeon.game import PickInfo


NEUTRAL_ACTIONS = ("You look around.", "You wait.")
"""Contrast actions that ask for nothing in particular (the second when the player's action is
the first)."""


def contrast_actions(turn: PickInfo, most: int = 2) -> list[str]:
    """The actions a candidate's answer to ``turn.action`` is contrasted with, at most ``most``:

    1. a neutral action ("You look around."): a response that would follow any action scores
       about zero against it, one with what this action asked for scores above;
    2. the story's latest earlier action that differs from this one, found in the context: a
       response that merely carries on from the last turn fits that action as well as this
       one, and one that answers this action fits it better.

    The eval's judge swaps in another action of the same script; at play time there is no
    script, and these two stand in for "any other action". On the continuity probes with 4
    candidates, the neutral one alone chose a little better than the previous one alone, and
    as well as the two together (docs/eval.md). Empty for a turn without an action line
    (story, continue) or a context that does not end with it.
    """
    if turn.mode not in ("do", "say") or not turn.action.strip():
        return []
    tail = turn_prefix(turn.action, turn.mode)
    if not turn.context.text.endswith(tail):
        return []
    before = turn.context.text[: len(turn.context.text) - len(tail)]
    earlier = re.findall(rf"\n\n{re.escape(MARKER)}([^\n]+)\n", before)
    current = turn.action.strip().lower()
    previous = next((a for a in reversed(earlier) if a.strip().lower() != current), None)
    taken = {current, previous.strip().lower() if previous else None}
    neutral = next(a for a in NEUTRAL_ACTIONS if a.lower() not in taken)
    return [neutral, *([previous] if previous else [])][:most]


def with_action(turn: PickInfo, action: str) -> str:
    """The turn's context with its action line swapped for ``action`` (a "do" line); the
    context must end with the turn's action line (``contrast_actions`` is not empty)."""
    context = turn.context.text
    stem = context[: len(context) - len(turn_prefix(turn.action, turn.mode))]
    return stem + turn_prefix(action, "do")


def guidance_contrast(turn: PickInfo) -> str | None:
    """The prompt action guidance contrasts the turn's own with: its context after a neutral
    action (the first of ``contrast_actions``); None for a turn without an action line."""
    others = contrast_actions(turn, 1)
    return with_action(turn, others[0]) if others else None
