"""Training data for fine-tuning: load a story corpus, hold out whole stories, tokenize, pack.

scripts/finetune.py uses this module; it is the one place that says what a model trains on::

    from dungeon.corpus.training import load_corpus, tokenize_and_pack

    corpus = load_corpus("stories")               # DatasetDict: train / validation stories
    blocks = tokenize_and_pack(corpus, tokenizer, block_size=512)

Sources ``load_corpus`` accepts:

- a folder of story files (``stories/*.txt``) in the project's format (dungeon.format);
  which files are stories and which are held out (the folder's ``validation*.txt`` lists) is
  dungeon.corpus.sources' answer, the one the corpus checker and ``dungeon eval`` use too;
- a JSONL file (``.jsonl`` / ``.json``), one story a line: ``{"text": ...}`` holding model
  text, or ``{"premise": ..., "turns": [[action, response], ...]}`` (a turn may also be
  ``{"action", "response", "mode"}``);
- a folder written by ``datasets``' ``save_to_disk`` (a Dataset or a DatasetDict whose
  ``validation``/``test`` split is the held-out set), with the same fields;
- a dataset name on the Hugging Face hub, where the hub is reachable.

The training text of a story is its model text, exactly what play sends the model turn after
turn (``StoryFile.model_text()``), tokenized as play tokenizes prompts (no special tokens
added) and followed by the tokenizer's end-of-text token. Stories are packed back to back into
blocks of ``block_size`` tokens; the last block of a split is padded
(labels -100) rather than dropped. The held-out split is always by whole story.

Everything goes through ``datasets``, so tokenizing and packing are cached on disk and
tokenizing runs in parallel (``num_proc``).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dungeon.corpus.sources import (
    CorpusError,
    CorpusFiles,
    ValidationList,
    find_stories,
    read_validation_list,
    validation_lists,
)
from dungeon.format import MODES, StoryFile, StoryFormatError, read_story_file, render_story

DEFAULT_VAL_FRACTION = 0.05
"""Share of stories held out when a corpus has no fixed validation list."""
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


def text_from_fields(row: dict, where: str) -> tuple[str | None, list[str]]:
    """Model text from a ``text`` field or from ``premise`` + ``turns``; (text, problems)."""
    if row.get("text") is not None:
        text = row["text"]
        if not isinstance(text, str):
            return None, [f"{where}: 'text' must be a string"]
        text = text.replace("\r\n", "\n")
        if not text.strip():
            return None, [f"{where}: 'text' is empty"]
        return text, []
    premise, turns = row.get("premise"), row.get("turns")
    if premise is None:
        return None, [f"{where}: needs a 'text' field, or 'premise' and 'turns'"]
    if not isinstance(premise, str) or not premise.strip():
        return None, [f"{where}: 'premise' must be non-empty text"]
    rendered, problems = [], []
    for i, turn in enumerate(turns or [], start=1):
        if isinstance(turn, dict):
            action, response = turn.get("action"), turn.get("response")
            mode = turn.get("mode") or "do"
        elif isinstance(turn, (list, tuple)) and len(turn) in (2, 3):
            action, response, mode = turn[0], turn[1], (turn[2] if len(turn) == 3 else "do")
        else:
            problems.append(f"{where}: turn {i} must be [action, response] or an object")
            continue
        if not isinstance(action, str) or not isinstance(response, str) or not response.strip():
            problems.append(f"{where}: turn {i} needs text for its action and response")
        elif mode not in MODES:
            problems.append(f"{where}: turn {i} has mode {mode!r}; use one of {', '.join(MODES)}")
        else:
            rendered.append((action, mode, response))
    if problems:
        return None, problems
    return render_story(premise, rendered), []


# ---------------------------------------------------------------------------------------------
# Loading


def load_corpus(
    source: str | Path,
    *,
    val_fraction: float | None = None,
    val_list: str | Path | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
):
    """Load a corpus as a ``DatasetDict`` with ``train`` and ``validation`` splits of stories.

    Each row is one whole story: ``name``, ``text`` (model text, no end-of-text token yet) and
    ``prompt`` (its opening, to sample from). The held-out stories are, in order of precedence:
    the split a saved DatasetDict already has; the file ``val_list`` (by default the folder's
    validation lists, see dungeon.corpus.sources; pass ``"none"`` to ignore them);
    ``val_fraction`` of the stories picked with ``seed`` (default 5%; 0 holds out none).
    Raises CorpusError listing every problem.
    """
    import datasets

    problems: list[str] = []
    if val_fraction is not None and not 0.0 <= val_fraction < 1.0:
        problems.append(f"--val-fraction must be in [0, 1), got {val_fraction}")
    path = Path(source)
    explicit_list = val_list is not None and str(val_list).lower() != "none"
    if explicit_list and not Path(val_list).is_file():
        problems.append(f"validation list {val_list} does not exist")
    if problems:
        raise CorpusError(problems)

    cache = str(cache_dir) if cache_dir is not None else None
    held_out = None  # a predefined validation split, when the source has one
    if path.is_dir() and _is_saved_dataset(path):
        loaded = datasets.load_from_disk(str(path))
        stories, held_out = _normalize_saved(loaded, str(path))
    elif path.is_dir():
        records = read_story_folder(find_stories(path))  # raises CorpusError
        stories = datasets.Dataset.from_generator(
            _yield_records, gen_kwargs={"records": records}, cache_dir=cache
        )
    elif path.is_file():
        stories = _load_jsonl(path, cache)
    elif path.exists():
        raise CorpusError([f"{path}: not a folder or a file"])
    elif _looks_like_local_path(str(source)):
        raise CorpusError([f"{source}: no such file or folder"])
    else:
        stories, held_out = _load_hub(str(source), cache)

    if held_out is not None:
        if explicit_list:
            raise CorpusError([f"{source} has its own validation split; drop --val-list"])
        return datasets.DatasetDict(train=stories, validation=held_out)

    names = list(stories["name"])
    lists: list[ValidationList] = []
    if explicit_list:
        lists = [read_validation_list(Path(val_list), names)]
    elif val_list is None and path.is_dir():
        lists = validation_lists(path, names)
    if lists:
        if val_fraction is not None:
            named = " and ".join(str(lst.path) for lst in lists)
            verb = "names" if len(lists) == 1 else "name"
            raise CorpusError(
                [
                    f"{named} {verb} the held-out stories, so --val-fraction does not apply; "
                    "drop it, or pass --val-list none to split by fraction"
                ]
            )
        list_problems = [p for lst in lists for p in lst.problems]
        if list_problems:
            raise CorpusError(list_problems)
        val_names = sorted({n for lst in lists for n in lst.names})
    else:
        fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
        val_names = split_by_fraction(names, fraction, seed)
    val_set = set(val_names)
    if val_set and len(val_set) == len(names):
        raise CorpusError([f"{source}: every story is held out for validation; none is left"])
    train_idx = [i for i, n in enumerate(names) if n not in val_set]
    val_idx = [i for i, n in enumerate(names) if n in val_set]
    return datasets.DatasetDict(train=stories.select(train_idx), validation=stories.select(val_idx))


def read_story_folder(files: CorpusFiles) -> list[dict]:
    """Parse every story file of a folder (found by ``find_stories``) into a record.

    Returns records in name order; raises CorpusError with every problem of every file.
    """
    if files.folder_problems:
        raise CorpusError(files.folder_problems)
    problems: list[str] = []
    records = []
    for file in files.stories:
        try:
            story = read_story_file(file)
        except StoryFormatError as err:
            problems.extend(err.problems)
            continue
        records.append(story_record(files.name(file), training_text(story)))
    if problems:
        raise CorpusError(problems)
    return records


def split_by_fraction(names: Sequence[str], fraction: float, seed: int) -> list[str]:
    """Pick ``ceil(fraction * n)`` whole stories at random (seeded) to hold out."""
    if fraction <= 0:
        return []
    if len(names) < 2:
        raise CorpusError(
            [
                f"the corpus has {len(names)} story; holding some out needs at least 2 "
                "(add stories or pass --val-fraction 0)"
            ]
        )
    order = sorted(names)
    random.Random(seed).shuffle(order)
    count = min(len(order) - 1, max(1, math.ceil(fraction * len(order))))
    return sorted(order[:count])


def _yield_records(records: list[dict]) -> Iterator[dict]:
    yield from records


def _looks_like_local_path(source: str) -> bool:
    return (
        source.startswith((".", "/", "~"))
        or source.endswith((".jsonl", ".json", ".txt"))
        or source.count("/") > 1
    )


def _is_saved_dataset(folder: Path) -> bool:
    return any((folder / f).is_file() for f in ("dataset_info.json", "dataset_dict.json"))


def _load_jsonl(path: Path, cache: str | None):
    """Check every line first (so errors name file:line), then load through ``datasets``."""
    import datasets

    problems: list[str] = []
    count = 0
    with path.open("rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                problems.append(f"{where}: not UTF-8 text (byte 0x{raw[err.start]:02x})")
                continue
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                problems.append(f"{where}: not valid JSON ({err.msg})")
                continue
            if not isinstance(row, dict):
                problems.append(f"{where}: each line must be a JSON object")
                continue
            problems.extend(text_from_fields(row, where)[1])
            count += 1
    if not problems and count == 0:
        problems.append(f"{path}: no stories in this file")
    if problems:
        raise CorpusError(problems)
    try:
        raw_ds = datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=cache)
    except Exception as err:  # mixed field types across lines, say
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CorpusError([f"{path}: could not be read as a table ({first[:160]})"]) from None
    return _normalize(raw_ds, path.name)


def _normalize(ds, label: str):
    """Rows with ``text`` or ``premise``/``turns`` → rows with ``name``, ``text``, ``prompt``."""
    columns = set(ds.column_names)
    if "text" not in columns and not {"premise", "turns"} <= columns:
        raise CorpusError([f"{label}: needs a 'text' column, or 'premise' and 'turns' columns"])
    if len(ds) == 0:
        raise CorpusError([f"{label}: the dataset has no rows"])
    have_names = "name" in columns

    def convert(batch, indices):
        out: dict[str, list] = {"name": [], "text": [], "prompt": []}
        keys = list(batch)
        for j, idx in enumerate(indices):
            row = {k: batch[k][j] for k in keys}
            text, _ = text_from_fields(row, f"{label} row {idx}")
            name = str(row["name"]) if have_names and row.get("name") else f"{label}#{idx}"
            record = story_record(name, text or "")
            for k in out:
                out[k].append(record[k])
        return out

    normalized = ds.map(
        convert, batched=True, with_indices=True, remove_columns=ds.column_names, desc="stories"
    )
    empty = normalized.filter(lambda t: not t.strip(), input_columns="text")
    if len(empty):
        raise CorpusError(
            [f"{label}: {len(empty)} rows have no usable text (first: {empty[0]['name']})"]
        )
    return normalized


def _normalize_saved(loaded, label: str):
    import datasets

    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise CorpusError([f"{label}: a saved DatasetDict needs a 'train' split"])
        val_split = next((s for s in ("validation", "valid", "test") if s in loaded), None)
        train = _normalize(loaded["train"], f"{label}[train]")
        val = _normalize(loaded[val_split], f"{label}[{val_split}]") if val_split else None
        return train, val
    return _normalize(loaded, label), None


def _load_hub(name: str, cache: str | None):
    import datasets

    try:
        loaded = datasets.load_dataset(name, cache_dir=cache)
    except Exception as err:  # offline, unknown name, private...: one clear line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CorpusError(
            [f"{name}: not a local file or folder, and not loadable from the hub ({first[:160]})"]
        ) from None
    return _normalize_saved(loaded, name)


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
