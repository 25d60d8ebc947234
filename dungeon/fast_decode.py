"""A compact forward pass for Llama-family models on CPU, with its own key/value cache.

transformers' forward runs about 1,300 small tensor operations per token for the built-in
model; once the weight products are 4-bit (about 10 ms a token), those operations' fixed
costs are most of a step. This module runs the same model in about 20 operations per layer,
gpt-fast style:

- the q, k and v products are one product, and so are gate and up (their int4 weights
  concatenated once at start-up);
- the key/value cache is one buffer per layer that grows with room to spare, written in place;
- rotary tables are computed once for every position;
- a LoRA adapter that is not merged runs as a float32 low-rank side path next to each product
  (its A matrices concatenated, its B matrices as a batch of blocks, the scaling folded in).

Products over more than ``quantize.QUANT_ROWS`` rows (prefill) use the dense weights.
The rows of a batch share the prompt's cache: candidates for one prompt (``fork``), or prompts
that differ only in their last tokens, such as the player's action and a neutral one for
action guidance (``fork_tails``; each row then holds its own number of positions).

    dec = LlamaDecoder.from_model(model)      # a transformers LlamaForCausalLM (or peft on one)
    logits = dec.forward(torch.tensor([ids]))  # (rows, vocab) logits of the last position
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dungeon.quantize import QUANT_ROWS, Int4Linear, Int8Linear, QuantLinear, RefinedInt4Linear

PREFILL_CHUNK = 256
"""A prompt longer than this runs through the model this many tokens at a time."""
SUPPORTED = ("llama",)
"""``config.model_type`` values this decoder runs (SmolLM2 is a Llama)."""


def supports(model: nn.Module) -> bool:
    """Whether ``model`` (or the model under a peft wrapper) can run on LlamaDecoder."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(inner, "config", None)
    return (
        getattr(config, "model_type", None) in SUPPORTED
        and not getattr(config, "attention_bias", False)
        and not getattr(config, "mlp_bias", False)
        and getattr(config, "hidden_act", "silu") == "silu"
        and getattr(config, "pretraining_tp", 1) == 1
        and not getattr(config, "sliding_window", None)
        and hasattr(inner, "model")
        and hasattr(inner.model, "rotary_emb")
    )


def _base_and_lora(module: nn.Module):
    """``(base layer, lora (A, B, scaling) or None)`` of a plain or peft-wrapped linear."""
    base = getattr(module, "base_layer", None)
    if base is None:
        return module, None
    names = [n for n in getattr(module, "active_adapters", []) if n in module.lora_A]
    if getattr(module, "merged", False) or not names:
        return base, None
    if len(names) != 1:
        raise ValueError("LlamaDecoder runs one LoRA adapter at a time")
    name = names[0]
    a = module.lora_A[name].weight.detach()
    b = module.lora_B[name].weight.detach()
    return base, (a, b, float(module.scaling[name]))


class FusedProduct:
    """Several linear products of one input as one: a fused quantized kernel for few rows,
    the dense weights for many, and an optional low-rank side path."""

    def __init__(self, modules: list[nn.Module]):
        parts = [_base_and_lora(m) for m in modules]
        bases = [p[0] for p in parts]
        self.sizes = [b.out_features for b in bases]
        self.dense = [
            (b.weight.t() if getattr(b, "transposed", False) else b.weight) for b in bases
        ]
        self.quant = None
        if len(bases) == 1 and isinstance(bases[0], QuantLinear):
            self.quant = bases[0]  # as it is (an output layer may refine its int4 logits)
        elif all(isinstance(b, Int4Linear) for b in bases):
            packed = torch.cat([b.packed for b in bases])
            start = 0
            for b, size in zip(bases, self.sizes):  # views of the fused codes: no second copy
                b.packed = packed[start : start + size]
                start += size
            scale_zeros = torch.cat([b.scale_zeros for b in bases], dim=1)
            self.quant = Int4Linear(packed, scale_zeros.contiguous())
        elif all(isinstance(b, Int8Linear) for b in bases):
            qweight = torch.cat([b.qweight for b in bases])
            self.quant = Int8Linear(qweight, torch.cat([b.scales for b in bases]))
        elif any(isinstance(b, QuantLinear) for b in bases):
            raise ValueError("a fused product needs all its parts quantized the same way")
        elif len(bases) > 1:
            fused = torch.cat([w.detach() for w in self.dense])
            if all(type(b) is nn.Linear for b in bases):
                # The model's layers become views of the fused weight: no second copy.
                start = 0
                for b, size in zip(bases, self.sizes):
                    b.weight.data = fused[start : start + size]
                    start += size
            self.dense = [fused]
        self.dense = [w.detach() for w in self.dense]
        self.lora = None
        self.lora_blocks = None
        loras = [p[1] for p in parts]
        if any(lo is not None for lo in loras):
            self._side_path(loras)

    def _side_path(self, loras) -> None:
        """The LoRA side path, float32, the scaling folded into B: A matrices concatenated
        (one product for every part), and B as one block-diagonal matrix (``lora``), or, where
        every part has the same rank, as blocks of one width (``lora_blocks``): a batch of
        small products that reads no zeros (the block-diagonal B of q, k and v is two-thirds
        zeros; the side paths of a token took 3.40 ms against 3.86, docs/models.md)."""
        a_parts, b_blocks, r_total = [], [], 0
        for size, lo in zip(self.sizes, loras):
            if lo is None:
                b_blocks.append((size, 0, None))
                continue
            a, b, scaling = lo
            a_parts.append(a.float())
            b_blocks.append((size, a.shape[0], b.float() * scaling))
            r_total += a.shape[0]
        # float32, stored transposed for torch.mm: one-row bf16 products of these skinny
        # shapes take 160-200 us each here, float32 ones 4-28 us (docs/models.md).
        a_t = torch.cat(a_parts).t().contiguous()
        ranks = {r for _, r, _ in b_blocks}
        if len(self.sizes) > 1 and len(ranks) == 1 and 0 not in ranks:
            rank = ranks.pop()
            width = math.gcd(*self.sizes)
            blocks, owner = [], []
            for part, (size, _, b) in enumerate(b_blocks):
                for start in range(0, size, width):
                    blocks.append(b[start : start + width].t())  # (rank, width)
                    owner.append(part)
            index = None if len(owner) == len(self.sizes) else torch.tensor(owner)
            self.lora_blocks = (a_t, torch.stack(blocks).contiguous(), index, rank)
            return
        big_b = torch.zeros(sum(self.sizes), r_total)
        row = col = 0
        for size, r, b in b_blocks:
            if b is not None:
                big_b[row : row + size, col : col + r] = b
                col += r
            row += size
        self.lora = (a_t, big_b.t().contiguous())

    def add_side(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``y`` (rows, out) plus the LoRA side path's output for ``x`` (rows, in), added in
        place in float32 and rounded once to ``y``'s dtype; ``y`` as it is without one."""
        if self.lora is not None:
            a_t, b_t = self.lora
            return y.add_(torch.mm(torch.mm(x.float(), a_t), b_t))
        if self.lora_blocks is None:
            return y
        a_t, blocks, index, rank = self.lora_blocks
        rows = x.shape[0]
        t = torch.mm(x.float(), a_t).view(rows, -1, rank).transpose(0, 1)  # (parts, rows, r)
        if index is not None:
            t = t.index_select(0, index)  # (blocks, rows, r): a part's rows for each block
        side = torch.bmm(t, blocks)  # (blocks, rows, width)
        y.view(rows, blocks.shape[0], -1).add_(side.transpose(0, 1))
        return y

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (rows, in) -> (rows, sum of outputs)."""
        if self.quant is not None and x.shape[0] <= QUANT_ROWS:
            # No ``.to`` where the dtype is already right: even a cast that does nothing is a
            # dispatch, and 240 of them a token cost 2.7% of a step (measured, interleaved).
            y = self.quant.quantized(x if x.dtype == torch.bfloat16 else x.to(torch.bfloat16))
            if y.dtype != x.dtype:
                y = y.to(x.dtype)
        elif len(self.dense) == 1:
            y = F.linear(x, self.dense[0])
        else:
            y = torch.cat([F.linear(x, w) for w in self.dense], dim=-1)
        return self.add_side(y, x)  # y is this call's own tensor

    def each_row(self, x: torch.Tensor) -> torch.Tensor:
        """The same sum for a step of several rows that are different games, computed so that
        each row's result does not depend on the other rows: the quantized kernel in chunks it
        takes whole (it is exact row by row; beyond ``QUANT_ROWS`` rows ``__call__`` would
        switch to the dense weights), an output layer that refines its top entries row by row,
        and the LoRA side path as a batch of one-row products (one float32 product of several
        rows rounds differently from one row alone)."""
        n = x.shape[0]
        if self.quant is not None:
            parts = x.to(torch.bfloat16).split(-(-n // -(-n // QUANT_ROWS)))
            if isinstance(self.quant, RefinedInt4Linear):
                y = torch.cat([self.quant.quantized(p, each_row=True) for p in parts])
            else:
                y = torch.cat([self.quant.quantized(p) for p in parts])
            y = y.to(x.dtype)
        elif len(self.dense) == 1:
            y = F.linear(x, self.dense[0])
        else:
            y = torch.cat([F.linear(x, w) for w in self.dense], dim=-1)
        if self.lora is not None:
            a_t, b_t = self.lora
            side = torch.bmm(x.float().unsqueeze(1), a_t.expand(n, -1, -1))
            y = y.add_(torch.bmm(side, b_t.expand(n, -1, -1)).squeeze(1))
        elif self.lora_blocks is not None:
            a_t, blocks, index, rank = self.lora_blocks
            t = torch.bmm(x.float().unsqueeze(1), a_t.expand(n, -1, -1)).view(n, -1, 1, rank)
            if index is not None:
                t = t.index_select(1, index)  # (rows, blocks, 1, r)
            y = y.add_(torch.matmul(t, blocks).reshape(n, -1))  # one-row products, batched
        return y


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding (Llama's rotate-half form) of ``x`` with the given tables."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class LlamaDecoder:
    """The forward pass of a Llama-family causal LM with a batched key/value cache."""

    def __init__(self, model: nn.Module):
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        config = inner.config
        body = inner.model
        self.config = config
        self.dtype = body.embed_tokens.weight.dtype
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.eps = float(config.rms_norm_eps)
        self.embed = body.embed_tokens.weight.detach()
        self.norm = body.norm.weight.detach()
        self.layers = []
        for layer in body.layers:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append(
                (
                    layer.input_layernorm.weight.detach(),
                    FusedProduct([attn.q_proj, attn.k_proj, attn.v_proj]),
                    FusedProduct([attn.o_proj]),
                    layer.post_attention_layernorm.weight.detach(),
                    FusedProduct([mlp.gate_proj, mlp.up_proj]),
                    FusedProduct([mlp.down_proj]),
                )
            )
        self.head = FusedProduct([inner.lm_head])
        self.window = int(getattr(config, "max_position_embeddings", 2048))
        self._rotary = body.rotary_emb
        self._cos = self._sin = torch.empty(0)
        self.cache: list[torch.Tensor] = []  # per layer: (2, 1, kv_heads, capacity, head_dim)
        self.branch: list[torch.Tensor] = []  # per layer: (2, rows, kv_heads, capacity, head_dim)
        self.length = 0  # positions every row has (the longest row's, after fork_tails)
        self.shared = 0  # of which in ``cache`` (all of them without a fork)
        self.rows = 1
        self.own: torch.Tensor | None = None
        """After ``fork_tails``: how many positions each row holds in ``branch`` (rows,)."""

    @classmethod
    def from_model(cls, model: nn.Module) -> LlamaDecoder:
        if not supports(model):
            raise ValueError("LlamaDecoder runs Llama-family models only")
        return cls(model)

    # --- the cache ------------------------------------------------------------------------
    # One row: ``cache`` holds every position. Candidates (``fork``): ``cache`` keeps the
    # shared prompt once and ``branch`` holds each row's own positions after it, so a step
    # reads the prompt's keys and values once for all rows (attention over the two parts is
    # merged by their log-sum-exp), and dropping a finished row copies only its branch.
    def reset(self) -> None:
        self.cache, self.branch, self.length, self.shared, self.rows = [], [], 0, 0, 1
        self.own = None

    def crop(self, length: int) -> None:
        """Keep the first ``length`` positions (of the one row, or of the shared prompt)."""
        if self.branch:
            if length > self.shared:
                raise ValueError("crop a forked cache with select first")
            self.branch, self.rows, self.own = [], 1, None
        self.length = self.shared = min(self.length, max(0, length))

    @staticmethod
    def _grown(
        old: list[torch.Tensor], shape, used: int, dtype, *, zero: bool = False
    ) -> list[torch.Tensor]:
        # ``zero`` for rows of their own lengths: a masked position is still read, and memory
        # never written may hold a NaN that poisons the attention even with weight 0.
        new = []
        make = torch.zeros if zero else torch.empty
        for i in range(len(old) if old else shape[0]):
            fresh = make(shape[1:], dtype=dtype)
            if old and used:
                fresh[..., :used, :].copy_(old[i][..., :used, :])
            new.append(fresh)
        return new

    def _ensure(self, need: int) -> None:
        """Room for ``need`` positions in the one-row cache, and rotary tables."""
        room = self.cache[0].shape[3] if self.cache else 0
        if need > room:
            # Room for a response beyond what is asked: a prefill fills the cache to its last
            # token, and doubling on the next one held the old and new buffers at once (the
            # play path's peak memory). Then 1.5x: contexts stay within a token budget.
            cap = max(need + 256, room + room // 2)
            shape = (len(self.layers), 2, 1, self.kv_heads, cap, self.head_dim)
            # Only the shared positions are in the cache (a fork's own ones are in branch).
            self.cache = self._grown(self.cache, shape, self.shared, self.dtype)
        self.rotary_upto(need)

    @property
    def lengths(self) -> list[int]:
        """The positions each row holds."""
        if self.own is not None:
            return [self.shared + int(n) for n in self.own]
        return [self.length] * self.rows

    def rotary_upto(self, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's rotary (cos, sin) tables, grown (and kept) to cover positions
        0..end-1: what the one-row path, the forked rows and dungeon.hf_contrast index."""
        if self._cos.shape[0] < end:
            n = max(end, min(2 * self._cos.shape[0], self.window), 256)
            self._cos, self._sin = self.rotary_tables(n)
        return self._cos, self._sin

    def rotary_tables(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """New rotary (cos, sin) tables for positions 0..n-1, (n, head_dim) each."""
        pos = torch.arange(n)[None]
        probe = torch.zeros(1, dtype=torch.float32)
        cos, sin = self._rotary(probe, pos)
        return cos[0].to(self.dtype), sin[0].to(self.dtype)

    def fork(self, rows: int) -> None:
        """From one cached row to ``rows`` rows that share it (candidates for one prompt)."""
        if self.rows != 1 or self.branch:
            raise ValueError("fork needs a one-row cache")
        self.shared = self.length
        shape = (len(self.layers), 2, rows, self.kv_heads, 64, self.head_dim)
        self.branch = self._grown([], shape, 0, self.dtype)
        self.rows = rows

    def fork_tails(self, tails: list[list[int]]) -> torch.Tensor:
        """From one cached row (the shared start of several prompts) to one row per tail: row
        ``r`` holds the cached positions, then ``tails[r]``. Tails may differ in length; a
        step then takes one token per row, each at its own position. Returns each row's
        next-token logits, (rows, vocab) float32.

        Each tail runs as a prompt's end runs on the one-row path (its last token on its own),
        so a row's logits are those of its whole prompt there; equal tails run once."""
        if self.rows != 1 or self.branch:
            raise ValueError("fork_tails needs a one-row cache")
        if not tails or any(not tail for tail in tails):
            raise ValueError("fork_tails needs at least one tail, each of one token or more")
        shared = self.length
        longest = max(len(tail) for tail in tails)
        shape = (len(self.layers), 2, len(tails), self.kv_heads, longest + 64, self.head_dim)
        branch = self._grown([], shape, 0, self.dtype, zero=True)
        logits: list[torch.Tensor] = []
        first: dict[tuple[int, ...], int] = {}
        for r, tail in enumerate(tails):
            n = len(tail)
            seen = first.setdefault(tuple(tail), r)
            if seen != r:
                for b in branch:
                    b[:, r, :, :n].copy_(b[:, seen, :, :n])
                logits.append(logits[seen])
                continue
            if n > 1:
                self.forward(torch.tensor([tail[:-1]], dtype=torch.long))
            logits.append(self.forward(torch.tensor([tail[-1:]], dtype=torch.long))[0])
            for b, c in zip(branch, self.cache):
                b[:, r, :, :n].copy_(c[:, 0, :, shared : shared + n])
            self.crop(shared)
        self.branch, self.rows, self.shared = branch, len(tails), shared
        self.own = torch.tensor([len(tail) for tail in tails])
        self.length = shared + longest
        return torch.stack(logits)

    def select(self, rows: list[int]) -> None:
        """Keep only the given rows, in that order (one row left: back to a one-row cache)."""
        if not self.branch:
            if rows != [0]:
                raise ValueError(f"a one-row cache has no rows {rows}")
            return
        index = torch.tensor(rows, dtype=torch.long)
        self.branch = [b.index_select(1, index) for b in self.branch]
        self.rows = len(rows)
        if self.own is not None:
            self.own = self.own[index]
            self.length = self.shared + int(self.own.max())
        if self.rows == 1:  # fold the branch back into the one-row cache
            own = self.length - self.shared
            self._ensure(self.length)
            for c, b in zip(self.cache, self.branch):
                c[:, :, :, self.shared : self.length].copy_(b[:, :, :, :own])
            self.branch, self.shared, self.own = [], self.length, None

    # --- the forward pass -----------------------------------------------------------------
    def _branch_attention(self, q, cache, branch, own: int, mask=None) -> torch.Tensor:
        """One query position per row: attention over the shared prompt and the row's own
        positions (the first ``own``; ``mask`` hides a shorter row's unused ones), merged by
        log-sum-exp."""
        rows, h_kv, groups, d = q.shape
        shared_q = q.transpose(0, 1).reshape(1, h_kv, rows * groups, d)
        o1, l1 = flash(shared_q, cache[0, :, :, : self.shared], cache[1, :, :, : self.shared])
        o1 = o1.view(h_kv, rows, groups, d).transpose(0, 1)
        l1 = l1.view(h_kv, rows, groups).transpose(0, 1)
        o2, l2 = flash(q, branch[0, :, :, :own], branch[1, :, :, :own], mask)
        w = torch.sigmoid(l1 - l2).unsqueeze(-1).to(o2.dtype)
        return torch.lerp(o2, o1, w)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Run ``ids`` (rows, tokens) after what the cache holds; float32 logits of the last
        position, (rows, vocab). The cache grows by ``tokens``. A forked cache takes one
        token per row."""
        rows, t = ids.shape
        if rows == 1 and t > PREFILL_CHUNK and not self.branch:
            # A long prompt in pieces: each piece's activations are a fraction of the whole's.
            self._ensure(self.length + t)
            for piece in ids[:, :-PREFILL_CHUNK].split(PREFILL_CHUNK, dim=1):
                self.forward(piece)
            ids, t = ids[:, -PREFILL_CHUNK:], PREFILL_CHUNK
        start, end = self.length, self.length + t
        forked = bool(self.branch)
        if rows != self.rows or (forked and t != 1):
            raise ValueError(f"{rows} rows of {t} tokens for a cache of {self.rows} rows")
        if forked:
            own = end - self.shared  # positions in the (longest) row's branch after this step
            room = self.branch[0].shape[3]
            if own > room:
                shape = (len(self.layers), 2, rows, self.kv_heads, 2 * room, self.head_dim)
                ragged = self.own is not None
                self.branch = self._grown(self.branch, shape, own - 1, self.dtype, zero=ragged)
            self.rotary_upto(end)
        else:
            self._ensure(end)
        h_q, h_kv, d = self.heads, self.kv_heads, self.head_dim
        cos = self._cos[start:end].view(1, t, 1, d)
        sin = self._sin[start:end].view(1, t, 1, d)
        mask = branch_mask = None
        at = self.own  # rows of their own lengths (fork_tails): where each row's token goes
        if at is not None:
            cos = self._cos[self.shared + at].view(rows, 1, 1, d)
            sin = self._sin[self.shared + at].view(rows, 1, 1, d)
            hide = torch.arange(own)[None] > at[:, None]  # a shorter row's unused positions
            branch_mask = torch.zeros(hide.shape, dtype=self.dtype).masked_fill_(hide, -math.inf)
            branch_mask = branch_mask.view(rows, 1, 1, own)
            row_index = torch.arange(rows)
        if t > 1:
            mask = torch.ones(t, end, dtype=torch.bool).tril(diagonal=start)
        x = F.embedding(ids, self.embed)  # (rows, t, hidden)
        n = rows * t
        x = x.view(n, -1)
        groups = h_q // h_kv
        branches = self.branch or [None] * len(self.layers)
        for (ln1, qkv, o, ln2, gate_up, down), cache, branch in zip(
            self.layers, self.cache, branches
        ):
            h = F.rms_norm(x, (x.shape[-1],), ln1, self.eps)
            y = qkv(h).view(rows, t, h_q + 2 * h_kv, d)
            qk = rope(y[:, :, : h_q + h_kv], cos, sin)
            if branch is not None:
                if at is None:
                    branch[0, :, :, own - 1 : own].copy_(qk[:, :, h_q:].transpose(1, 2))
                    branch[1, :, :, own - 1 : own].copy_(y[:, :, h_q + h_kv :].transpose(1, 2))
                else:
                    branch[0, row_index, :, at] = qk[:, 0, h_q:]
                    branch[1, row_index, :, at] = y[:, 0, h_q + h_kv :]
                q = qk[:, 0, :h_q].reshape(rows, h_kv, groups, d)
                a = self._branch_attention(q, cache, branch, own, branch_mask)
                a = a.reshape(n, h_q * d)
            else:
                cache[0, :, :, start:end].copy_(qk[:, :, h_q:].transpose(1, 2))
                cache[1, :, :, start:end].copy_(y[:, :, h_q + h_kv :].transpose(1, 2))
                keys, values = cache[0, :, :, :end], cache[1, :, :, :end]
                if t == 1:
                    # One query per head; the kernel reads each key/value head once for the
                    # query heads that share it (measured 4% a token faster than those heads
                    # as three query rows of one head, docs/models.md).
                    q = qk[:, :, :h_q].transpose(1, 2)  # (1, h_q, 1, d)
                    a = F.scaled_dot_product_attention(q, keys, values, enable_gqa=True)
                    a = a.reshape(n, h_q * d)
                else:
                    q = qk[:, :, :h_q].transpose(1, 2)
                    a = F.scaled_dot_product_attention(
                        q, keys, values, attn_mask=mask, enable_gqa=True
                    )
                    a = a.transpose(1, 2).reshape(n, h_q * d)
            x = x + o(a)
            h = F.rms_norm(x, (x.shape[-1],), ln2, self.eps)
            g = gate_up(h)
            half = g.shape[-1] // 2
            x = x + down(F.silu(g[:, :half]) * g[:, half:])
        self.length = end
        if not forked:
            self.shared = end
        if at is not None:
            self.own = at + 1
        last = x.view(rows, t, -1)[:, -1]
        last = F.rms_norm(last, (last.shape[-1],), self.norm, self.eps)
        return self.head(last).float()

    def forward_at(
        self,
        ids: torch.Tensor,
        kv: torch.Tensor,
        rows: list[int],
        starts: list[int],
        tables: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """Run ``ids`` (len(rows), t) after what rows of an outside key/value cache hold, each
        row at its own position: row ``rows[i]`` of ``kv`` holds ``starts[i]`` positions.

        ``kv`` is (layers, 2, rows, kv_heads, capacity, head_dim), written in place, with room
        for the new positions; ``tables`` are rotary (cos, sin) tables that reach as far
        (``rotary_tables``). t > 1 only for one row (a prefill, run as ``forward`` runs one).
        A step (t == 1) computes each row exactly as it would be alone, whoever else is in the
        batch: ``FusedProduct.each_row`` for the products, and attention per row over its own
        positions (a masked product over the longest row rounds differently). Returns the last
        position's float32 logits, (len(rows), vocab). The decoder's own cache is not touched,
        so this may run on one thread while another decodes (dungeon.multi_decode)."""
        n_rows, t = ids.shape
        step = t == 1
        if not step and n_rows != 1:
            raise ValueError("a prefill of several tokens takes one row")
        starts_t = torch.tensor(starts)
        table_cos, table_sin = tables
        h_q, h_kv, d = self.heads, self.kv_heads, self.head_dim
        pos = starts_t[:, None] + torch.arange(t)[None]  # (rows, t)
        cos = table_cos[pos].view(n_rows, t, 1, d)
        sin = table_sin[pos].view(n_rows, t, 1, d)
        ends = starts_t + t
        span = int(ends.max())
        row_index = torch.tensor(rows)
        if not step:
            start = starts[0]
            mask = torch.ones(t, span, dtype=torch.bool).tril(diagonal=start)
        ends_list = ends.tolist()
        x = F.embedding(ids, self.embed).view(n_rows * t, -1)
        for (ln1, qkv, o, ln2, gate_up, down), layer_kv in zip(self.layers, kv):
            h = F.rms_norm(x, (x.shape[-1],), ln1, self.eps)
            y = (qkv.each_row(h) if step else qkv(h)).view(n_rows, t, h_q + 2 * h_kv, d)
            qk = rope(y[:, :, : h_q + h_kv], cos, sin)
            k_new, v_new = qk[:, :, h_q:], y[:, :, h_q + h_kv :]  # (rows, t, h_kv, d)
            if not step:
                r, s = rows[0], starts[0]
                layer_kv[0, r, :, s : s + t].copy_(k_new[0].transpose(0, 1))
                layer_kv[1, r, :, s : s + t].copy_(v_new[0].transpose(0, 1))
                keys = layer_kv[0, r : r + 1, :, :span]
                values = layer_kv[1, r : r + 1, :, :span]
                q = qk[:, :, :h_q].transpose(1, 2)
                a = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
                a = a.transpose(1, 2).reshape(t, h_q * d)
            else:
                layer_kv[0, row_index, :, starts_t] = k_new[:, 0]
                layer_kv[1, row_index, :, starts_t] = v_new[:, 0]
                # One query per head, as ``forward`` runs a step.
                q = qk[:, :, :h_q].transpose(1, 2)  # (rows, h_q, 1, d)
                a = torch.cat(
                    [
                        F.scaled_dot_product_attention(
                            q[i : i + 1],
                            layer_kv[0, r : r + 1, :, :end],
                            layer_kv[1, r : r + 1, :, :end],
                            enable_gqa=True,
                        )
                        for i, (r, end) in enumerate(zip(rows, ends_list))
                    ]
                ).reshape(n_rows, h_q * d)
            x = x + (o.each_row(a) if step else o(a))
            h = F.rms_norm(x, (x.shape[-1],), ln2, self.eps)
            g = gate_up.each_row(h) if step else gate_up(h)
            half = g.shape[-1] // 2
            m = F.silu(g[:, :half]) * g[:, half:]
            x = x + (down.each_row(m) if step else down(m))
        last = x.view(n_rows, t, -1)[:, -1]
        last = F.rms_norm(last, (last.shape[-1],), self.norm, self.eps)
        return (self.head.each_row(last) if step else self.head(last)).float()


def flash(q, k, v, mask=None):
    """Attention output and its log-sum-exp (torch's CPU flash-attention kernel); ``mask`` is
    added to the scores. Two parts of one attention merge by their log-sum-exps."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=mask)[:2]
