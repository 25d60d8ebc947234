"""Scoring several texts after several contexts that share most of their text, in one batch.

The adherence picker (dungeon.picker) asks, once a turn's candidates are written: how likely is
each candidate after the turn's real action line, and after a contrast action line? Those
contexts are the turn's prompt with only its last line changed, and the generator's key/value
cache already holds the prompt. So nothing is read twice::

    ids    = tokenize(each context)                 # they share a long token prefix
    shared = the common prefix of them all          # ~900 tokens, already in the cache
    rows   = [context_i[shared:] + text_j]           # ~10 + ~50 tokens each
    logits = model(rows) over the cached prefix     # one batched forward; the cache is read,
                                                    # never written

``score_continuations(generator, contexts, texts)`` is what
``TransformersGenerator.score_continuations`` does (see dungeon.generator.ContinuationScorer):
``scores[i][j]`` are the log-probs of the tokens of ``texts[j]`` after ``contexts[i]``, as
``token_logprobs(contexts[i], texts[j])`` gives them (context and text tokenized apart), up to
the rounding of the decode path's weights. On LlamaDecoder (the built-in model) the rows run
on the decoder's own layers over its cache; on any other model, transformers' forward runs
them over a copy of the cached prefix. A prefix the cache does not hold is run once, for this
call only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dungeon.cpu_decode import full_precision
from dungeon.fast_decode import LlamaDecoder, flash, rope

HEAD_CHUNK = 256
"""Positions per output-layer product (bounds the float32 logits held at once)."""


def _common(seqs: Sequence[Sequence[int]]) -> int:
    n = min(len(s) for s in seqs)
    first = seqs[0]
    i = 0
    while i < n and all(s[i] == first[i] for s in seqs):
        i += 1
    return i


def score_continuations(
    generator,
    contexts: Sequence[str],
    texts: Sequence[str],
    *,
    max_tokens: int | None = None,
) -> list[list[list[float]]]:
    """``scores[i][j]``: the log-probability of each token of ``texts[j]`` after
    ``contexts[i]`` (only the first ``max_tokens`` tokens when given; none for an empty text).

    ``generator`` is a TransformersGenerator; its cache and the ids it records are left as they
    were, so the next generation is the one it would have been.
    """
    if not contexts or not texts:
        return [[[] for _ in texts] for _ in contexts]
    ctx_ids = [generator.encode(c) or [_start_id(generator)] for c in contexts]
    text_ids = [generator.encode(t) for t in texts]
    if max_tokens is not None:
        text_ids = [ids[:max_tokens] for ids in text_ids]
    # The longest row must fit the window: cut every context by the same leading tokens.
    longest = max(len(c) for c in ctx_ids) + max(len(t) for t in text_ids)
    drop = max(0, longest - generator.context_window)
    if drop:
        ctx_ids = [c[drop:] for c in ctx_ids]
    # Every row keeps at least its context's last token: its logits score the text's first.
    shared = min(_common(ctx_ids), min(len(c) for c in ctx_ids) - 1)
    prefix = ctx_ids[0][:shared]
    rows, firsts, targets, where = [], [], [], []
    for i, ctx in enumerate(ctx_ids):
        for j, ids in enumerate(text_ids):
            if not ids:
                continue
            own = ctx[shared:]
            rows.append(own + ids)
            firsts.append(len(own) - 1)  # the position whose logits predict ids[0]
            targets.append(ids)
            where.append((i, j))
    scores: list[list[list[float]]] = [[[] for _ in texts] for _ in contexts]
    if not rows:
        return scores
    with torch.inference_mode():
        runner = generator.runner
        if isinstance(runner, LlamaDecoder):
            hidden = _llama_rows(generator, runner, prefix, rows)
            logprobs = _llama_logprobs(runner, hidden, rows, firsts, targets)
        else:
            logprobs = _hf_logprobs(generator, prefix, rows, firsts, targets)
    for (i, j), values in zip(where, logprobs):
        scores[i][j] = values
    return scores


def _start_id(generator) -> int:
    start = generator.tokenizer.bos_token_id
    return start if start is not None else generator.stop_token_ids[0]


def _cached_length(generator, runner, prefix: list[int]) -> int:
    """How many tokens of ``prefix`` the runner's shared (one-row) cache holds."""
    held = generator._row_ids
    if held is None or not held or [len(r) for r in held] != runner.lengths:
        return 0  # unknown (an interrupted forward) or out of step: read nothing from it
    shared = getattr(runner, "shared", runner.length)  # LlamaDecoder: the part all rows share
    return min(_common([r[:shared], prefix]) for r in held)


# --- LlamaDecoder -------------------------------------------------------------------------------


def _llama_rows(generator, dec, prefix: list[int], rows: list[list[int]]) -> torch.Tensor:
    """The final hidden states of ``rows`` after ``prefix``, packed: (sum of row lengths,
    hidden), row after row."""
    cached = _cached_length(generator, dec, prefix) if dec.cache else 0
    if cached:
        past = [(c[0, :, :, :cached], c[1, :, :, :cached]) for c in dec.cache]
    else:
        shape = (1, dec.kv_heads, 0, dec.head_dim)
        past = [(torch.empty(shape, dtype=dec.dtype),) * 2 for _ in dec.layers]
    if cached < len(prefix):  # not in the cache: run it once, for this call only
        _, new = _llama_forward(dec, [prefix[cached:]], past, cached, keep=True)
        past = [
            (torch.cat([pk, nk], 2), torch.cat([pv, nv], 2))
            for (pk, pv), (nk, nv) in zip(past, new)
        ]
    hidden, _ = _llama_forward(dec, rows, past, len(prefix), keep=False)
    return hidden


def _llama_forward(dec, rows: list[list[int]], past, start: int, *, keep: bool):
    """LlamaDecoder's layers over ``rows``, each after ``past`` (one row of keys and values
    per layer, ``start`` positions), written to no cache.

    The rows are packed into one sequence for the products (no padding), and each row's
    positions start at ``start``. Returns the last layer's output (tokens, hidden) and, with
    ``keep``, each layer's new keys and values."""
    lengths = [len(r) for r in rows]
    n = sum(lengths)
    row_of = torch.repeat_interleave(torch.arange(len(rows)), torch.tensor(lengths))
    offset = torch.cat([torch.arange(k) for k in lengths])
    end = start + max(lengths)
    cos_table, sin_table = dec.rotary_upto(end)
    h_q, h_kv, d = dec.heads, dec.kv_heads, dec.head_dim
    groups = h_q // h_kv
    cos = cos_table[start + offset].view(1, n, 1, d)
    sin = sin_table[start + offset].view(1, n, 1, d)
    # Attention in two parts merged by log-sum-exp: the past, which every token sees whole
    # (the queries of all rows in one product), and each row's own tokens, causal (the rows
    # padded to the longest: a real token never sees a pad after it).
    width = max(lengths)
    causal = torch.ones(width, width, dtype=torch.bool).tril().repeat_interleave(groups, dim=0)
    bias = torch.zeros(causal.shape, dtype=dec.dtype).masked_fill_(~causal, float("-inf"))
    x = F.embedding(torch.tensor([t for r in rows for t in r]), dec.embed)
    new = []
    for (ln1, qkv, o, ln2, gate_up, down), (pk, pv) in zip(dec.layers, past):
        h = F.rms_norm(x, (x.shape[-1],), ln1, dec.eps)
        y = qkv(h).view(1, n, h_q + 2 * h_kv, d)
        qk = rope(y[:, :, : h_q + h_kv], cos, sin)[0]
        q = qk[:, :h_q].view(n, h_kv, groups, d)
        k, v = qk[:, h_q:], y[0, :, h_q + h_kv :]  # (n, h_kv, d)
        if keep:
            new.append((k.transpose(0, 1)[None], v.transpose(0, 1)[None]))
        # Each row's own tokens: (rows, h_kv, width * groups) queries on (rows, h_kv, width).
        q_own = q.new_zeros(len(rows), width, h_kv, groups, d)
        q_own[row_of, offset] = q
        k_own = k.new_zeros(len(rows), width, h_kv, d)
        k_own[row_of, offset] = k
        v_own = v.new_zeros(len(rows), width, h_kv, d)
        v_own[row_of, offset] = v
        out, lse = flash(
            q_own.permute(0, 2, 1, 3, 4).reshape(len(rows), h_kv, width * groups, d),
            k_own.transpose(1, 2),
            v_own.transpose(1, 2),
            bias,
        )
        out = out.view(len(rows), h_kv, width, groups, d).transpose(1, 2)[row_of, offset]
        lse = lse.view(len(rows), h_kv, width, groups).transpose(1, 2)[row_of, offset]
        if pk.shape[2]:  # the past: (1, h_kv, n * groups) queries on (1, h_kv, past)
            out_past, lse_past = flash(q.transpose(0, 1).reshape(1, h_kv, n * groups, d), pk, pv)
            out_past = out_past.view(h_kv, n, groups, d).transpose(0, 1)
            lse_past = lse_past.view(h_kv, n, groups).transpose(0, 1)
            w = torch.sigmoid(lse_past - lse).unsqueeze(-1).to(out.dtype)
            out = torch.lerp(out, out_past, w)
        x = x + o(out.reshape(n, h_q * d))
        h = F.rms_norm(x, (x.shape[-1],), ln2, dec.eps)
        g = gate_up(h)
        half = g.shape[-1] // 2
        x = x + down(F.silu(g[:, :half]) * g[:, half:])
    return x, new


def _llama_logprobs(dec, hidden, rows, firsts, targets) -> list[list[float]]:
    """The log-probs of each row's targets from the packed hidden states (the output layer
    runs only at the positions that predict them)."""
    index, wanted, at = [], [], 0
    for row, first, ids in zip(rows, firsts, targets):
        index += range(at + first, at + first + len(ids))
        wanted += ids
        at += len(row)
    picked = hidden[torch.tensor(index)]
    picked = F.rms_norm(picked, (picked.shape[-1],), dec.norm, dec.eps)
    wanted_t = torch.tensor(wanted)
    flat: list[float] = []
    for s in range(0, len(wanted), HEAD_CHUNK):
        logits = dec.head(picked[s : s + HEAD_CHUNK])
        logprobs = torch.log_softmax(logits, -1, dtype=torch.float32)
        flat += logprobs.gather(-1, wanted_t[s : s + HEAD_CHUNK, None]).squeeze(-1).tolist()
    return _split(flat, targets)


def _split(flat: list[float], targets) -> list[list[float]]:
    out, at = [], 0
    for ids in targets:
        out.append(flat[at : at + len(ids)])
        at += len(ids)
    return out


# --- any transformers model ---------------------------------------------------------------------


def _prefix_cache(generator, prefix: list[int]):
    """A DynamicCache of ``prefix`` for one row: copied from the runner's cache where it
    holds it, the rest run now. The runner's cache is not changed."""
    from transformers import DynamicCache

    runner, model = generator.runner, generator.model
    cache = DynamicCache()
    cached = 0
    held = getattr(runner, "cache", None)
    if held is not None and prefix:
        cached = _cached_length(generator, runner, prefix)
        layers = getattr(held, "layers", None)
        try:
            if cached:
                if layers is not None:
                    pairs = [(x.keys, x.values) for x in layers]
                else:  # transformers 4.x
                    pairs = list(zip(held.key_cache, held.value_cache))
                for n, (k, v) in enumerate(pairs):
                    cache.update(k[:1, :, :cached].clone(), v[:1, :, :cached].clone(), n)
        except (AttributeError, TypeError, IndexError):  # a cache of another shape
            cache, cached = DynamicCache(), 0
    if cached < len(prefix):
        ids = torch.tensor([prefix[cached:]], device=generator.device)
        model(input_ids=ids, **{_cache_arg(generator): cache, "use_cache": True})
    return cache


def _cache_arg(generator) -> str:
    return getattr(generator.runner, "_cache_arg", "past_key_values")


def _hf_logprobs(generator, prefix, rows, firsts, targets) -> list[list[float]]:
    model = generator.model
    width = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
    with full_precision(model):
        kwargs = {}
        if prefix:
            cache = _prefix_cache(generator, prefix)
            cache.batch_repeat_interleave(len(rows))
            kwargs = {_cache_arg(generator): cache, "use_cache": True}
        logits = model(input_ids=ids.to(generator.device), **kwargs).logits
    out = []
    for r, (first, wanted) in enumerate(zip(firsts, targets)):
        part = logits[r, first : first + len(wanted)].float().log_softmax(-1)
        chosen = part.gather(-1, torch.tensor(wanted, device=part.device)[:, None])
        out.append(chosen.squeeze(-1).cpu().tolist())
    return out
