"""Scoring text with a transformers model: the Scorer protocol for TransformersGenerator.

    from dungeon.hf_scoring import token_logprobs
    logprobs = token_logprobs(generator, "You are in a hall.\\n\\n> You look around.\\n", "It is dark.")

``token_logprobs(generator, ...)`` is what ``TransformersGenerator.token_logprobs`` does (see
dungeon.generator.Scorer). It reads the model without touching the generator's key/value cache,
and in float32 where the model keeps half-precision decode copies (dungeon.cpu_decode), so a
score does not depend on how the text was cut into windows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dungeon.cpu_decode import full_precision


def token_logprobs(
    generator, prefix: str, continuation: str, *, end: bool = False, window: int | None = None
) -> list[float]:
    """The log-probability of each token of ``continuation`` after ``prefix`` (see Scorer).

    ``generator`` is a TransformersGenerator (its ``model``, ``tokenizer``, ``encode`` and
    ``context_window`` are used). Prefix and continuation are tokenized apart, as play does
    with a prompt and the response that follows it.
    """
    context = generator.encode(prefix) if prefix else []
    target = generator.encode(continuation)
    eos = getattr(generator.tokenizer, "eos_token_id", None)
    if end and eos is not None:
        target.append(eos)
    window = min(window or generator.context_window, generator.context_window)
    return score_ids(generator.model, [*context, *target], max(len(context), 1), window)


def score_ids(model, ids: Sequence[int], first: int, window: int) -> list[float]:
    """Log-probabilities of ``ids[first:]``, each given the tokens before it, at most ``window``
    tokens per forward pass.

    A text longer than the window is read in windows that overlap by ``window - window // 2``
    tokens: each token is scored once, by the first window that reaches it, with at least that
    many tokens of context carried over.
    """
    if window < 2:
        raise ValueError(f"window must be 2 tokens or more, got {window}")
    first = max(first, 1)  # the first token has no context to be predicted from
    carried = window - window // 2
    device = next(model.parameters()).device
    out: list[float] = []
    scored_upto = first
    start = max(0, first - carried)
    with torch.inference_mode(), full_precision(model):
        while scored_upto < len(ids):
            end = min(start + window, len(ids))
            chunk = torch.tensor([ids[start:end]], dtype=torch.long, device=device)
            logits = model(input_ids=chunk).logits[0, :-1].float()
            # Position p of the logits predicts token start + p + 1; keep the unscored ones.
            keep = slice(scored_upto - start - 1, None)
            targets = chunk[0, 1:][keep]
            logprobs = logits[keep].log_softmax(-1).gather(-1, targets.unsqueeze(-1))
            out.extend(logprobs.squeeze(-1).cpu().tolist())
            scored_upto = end
            start = end - carried
    return out
