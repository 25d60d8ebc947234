"""TransformersGenerator: the Generator protocol over any Hugging Face causal LM.

Load one with dungeon.models.load_generator. The sampling loop is our own (not
``model.generate``) so that the key/value cache outlives a call: a turn's prompt is mostly the
previous prompt plus the previous response, so only the tokens after the longest common
prefix with what the cache already holds are run through the model. One turn::

    ids    = tokenize(prompt)                       # the whole prompt, every turn
    keep   = common_prefix(cache_ids, ids)          # what the cache already knows
    cache.crop(keep); logits = model(ids[keep:])    # prefill only what is new
    loop:  token = pick(logits, seed)               # penalties, bans, top-k/p, typical
           text  = decode(...)                      # whole UTF-8 characters only
           yield what cannot be the start of a stop string
           logits = model([token])                  # one token at a time, cache grows

The model runs behind a *runner* that owns the cache (dungeon.hf_cache): LlamaDecoder
(dungeon.fast_decode) for Llama-family models on the CPU, HFRunner (transformers' forward)
otherwise. ``stream_batch`` writes one response per seed to the same prompt in one batch: the
cache forks into rows after the prefill, each row samples with its own seeded generator, and a
row that ends leaves the batch. ``stream_guided`` adds action guidance: the cache forks
after the part the prompt shares with a contrast prompt (a neutral action in place of the
player's), each response gets a second row on the contrast's own tail, and both rows take the
response's tokens (``LlamaDecoder.fork_tails`` holds rows of different lengths).

A Ctrl-C in the middle of a forward pass leaves the cache marked unknown (``_row_ids`` is
None while the model runs), and the next call simply starts from an empty cache.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from dungeon.cpu_decode import has_decode_weights
from dungeon.format import STOP_STRINGS
from dungeon.generator import PromptHoldback, SamplingSettings
from dungeon.hf_cache import HFRunner
from dungeon.sampling import guide, marker_token_ids, pick_token

log = logging.getLogger(__name__)

_COUNT_CACHE_SIZE = 4096


@dataclass
class GenerationStats:
    """Timings of the last call, for benchmarks and a debug view."""

    prompt_tokens: int = 0
    reused_tokens: int = 0
    """Prompt tokens found in the cache (not run through the model again)."""
    new_tokens: int = 0
    ttft_s: float = 0.0
    """From the call to the first sampled token (tokenizing and prefill included)."""
    decode_s: float = 0.0
    """From the first sampled token to the end."""
    total_s: float = 0.0
    rows: int = 1
    """Responses generated together (``stream_batch``); new_tokens counts them all."""

    @property
    def decode_tok_s(self) -> float:
        return (
            (self.new_tokens - 1) / self.decode_s if self.new_tokens > 1 and self.decode_s else 0.0
        )


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two id sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Detokenizer:
    """Turns a growing list of token ids into text pieces, never splitting a UTF-8 character.

    A few tokens of the prompt are decoded in front of the new ones, so tokenizers that drop a
    leading space on the first token of a decode (SentencePiece) still give the right text.
    Text that ends in U+FFFD (bytes of a character still to come) is held back.
    """

    def __init__(self, tokenizer, context: Sequence[int] = ()):
        self.tokenizer = tokenizer
        self.prefix = list(context[-4:])
        self.prefix_text = self._decode(self.prefix) if self.prefix else ""
        self.ids: list[int] = []
        self.emitted = 0

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(
            ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
        )

    def text(self) -> str:
        if self.prefix:
            full = self._decode(self.prefix + self.ids)
            if full.startswith(self.prefix_text):
                return full[len(self.prefix_text) :]
        return self._decode(self.ids)

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.text()
        if text.endswith("\ufffd") or len(text) < self.emitted:
            return ""
        piece, self.emitted = text[self.emitted :], len(text)
        return piece

    def flush(self) -> str:
        """What is left at the end (a truly broken character comes out as U+FFFD)."""
        text = self.text()
        piece, self.emitted = text[self.emitted :], max(self.emitted, len(text))
        return piece


def _model_window(model, tokenizer) -> int:
    config = model.config
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    value = getattr(tokenizer, "model_max_length", 0)
    return value if 0 < value < 1_000_000 else 2048


def _as_list(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, int):
        return [value]
    return [int(v) for v in value]


class TransformersGenerator:
    """A Generator over a transformers causal LM, with a key/value cache kept across calls."""

    def __init__(
        self,
        model,
        tokenizer,
        *,
        name: str = "model",
        settings: SamplingSettings | None = None,
        context_window: int | None = None,
        reuse_cache: bool = True,
        grow_cache: bool = True,
        fast_decode: bool | None = None,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.settings = settings or SamplingSettings()
        self.context_window = context_window or _model_window(model, tokenizer)
        self.reuse_cache = reuse_cache
        self.device = next(model.parameters()).device
        self.precision = str(next(model.parameters()).dtype).removeprefix("torch.")
        """The weights' dtype, as shown to people (load_generator adds a decode copy's)."""
        self.last_stats = GenerationStats()

        # Generation ends at any special token: EOS, and chat markers such as <|im_end|>.
        stops = set(_as_list(getattr(tokenizer, "eos_token_id", None)))
        stops.update(_as_list(getattr(model.config, "eos_token_id", None)))
        gen_config = getattr(model, "generation_config", None)
        stops.update(_as_list(getattr(gen_config, "eos_token_id", None)))
        stops.update(getattr(tokenizer, "all_special_ids", []) or [])
        # Logit rows can be shorter than the tokenizer (tokens added but never trained).
        self.vocab_size = min(len(tokenizer), getattr(model.config, "vocab_size", 0) or 1 << 30)
        self.stop_token_ids = sorted(i for i in stops if i is not None and 0 <= i < self.vocab_size)
        self._stop_set = frozenset(self.stop_token_ids)
        self._stop_tensor = torch.tensor(self.stop_token_ids, dtype=torch.long)
        self._marker_tensor: torch.Tensor | None = None

        if fast_decode is None:
            fast_decode = self.device.type == "cpu" and not has_decode_weights(model)
        self.runner = None
        if fast_decode:
            from dungeon.fast_decode import LlamaDecoder, supports

            if supports(model):
                try:
                    self.runner = LlamaDecoder(model)
                except ValueError as err:  # e.g. several LoRA adapters at once
                    log.info("transformers' forward instead of LlamaDecoder: %s", err)
        if self.runner is None:
            self.runner = HFRunner(model, grow_cache=grow_cache)
        self._row_ids: list[list[int]] | None = [[]]
        """The token ids each row of the runner's cache holds; None while unknown."""
        self._vocab: list[str] | None = None
        self._stop_tables: dict[tuple[str, ...], tuple[torch.Tensor, dict[str, torch.Tensor]]] = {}
        self._counts: OrderedDict[str, int] = OrderedDict()
        self._warned_guidance = False

    # --- tokens ---------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def count_tokens(self, text: str) -> int:
        # The context builder counts the same turns every turn: remember recent answers.
        n = self._counts.get(text)
        if n is None:
            n = len(self.encode(text))
            self._counts[text] = n
            if len(self._counts) > _COUNT_CACHE_SIZE:
                self._counts.popitem(last=False)
        else:
            self._counts.move_to_end(text)
        return n

    def token_logprobs(
        self, prefix: str, continuation: str, *, end: bool = False, window: int | None = None
    ) -> list[float]:
        """See dungeon.generator.Scorer; the work is dungeon.hf_scoring.token_logprobs."""
        from dungeon.hf_scoring import token_logprobs

        return token_logprobs(self, prefix, continuation, end=end, window=window)

    def score_continuations(
        self,
        contexts: Sequence[str],
        texts: Sequence[str],
        *,
        max_tokens: int | None = None,
    ) -> list[list[list[float]]]:
        """See dungeon.generator.ContinuationScorer: every text after every context in one
        batched forward over the cached shared prefix (dungeon.hf_contrast)."""
        from dungeon.hf_contrast import score_continuations

        return score_continuations(self, contexts, texts, max_tokens=max_tokens)

    def vocab_texts(self) -> list[str]:
        """The text of every token on its own (decoded once, on first use)."""
        if self._vocab is None:
            decode = self.tokenizer.decode
            self._vocab = [
                decode([i], clean_up_tokenization_spaces=False) for i in range(self.vocab_size)
            ]
        return self._vocab

    @property
    def marker_ids(self) -> torch.Tensor:
        """Tokens that would start a player line (computed once from the whole vocabulary)."""
        if self._marker_tensor is None:
            ids = marker_token_ids(self.vocab_texts())
            self._marker_tensor = torch.tensor(ids, dtype=torch.long)
        return self._marker_tensor

    def _stop_table(self, stops: tuple[str, ...]):
        """For ``stops``: tokens that contain one, and tokens that start with each proper tail."""
        table = self._stop_tables.get(stops)
        if table is None:
            texts = self.vocab_texts()
            contains = [i for i, t in enumerate(texts) if any(s in t for s in stops)]
            tails = {s[j:] for s in stops for j in range(1, len(s))}
            starts = {
                tail: torch.tensor(
                    [i for i, t in enumerate(texts) if t.startswith(tail)], dtype=torch.long
                )
                for tail in tails
            }
            table = self._stop_tables[stops] = (torch.tensor(contains, dtype=torch.long), starts)
        return table

    def _early_bans(self, text: str, stops: tuple[str, ...]) -> torch.Tensor:
        """Before min_new_tokens: end-of-text tokens, and tokens that would complete a stop
        string after ``text`` (the end of the prompt and what was generated so far)."""
        parts = [self._stop_tensor]
        if stops:
            contains, starts = self._stop_table(stops)
            parts.append(contains)
            for s in stops:
                for j in range(1, len(s)):
                    if text.endswith(s[:j]):
                        parts.append(starts[s[j:]])
        return torch.cat(parts)

    # --- the cache ------------------------------------------------------------------------
    @property
    def _cache_ids(self) -> list[int] | None:
        """The ids the cache's first row holds (None while unknown)."""
        return None if self._row_ids is None else self._row_ids[0]

    @_cache_ids.setter
    def _cache_ids(self, ids: list[int] | None) -> None:
        self._row_ids = None if ids is None else [list(ids)]

    def reset_cache(self) -> None:
        """Forget the key/value cache (the next call prefills the whole prompt)."""
        self.runner.reset()
        self._row_ids = [[]]

    def _forward(self, ids: list[int]) -> torch.Tensor:
        """Run ``ids`` through the model after what the one-row cache holds; the last logits."""
        held, self._cache_ids = self._cache_ids, None  # unknown until the forward completes
        logits = self.runner.forward(torch.tensor([ids], dtype=torch.long))[0]
        assert held is not None
        self._cache_ids = held + ids
        return logits

    def _forward_rows(self, tokens: list[int]) -> torch.Tensor:
        """One token per cache row; the (rows, vocab) logits."""
        held, self._row_ids = self._row_ids, None
        logits = self.runner.forward(torch.tensor(tokens, dtype=torch.long)[:, None])
        assert held is not None and len(held) == len(tokens)
        self._row_ids = [[*h, t] for h, t in zip(held, tokens)]
        return logits

    def _reshape_rows(self, rows: list[int] | int) -> None:
        """Fork the one-row cache into ``rows`` copies (an int), or keep only these rows."""
        held, self._row_ids = self._row_ids, None
        assert held is not None
        if isinstance(rows, int):
            self.runner.fork(rows)
            self._row_ids = [list(held[0]) for _ in range(rows)]
        else:
            self.runner.select(rows)
            self._row_ids = [held[r] for r in rows]

    def _fork_tails(self, tails: list[list[int]]) -> torch.Tensor:
        """From the one-row cache to one row per tail after it; each row's next logits."""
        held, self._row_ids = self._row_ids, None
        assert held is not None and len(held) == 1
        logits = self.runner.fork_tails(tails)
        self._row_ids = [held[0] + tail for tail in tails]
        return logits

    def _prefill(self, ids: list[int]) -> tuple[torch.Tensor, int]:
        """Bring the cache to ``ids`` and return the next-token logits and the reused count."""
        keep = 0
        held = self._row_ids
        if self.reuse_cache and held and any(held):
            # After candidates, keep the row that shares the most with the new prompt.
            best = max(range(len(held)), key=lambda r: common_prefix(held[r], ids))
            try:
                if len(held) > 1:
                    self._reshape_rows([best])
                row = held[best]
                # At least one token must run to get logits, so never keep the whole prompt.
                keep = min(common_prefix(row, ids), len(ids) - 1)
                if self.runner.length != len(row) or self.runner.rows != 1:
                    keep = 0
                elif keep < len(row):
                    self.runner.crop(keep)
            except (RuntimeError, ValueError) as err:  # e.g. a sliding-window cache
                log.debug("cache crop failed (%s); prefilling from scratch", err)
                keep = 0
        if keep == 0:
            self.runner.reset()
            self._cache_ids = []
        else:
            self._cache_ids = held[best][:keep]
        new = ids[keep:]
        if len(new) > 1:
            # The prompt's last token always runs on its own, as it does when the rest of the
            # prompt is cached: a one-row product (4-bit, or a GEMV) rounds differently from a
            # many-row one, and the same prompt and seed should give the same text either way.
            held_ids, self._cache_ids = self._cache_ids, None
            self.runner.forward(torch.tensor([new[:-1]], dtype=torch.long))
            self._cache_ids = held_ids + new[:-1]
        return self._forward(new[-1:]), keep

    # --- generation -----------------------------------------------------------------------
    def _prompt_ids(self, prompt: str, settings: SamplingSettings) -> list[int]:
        ids = self.encode(prompt)
        if not ids:
            start = self.tokenizer.bos_token_id
            ids = [start if start is not None else self.stop_token_ids[0]]
        room = self.context_window - settings.max_new_tokens
        if len(ids) > room:
            log.warning("prompt of %d tokens cut to the last %d", len(ids), room)
            ids = ids[-room:]
        return ids

    def _contrast_tails(
        self, ids: list[int], contrast: str | None, settings: SamplingSettings
    ) -> tuple[int, list[int]] | None:
        """For action guidance: (tokens the prompt shares with the contrast prompt, the
        contrast's own tail), or None to write unguided text."""
        if contrast is None or settings.guidance == 0.0:
            return None
        if not hasattr(self.runner, "fork_tails"):
            if not self._warned_guidance:
                log.warning("action guidance needs a Llama-family model on the CPU; ignored")
                self._warned_guidance = True
            return None
        other = self.encode(contrast)
        shared = common_prefix(ids, other)
        fits = len(other) + settings.max_new_tokens <= self.context_window
        if 0 < shared < min(len(ids), len(other)) and fits:
            return shared, other[shared:]
        return None  # nothing shared (a prompt cut to the window), no tail of its own, too long

    def _rows(
        self,
        prompt: str,
        seeds: Sequence[int],
        settings: SamplingSettings,
        stop: Sequence[str],
        contrast: str | None = None,
    ) -> Iterator[tuple[int, str]]:
        """The generation loop for one prompt and one row per seed: ``(row, piece)`` pairs.
        With ``contrast`` and guidance on, each response has a second cache row that follows
        the contrast prompt with the same tokens (``sampling.guide``)."""
        if not seeds:
            return
        started = time.perf_counter()
        stats = self.last_stats = GenerationStats(rows=len(seeds))
        ids = self._prompt_ids(prompt, settings)
        stats.prompt_tokens = len(ids)
        guided = self._contrast_tails(ids, contrast, settings)
        with torch.inference_mode():
            if guided is None:
                logits, stats.reused_tokens = self._prefill(ids)
            else:
                shared, other = guided
                _, stats.reused_tokens = self._prefill(ids[:shared])
                tails = [ids[shared:]] * len(seeds) + [other] * len(seeds)
                logits = self._fork_tails(tails)
        stops = tuple(s for s in stop if s)
        longest = max((len(s) for s in stops), default=1)
        rows = [_Row(self.tokenizer, ids, prompt, seed, settings, stops, longest) for seed in seeds]
        marker = self.marker_ids if settings.ban_marker else None
        # Guided: already one cache row per response, then one per response's contrast.
        if guided is None and len(rows) > 1:
            with torch.inference_mode():
                self._reshape_rows(len(rows))
            logits = logits.expand(len(rows), -1).clone()  # picking changes a row in place
        elif guided is None:
            logits = logits[None]
        active = list(range(len(rows)))  # which row each cache row is
        first_token_at = None
        for step in range(settings.max_new_tokens):
            tokens, going = [], []
            for pos, r in enumerate(active):
                row = rows[r]
                if step < settings.min_new_tokens:
                    banned = self._early_bans(row.tail, stops)
                    if marker is not None:
                        banned = torch.cat([banned, marker])
                else:
                    banned = marker
                with torch.inference_mode():
                    scores = logits[pos]
                    if guided is not None:
                        neutral = logits[len(active) + pos]  # its contrast row's
                        scores = guide(scores, neutral, settings.guidance, banned=banned)
                    token = pick_token(scores, settings, row.rng, recent=row.recent, banned=banned)
                if first_token_at is None:
                    first_token_at = time.perf_counter()
                    stats.ttft_s = first_token_at - started
                if token in self._stop_set:
                    piece = row.finish()
                    if piece:
                        yield r, piece
                    continue
                stats.new_tokens += 1
                piece = row.push(token)
                if piece:
                    yield r, piece
                if row.hold.stopped or step + 1 == settings.max_new_tokens:
                    piece = row.finish()
                    if piece:
                        yield r, piece
                    continue
                tokens.append(token)
                going.append(pos)
            if not going:
                break
            with torch.inference_mode():
                if guided is not None:  # a response and its contrast row take the same token
                    if len(going) < len(active):
                        self._reshape_rows(going + [len(active) + p for p in going])
                        active = [active[p] for p in going]
                    logits = self._forward_rows(tokens + tokens)
                    continue
                if len(going) < len(active):  # finished rows leave the batch
                    self._reshape_rows(going)
                    active = [active[p] for p in going]
                if len(active) == 1 and len(rows) == 1:
                    logits = self._forward(tokens)[None]
                else:
                    logits = self._forward_rows(tokens)
        ended = time.perf_counter()
        stats.total_s = ended - started
        stats.decode_s = ended - first_token_at if first_token_at else 0.0

    def stream(
        self,
        prompt: str,
        *,
        seed: int,
        settings: SamplingSettings | None = None,
        stop: Sequence[str] = STOP_STRINGS,
    ) -> Iterator[str]:
        """Yield the response to ``prompt`` piece by piece; stop strings never come out."""
        for _, piece in self._rows(prompt, [seed], settings or self.settings, stop):
            yield piece

    def stream_guided(
        self,
        prompt: str,
        contrast: str,
        *,
        seeds: Sequence[int],
        settings: SamplingSettings | None = None,
        stop: Sequence[str] = STOP_STRINGS,
    ) -> Iterator[tuple[int, str]]:
        """``stream_batch`` with action guidance (see dungeon.generator.GuidedGenerator):
        ``contrast`` is the prompt with a neutral action. Unguided where the runner cannot
        fork rows of their own length (a model other than Llama-family on the CPU) or the
        two prompts share no start."""
        yield from self._rows(prompt, list(seeds), settings or self.settings, stop, contrast)

    def generate(
        self,
        prompt: str,
        *,
        seed: int,
        settings: SamplingSettings | None = None,
        stop: Sequence[str] = STOP_STRINGS,
    ) -> str:
        """The whole response to ``prompt`` (the same text ``stream`` yields, joined)."""
        return "".join(self.stream(prompt, seed=seed, settings=settings, stop=stop))

    def stream_batch(
        self,
        prompt: str,
        *,
        seeds: Sequence[int],
        settings: SamplingSettings | None = None,
        stop: Sequence[str] = STOP_STRINGS,
    ) -> Iterator[tuple[int, str]]:
        """One response per seed to the same ``prompt``, decoded as one batch that shares the
        prompt's cache: yields ``(row, piece)`` as pieces become safe to show.

        Row ``i`` samples with its own generator seeded by ``seeds[i]`` and stops at its own
        stop string or end of text (then yields nothing more); with one seed, the pieces are
        those of ``stream``. The batch costs little more than one response: each step reads
        the weights once for every row.
        """
        yield from self._rows(prompt, list(seeds), settings or self.settings, stop)

    def generate_batch(
        self,
        prompt: str,
        *,
        seeds: Sequence[int],
        settings: SamplingSettings | None = None,
        stop: Sequence[str] = STOP_STRINGS,
    ) -> list[str]:
        """The whole responses of ``stream_batch``, one per seed, in the order of ``seeds``."""
        texts = [""] * len(seeds)
        for row, piece in self.stream_batch(prompt, seeds=seeds, settings=settings, stop=stop):
            texts[row] += piece
        return texts


class _Row:
    """One response being sampled: its RNG, recent tokens, detokenizer and stop holdback."""

    def __init__(self, tokenizer, ids, prompt, seed, settings, stops, longest):
        self.rng = torch.Generator().manual_seed(int(seed))
        window = settings.repetition_window
        self.recent: deque[int] | tuple = deque(ids[-window:], maxlen=window) if window else ()
        self.hold = PromptHoldback(stops, prompt)
        self.detok = Detokenizer(tokenizer, ids)
        self.longest = longest
        self.tail = prompt[-longest:]  # enough text to tell whether a token would end the turn

    def push(self, token: int) -> str:
        if isinstance(self.recent, deque):
            self.recent.append(token)
        text = self.detok.push(token)
        self.tail = (self.tail + text)[-self.longest :]
        return self.hold.push(text)

    def finish(self) -> str:
        return self.hold.push(self.detok.flush()) + self.hold.flush()
