"""Every input of a run checked before anything trains: flags, folders, corpus, base model.

Every problem is collected and returned at once, one line each (dungeon.training.finetune
prints them and exits with code 2).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from dungeon.corpus.training import (
    Corpus,
    CorpusError,
    corpus_datasets,
    read_corpus,
    tokenize_and_pack,
)
from dungeon.errors import ModelNotFoundError
from dungeon.training.settings import RESUME_MAY_CHANGE, Settings

HELD_OUT_LIST = "held-out.txt"
"""The run folder's list of held-out stories (a validation list: ``--val-list`` reads it)."""


@dataclass
class Inputs:
    """What the checks found: the base, its tokenizer, the packed data and the folders."""

    base_path: str
    config: object
    tokenizer: object
    corpus: object
    blocks: object
    stats: dict
    corpus_sha256: str
    partial: Path
    checkpoint: Path | None
    read: Corpus | None = None
    """The corpus as read: sources, held-out stories and how they were chosen, statistics."""


def partial_dir(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def latest_checkpoint(partial: Path) -> Path | None:
    """The newest complete checkpoint (complete once renamed from ``step-N.tmp``)."""
    found = sorted((partial / "checkpoints").glob("step-*[0-9]"))
    found = [c for c in found if (c / "trainer_state.json").is_file()]
    return found[-1] if found else None


def resolve_base(name: str) -> str:
    """A path or hub id from_pretrained accepts; raises LookupError with a one-line reason."""
    from dungeon.models import resolve_base as resolve

    try:
        return resolve(name)
    except ModelNotFoundError as err:
        raise LookupError(one_line(err)) from None


def one_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:240]


def saved_record(partial: Path) -> dict:
    """settings.json of an unfinished run: its settings, corpus fingerprint and command."""
    try:
        record = json.loads((partial / "settings.json").read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def check_inputs(s: Settings) -> tuple[Inputs | None, list[str]]:
    """Check flags, folders, corpus and base model; return every problem found."""
    from transformers import AutoConfig, AutoTokenizer

    problems = s.problems()
    launcher_accum = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "")
    if launcher_accum.isdigit() and int(launcher_accum) != s.grad_accum:  # a DeepSpeed config
        problems.append(
            f"the accelerate config accumulates {launcher_accum} micro-batches but --grad-accum "
            f"is {s.grad_accum}: make them agree"
        )
    out = s.output_dir
    partial = partial_dir(out)
    checkpoint = None
    if s.resume:
        checkpoint = latest_checkpoint(partial)
        if checkpoint is None:
            why = f"{out} is finished" if out.exists() else f"{partial} holds no checkpoint"
            problems.append(f"nothing to resume: {why}; run without --resume to start a new run")
        else:
            problems += resume_differences(s, saved_record(partial), partial)
    elif not s.overwrite:
        if out.exists():
            problems.append(f"{out} exists: pass --overwrite to replace it, or another --output")
        if partial.exists():
            problems.append(f"{partial} holds an unfinished run: pass --resume or --overwrite")

    corpus = read = None
    try:
        read = read_stories(s)
        corpus = corpus_datasets(read)
    except CorpusError as err:
        problems += err.problems
    except ValueError as err:  # a bad --separator or --text-column
        problems.append(str(err))

    base_path = config = tokenizer = None
    try:
        base_path = resolve_base(s.base)
        config = AutoConfig.from_pretrained(base_path)
        tokenizer = AutoTokenizer.from_pretrained(base_path)
    except LookupError as err:
        problems.append(f"base model {s.base!r} not found: {err}")
    except (OSError, ValueError) as err:
        problems.append(f"base model {s.base!r} cannot be loaded: {one_line(err)}")
    if config is not None:
        window = getattr(config, "max_position_embeddings", None) or getattr(
            config, "n_positions", 0
        )
        if window and s.block_size > window:
            problems.append(f"--block-size {s.block_size} is over the model's window of {window}")
    if tokenizer is not None and tokenizer.eos_token_id is None:
        problems.append(f"the tokenizer of {s.base} has no end-of-text token to end stories with")
        tokenizer = None

    blocks = stats = None
    digest = ""
    if corpus is not None and tokenizer is not None:
        workers = s.preprocessing_workers
        blocks, stats = tokenize_and_pack(corpus, tokenizer, s.block_size, num_proc=workers)
        if stats["train"].tokens < s.block_size:
            problems.append(
                f"{' '.join(s.data)}: the training stories hold {stats['train'].tokens} tokens, less than "
                f"one block of {s.block_size}; add stories or lower --block-size"
            )
        digest = corpus_digest(corpus, tokenizer)
        saved = saved_record(partial).get("corpus_sha256") if checkpoint else None
        if saved and saved != digest:
            problems.append(
                f"{' '.join(s.data)} changed since the run in {partial} started; --resume needs the same "
                "stories and split (or start over with --overwrite)"
            )
    if problems:
        return None, problems
    inputs = Inputs(
        base_path, config, tokenizer, corpus, blocks, stats, digest, partial, checkpoint, read
    )
    return inputs, []


def read_stories(s: Settings) -> Corpus:
    """Every --data source read, and the held-out stories chosen (dungeon.corpus.loading)."""
    return read_corpus(
        s.data, options=s.read_options(), val_fraction=s.val_fraction, val_list=s.val_list,
        seed=s.seed,
    )  # fmt: skip


def load_stories(s: Settings):
    """The stories split into ``train`` and ``validation``, as the run trains on them."""
    return corpus_datasets(read_stories(s))


def resume_differences(s: Settings, record: dict, partial: Path) -> list[str]:
    saved = record.get("settings")
    if not isinstance(saved, dict):
        return [f"{partial}/settings.json is missing or damaged; start over with --overwrite"]
    now = asdict(s)
    changed = [
        f"--{k.replace('_', '-')} {now[k]!r} (was {saved[k]!r})"
        for k in now
        if k not in RESUME_MAY_CHANGE and k in saved and saved[k] != now[k]
    ]
    if not changed:
        return []
    return [f"--resume needs the settings of the run it continues; changed: {', '.join(changed)}"]


def corpus_digest(corpus, tokenizer) -> str:
    """A fingerprint of the stories, their split and the tokenizer (resume refuses a change)."""
    h = hashlib.sha256(f"{type(tokenizer).__name__}:{len(tokenizer)}".encode())
    for split, stories in sorted(corpus.items()):
        h.update(split.encode())
        for batch in stories.iter(batch_size=1000):
            for name, text in zip(batch["name"], batch["text"]):
                h.update(f"{len(name)}:{name}{len(text)}:{text}".encode())
    return h.hexdigest()


def held_out_list(corpus: Corpus, command: list[str]) -> str:
    """The held-out stories as a validation list, with how they were chosen."""
    lines = [
        "# The stories this run held out, one a line (a validation list).",
        f"# How: {corpus.held_out_how}",
        f"# Run: {' '.join(command)}",
        "# Repeat the split with --val-list held-out.txt (after copying it out of the run).",
        *corpus.held_out_names,
    ]
    return "\n".join(lines) + "\n"
