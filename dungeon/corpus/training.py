"""Training data for fine-tuning: load a story corpus, hold out whole stories, tokenize, pack.

Fine-tuning (dungeon.training) uses this module; it is the one place that says what a model
trains on::

    from dungeon.corpus.training import load_corpus, tokenize_and_pack

    corpus = load_corpus("stories")               # DatasetDict: train / validation stories
    blocks = tokenize_and_pack(corpus, tokenizer, block_size=512)

``load_corpus`` takes one ``--data`` value or several (with weights: ``"extra.jsonl:2"``):
folders of ``.txt``/``.md`` files (the project's story files, plain stories, transcripts,
prose), big text files split on ``<|endoftext|>``, JSONL, CSV/TSV, saved ``datasets`` folders
and hub datasets. dungeon.corpus.loading reads them (through dungeon.corpus.readers and
dungeon.corpus.tables) and chooses the held-out stories; ``dungeon check-corpus`` asks it too.

The training text of a story is its model text, exactly what play sends the model turn after
turn (rendered by dungeon.format; ``StoryFile.model_text()`` for a story file), tokenized as play tokenizes prompts (no special tokens
added) and followed by the tokenizer's end-of-text token. Stories are packed back to back into
blocks of ``block_size`` tokens; the last block of a split is padded
(labels -100) rather than dropped. The held-out split is always by whole story.

Everything goes through ``datasets``, so tokenizing and packing are cached on disk and
tokenizing runs in parallel (``num_proc``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dungeon.corpus.loading import DEFAULT_VAL_FRACTION, Corpus, read_corpus, split_by_fraction
from dungeon.corpus.readers import ReadOptions
from dungeon.corpus.sources import CorpusError
from dungeon.format import StoryFile

__all__ = [  # re-exported: fine-tuning imports its data from this one module
    "DEFAULT_VAL_FRACTION",
    "IGNORE_INDEX",
    "Corpus",
    "CorpusError",
    "EpochShuffle",
    "PackStats",
    "ReadOptions",
    "corpus_datasets",
    "encode_story",
    "load_corpus",
    "pack_blocks",
    "read_corpus",
    "sample_prompt",
    "split_by_fraction",
    "tokenize_and_pack",
    "training_text",
]

IGNORE_INDEX = -100
"""Label of padding positions: the loss skips them."""
PACK_BATCH = 10_000
"""Stories packed together in one ``map`` batch; each batch's last block is padded."""


# ---------------------------------------------------------------------------------------------
# What one story trains on


def training_text(story: StoryFile) -> str:
    """The text of a story file a model trains on (the end-of-text token follows it)."""
    return story.model_text()


def sample_prompt(text: str, max_chars: int = 1500) -> str:
    """The opening of a story to sample from at evaluation: the premise and first action."""
    marker = text.find("\n\n> ")
    if marker >= 0:
        end = text.find("\n", marker + 4)
        if end >= 0 and end < max_chars:
            return text[: end + 1]
    first = text.find("\n\n")
    return text[: first if 0 < first < max_chars else max_chars]


def encode_story(text: str, tokenizer) -> list[int]:
    """Token ids of a story: the text as play encodes it (no special tokens), then end-of-text."""
    ids = list(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])
    return _with_eos(ids, tokenizer.eos_token_id)


def _with_eos(ids: list[int], eos: int) -> list[int]:
    return ids if ids and ids[-1] == eos else [*ids, eos]


def story_record(name: str, text: str) -> dict:
    return {"name": name, "text": text, "prompt": sample_prompt(text)}


# ---------------------------------------------------------------------------------------------
# Loading


def load_corpus(
    source,
    *,
    val_fraction: float | None = None,
    val_list: str | Path | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    options: ReadOptions | None = None,
):
    """Load a corpus as a ``DatasetDict`` with ``train`` and ``validation`` splits of stories.

    ``source`` is one ``--data`` value or a list of them (dungeon.corpus.loading.read_corpus
    reads them and chooses the held-out stories). Each row is one whole story: ``name``,
    ``text`` (model text, no end-of-text token yet) and ``prompt`` (its opening, to sample
    from). Raises CorpusError listing every problem.
    """
    corpus = read_corpus(
        source, options=options, val_fraction=val_fraction, val_list=val_list, seed=seed,
        cache_dir=cache_dir,
    )  # fmt: skip
    return corpus_datasets(corpus, cache_dir)


def corpus_datasets(corpus: Corpus, cache_dir: str | Path | None = None):
    """The ``train`` and ``validation`` stories of a read corpus as a ``DatasetDict``."""
    import datasets

    cache = str(cache_dir) if cache_dir is not None else None
    splits = {}
    for split, stories in (("train", corpus.train), ("validation", corpus.validation)):
        records = [story_record(s.name, s.text) for s in stories]
        if records:
            splits[split] = datasets.Dataset.from_generator(
                _yield_records, gen_kwargs={"records": records}, cache_dir=cache, split=split
            )
        else:
            features = datasets.Features(
                {k: datasets.Value("string") for k in story_record("", "")}
            )
            splits[split] = datasets.Dataset.from_dict({k: [] for k in features}, features)
    return datasets.DatasetDict(splits)


def _yield_records(records: list[dict]) -> Iterator[dict]:
    yield from records


# ---------------------------------------------------------------------------------------------
# Tokenizing and packing


@dataclass(frozen=True)
class PackStats:
    """How a split was packed."""

    stories: int
    tokens: int
    """Real tokens, end-of-text tokens included."""
    blocks: int
    padding: int
    """Padding positions (labels -100) in the last block(s)."""


def pack_blocks(sequences: Sequence[Sequence[int]], block_size: int, pad_id: int) -> dict:
    """Concatenate token sequences and cut them into blocks of ``block_size``.

    No token is dropped: the last block is padded with ``pad_id`` (attention 0, label -100).
    Labels equal the inputs elsewhere; the model shifts them by one itself.
    """
    if block_size < 2:
        raise ValueError(f"block_size must be at least 2, got {block_size}")
    flat = [t for seq in sequences for t in seq]
    out: dict[str, list] = {"input_ids": [], "attention_mask": [], "labels": []}
    for start in range(0, len(flat), block_size):
        chunk = flat[start : start + block_size]
        pad = block_size - len(chunk)
        out["input_ids"].append(chunk + [pad_id] * pad)
        out["attention_mask"].append([1] * len(chunk) + [0] * pad)
        out["labels"].append(chunk + [IGNORE_INDEX] * pad)
    return out


def tokenize_and_pack(corpus, tokenizer, block_size: int, *, num_proc: int | None = None):
    """Tokenize each story (+ end-of-text) and pack each split into fixed blocks.

    Returns ``(blocks, stats)``: a DatasetDict of ``input_ids``/``attention_mask``/``labels``
    blocks per split and a ``{split: PackStats}``. Tokenizing runs on ``num_proc`` processes
    (default: about one per 2,000 stories, at most the CPU count); packing runs in one
    process so the blocks do not depend on it.
    """
    import os

    import datasets

    eos = tokenizer.eos_token_id
    if eos is None:
        raise CorpusError(["the tokenizer has no end-of-text (eos) token to end stories with"])
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos

    def tokenize(batch):
        encoded = tokenizer(batch["text"], add_special_tokens=False, verbose=False)["input_ids"]
        ids = [_with_eos(list(x), eos) for x in encoded]
        return {"ids": ids, "n": [len(x) for x in ids]}

    def pack(batch):
        return pack_blocks(batch["ids"], block_size, pad)

    blocks, stats = {}, {}
    for split, stories in corpus.items():
        if len(stories) == 0:  # no held-out stories (--val-fraction 0)
            blocks[split] = datasets.Dataset.from_dict({k: [] for k in pack_blocks([], 2, 0)})
            stats[split] = PackStats(0, 0, 0, 0)
            continue
        procs = num_proc
        if procs is None:
            procs = max(1, min(os.cpu_count() or 1, len(stories) // 2000))
        procs = min(procs, max(1, len(stories)))
        ids = stories.map(
            tokenize,
            batched=True,
            num_proc=procs if procs > 1 else None,
            remove_columns=stories.column_names,
            desc=f"tokenizing {split}",
        )
        tokens = int(sum(ids["n"])) if len(ids) else 0
        packed = ids.map(
            pack,
            batched=True,
            batch_size=PACK_BATCH,
            remove_columns=["ids", "n"],
            desc=f"packing {split}",
        )
        blocks[split] = packed
        stats[split] = PackStats(
            len(stories), tokens, len(packed), len(packed) * block_size - tokens
        )
    return datasets.DatasetDict(blocks), stats


class EpochShuffle:
    """A sampler whose order depends only on ``seed`` and the epoch (``set_epoch``).

    Stateless apart from the epoch, so a resumed run sees exactly the order the first run
    would have seen, and every process of a data-parallel run agrees on it.
    """

    def __init__(self, length: int, seed: int):
        self.length, self.seed, self.epoch = length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[int]:
        order = list(range(self.length))
        random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        return iter(order)
