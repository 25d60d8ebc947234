"""Next-token sampling for the transformers backend: penalties, bans and filters on one logit row.

Every function takes a 1-D float32 tensor of logits (one per vocabulary entry) on the CPU and
an explicit ``torch.Generator``, so the same seed always picks the same token. The order is the
one Hugging Face uses: repetition penalty, bans, temperature, top-k, top-p, typical-p, sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from dungeon.generator import SamplingSettings


def penalize_repetition(logits: torch.Tensor, recent: Sequence[int], penalty: float) -> None:
    """In place: make recently seen tokens less likely, whatever the sign of their logit.

    Dividing a negative logit would make the token *more* likely, so positive logits are
    divided by the penalty and negative ones multiplied by it.
    """
    if penalty == 1.0 or not recent:
        return
    ids = torch.tensor(list(recent), dtype=torch.long)
    scores = logits.gather(0, ids)
    scores = torch.where(scores > 0, scores / penalty, scores * penalty)
    logits.scatter_(0, ids, scores)


def candidates(
    logits: torch.Tensor, settings: SamplingSettings
) -> tuple[torch.Tensor, torch.Tensor]:
    """The tokens that may be sampled and their probabilities: ``(probs, token_ids)``.

    Top-k runs first and cuts the vocabulary to k entries, so top-p and typical-p only ever
    sort a short row (the "static top-k" that keeps sampling cheap on a 50k vocabulary).
    """
    scores = logits / settings.temperature
    k = settings.top_k
    if 0 < k < scores.numel():
        values, ids = torch.topk(scores, k)
    else:
        values, ids = torch.sort(scores, descending=True)
    probs = torch.softmax(values, dim=0)
    if settings.top_p < 1.0:
        # Keep each token whose more likely predecessors hold less than top_p of the mass.
        before = probs.cumsum(0) - probs
        n = max(1, int((before < settings.top_p).sum()))
        values, ids = values[:n], ids[:n]
        probs = torch.softmax(values, dim=0)
    if settings.typical_p < 1.0 and values.numel() > 1:
        # Locally typical sampling: prefer tokens whose surprise is close to the entropy.
        logp = torch.log_softmax(values, dim=0)
        entropy = -(probs * logp).sum()
        order = torch.argsort((-logp - entropy).abs(), stable=True)
        mass = probs[order].cumsum(0)
        n = min(int((mass < settings.typical_p).sum()) + 1, values.numel())
        keep = order[:n]
        values, ids = values[keep], ids[keep]
        probs = torch.softmax(values, dim=0)
    return probs, ids


GUIDANCE_FLOOR = 0.1
"""Action guidance only chooses among tokens at least this likely, relative to the likeliest
token, after the player's action (an adaptive plausibility floor): the contrast may lift a
token the action favours, never one the model would not write there."""


def guide(
    logits: torch.Tensor,
    contrast: torch.Tensor,
    weight: float,
    *,
    banned: torch.Tensor | None = None,
) -> torch.Tensor:
    """Action guidance on one row: ``logits`` (after the player's action) plus ``weight``
    times each token's log-probability after the action minus after a neutral action
    (``contrast``, the same response's logits there), tokens under ``GUIDANCE_FLOOR`` of the
    likeliest token that is not ``banned`` ruled out (so some token always remains). A new
    tensor; weight 0 gives ``logits`` back unchanged in value."""
    if weight == 0.0:
        return logits.clone()
    allowed = logits
    if banned is not None and banned.numel():
        allowed = logits.index_fill(0, banned, float("-inf"))
        if not torch.isfinite(allowed).any():
            allowed = logits
    logp = torch.log_softmax(allowed, dim=-1)
    lift = logp - torch.log_softmax(contrast, dim=-1)
    out = logits + weight * lift
    return out.masked_fill_(logp < logp.max() + math.log(GUIDANCE_FLOOR), float("-inf"))


def pick_token(
    logits: torch.Tensor,
    settings: SamplingSettings,
    rng: torch.Generator,
    *,
    recent: Sequence[int] = (),
    banned: torch.Tensor | None = None,
) -> int:
    """Choose the next token id. ``logits`` is changed in place (penalties and bans)."""
    penalize_repetition(logits, recent, settings.repetition_penalty)
    if banned is not None and banned.numel():
        saved = logits.index_select(0, banned)
        logits.index_fill_(0, banned, float("-inf"))
        if not torch.isfinite(logits).any():  # everything banned: better a banned token than none
            logits.index_copy_(0, banned, saved)
    if settings.temperature == 0.0:
        return int(torch.argmax(logits))
    probs, ids = candidates(logits, settings)
    choice = torch.multinomial(probs, 1, generator=rng)
    return int(ids[choice])


def marker_token_ids(texts: Sequence[str]) -> list[int]:
    """Ids of the tokens whose text would start a player line: ``>`` first, or ``\\n>`` inside."""
    return [i for i, t in enumerate(texts) if t.startswith(">") or "\n>" in t]
