"""Action adherence: how much a response depends on the action that asked for it.

A fixed judge (by default the raw built-in base, without any adapter, so every model under
test is judged the same way) scores the response twice, in the context the Game built for the
turn: once after the real action, once with only the action line swapped for another turn's
action of the same playtest (dungeon.format.turn_prefix)::

    adherence = mean log p(response | context with its action)
              - mean log p(response | context with another turn's action)

in nats per token. Above zero, the response fits its own action better than another one: it
answers what the player did. Only "do" and "say" turns are measured (a story or continue turn
has no action line to swap). The other action is chosen deterministically (``other_action``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dungeon.format import Mode, turn_prefix
from dungeon.generator import Scorer

ACTION_MODES = ("do", "say")
"""The turns with an action line, the only ones adherence is measured on."""


def other_action(actions: Sequence[tuple[str, Mode]], index: int) -> int | None:
    """Which turn's action stands in for turn ``index`` (0-based): a "do" or "say" turn of
    the same script with a different action, half the script away (then the next one after
    that, wrapping around). None when the turn has no action line or no other action exists."""
    text, mode = actions[index]
    if mode not in ACTION_MODES:
        return None
    n = len(actions)
    start = index + max(1, n // 2)
    for step in range(n):
        j = (start + step) % n
        other, other_mode = actions[j]
        if j != index and other_mode in ACTION_MODES and other != text:
            return j
    return None


def mean_logprob(scorer: Scorer, prefix: str, text: str, *, window: int | None = None) -> float:
    """Mean log-probability per token of ``text`` after ``prefix``."""
    logprobs = scorer.token_logprobs(prefix, text, window=window)
    if not logprobs:
        raise ValueError("no tokens to score: the text is empty")
    return math.fsum(logprobs) / len(logprobs)


def adherence(
    judge: Scorer,
    context: str,
    action: tuple[str, Mode],
    other: tuple[str, Mode],
    response: str,
    *,
    window: int | None = None,
) -> float | None:
    """The judge's mean log-prob per token of ``response`` after ``context`` minus after the
    same context with its action line (``turn_prefix(*action)``, which the context ends with)
    swapped for ``turn_prefix(*other)``. None for an empty response."""
    tail = turn_prefix(*action)
    if not context.endswith(tail):
        raise ValueError("the context does not end with the turn's action line")
    if not response.strip():
        return None
    swapped = context[: len(context) - len(tail)] + turn_prefix(*other)
    real = mean_logprob(judge, context, response, window=window)
    return real - mean_logprob(judge, swapped, response, window=window)
