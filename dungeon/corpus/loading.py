"""A whole corpus: every ``--data`` source read into stories, and the held-out ones chosen.

The one answer fine-tuning (dungeon.corpus.training) and ``dungeon check-corpus`` share::

    from dungeon.corpus.loading import read_corpus

    corpus = read_corpus(["stories", "extra.jsonl:2"], val_fraction=None, seed=42)
    corpus.train, corpus.validation   # StoryText lists (training stories weighted)
    corpus.held_out_how               # one line: which stories are held out, and why
    print(corpus.table())             # the statistics both commands print

Sources (``SourceSpec``): a folder of ``.txt``/``.md`` files (or a folder ``datasets`` saved),
a text file (several stories split on ``<|endoftext|>`` or ``--separator``), a JSONL, CSV or
TSV file, or a hub dataset name where the hub is reachable. Reading needs no ``datasets``
except for saved and hub datasets.

Held-out stories, in order: ``val_list`` (a file naming them) when given; else each source's
own (a folder's ``validation*.txt`` lists, a saved dataset's validation split), unless
``val_list`` is ``"none"``; the stories of sources without their own are split by
``val_fraction`` (default 5%) with ``seed``, by whole story; a corpus of one story holds out
its tail. Every problem of every source is collected, then raised as one CorpusError.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from dungeon.corpus.readers import ReadOptions, StoryText, read_text_file
from dungeon.corpus.sources import (
    CorpusError,
    SourceSpec,
    find_stories,
    read_validation_list,
)

DEFAULT_VAL_FRACTION = 0.05
"""Share of stories held out when a source has no validation list of its own."""
TEXT_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".tab")


@dataclass
class SourceStories:
    """What one source holds."""

    spec: SourceSpec
    kind: str
    """story folder, text file, JSONL, CSV, TSV, saved dataset or hub dataset."""
    stories: list[StoryText] = field(default_factory=list)
    own_held_out: list[str] | None = None
    """Names its own validation lists or split hold out; None when it has none."""
    own_how: str = ""
    own_split: bool = False
    """Its own held-out stories are a dataset's split (``--val-list none`` keeps them)."""
    """Where its own held-out stories come from: "named by the lists of stories
    (validation.txt)", "from the 'validation' split of my-dataset"."""
    separator_found: bool = False


@dataclass
class Corpus:
    """Stories split into training (weighted) and held-out, and how they were chosen."""

    sources: list[SourceStories]
    train: list[StoryText]
    validation: list[StoryText]
    held_out_how: str

    @property
    def stories(self) -> list[StoryText]:
        return [s for src in self.sources for s in src.stories]

    @property
    def changed(self) -> int:
        return sum(s.changed for s in self.stories)

    @property
    def dropped(self) -> int:
        return sum(s.dropped for s in self.stories)

    @property
    def held_out_names(self) -> list[str]:
        return [s.name for s in self.validation]

    def table(self, tokens: dict[str, int] | None = None) -> str:
        """The statistics fine-tuning and ``dungeon check-corpus`` print."""
        held = set(self.held_out_names)
        rows = [f"{'source':<28}{'kind':<15}{'stories':>8}{'held out':>9}{'turns':>8}"
                f"{'prose':>7}{'words':>10}{'weight':>7}"]  # fmt: skip
        for src in self.sources:
            stories = src.stories
            rows.append(
                f"{_cut(src.spec.path, 27):<28}{src.kind:<15}{len(stories):>8}"
                f"{sum(s.name in held for s in stories):>9}"
                f"{sum(len(s.actions) for s in stories):>8}"
                f"{sum(s.kind == 'prose' for s in stories):>7}"
                f"{sum(len(s.text.split()) for s in stories):>10,}{src.spec.weight:>7g}"
            )
        everything = self.stories
        if len(self.sources) > 1:
            rows.append(
                f"{'total':<43}{len(everything):>8}{len(self.validation):>9}"
                f"{sum(len(s.actions) for s in everything):>8}"
                f"{sum(s.kind == 'prose' for s in everything):>7}"
                f"{sum(len(s.text.split()) for s in everything):>10,}"
            )
        rows.append(
            f"training: {len(self.train)} stories (weights applied), held out: "
            f"{len(self.validation)}; {self.held_out_how}"
        )
        rows.append(
            f"actions: {self.changed} action line(s) rewritten as play sends them"
            + (f"; {self.dropped} turn(s) without a response left out" if self.dropped else "")
        )
        if tokens:
            rows.append("tokens: " + ", ".join(f"{k} {v:,}" for k, v in tokens.items()))
        return "\n".join(rows)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


# ---------------------------------------------------------------------------------------------
# Reading sources


def read_source(spec: SourceSpec, options: ReadOptions, cache: str | None = None):
    """``(SourceStories, problems)`` for one source; problems are listed, not raised."""
    path = Path(spec.path)
    if path.is_dir() and _is_saved_dataset(path):
        return _read_saved(spec, path, options)
    if path.is_dir():
        files = find_stories(path)
        src = SourceStories(spec, "story folder")
        problems = list(files.folder_problems)
        for file in files.stories:
            stories, errs, found = read_text_file(file, files.name(file), options)
            src.stories.extend(stories)
            src.separator_found |= found
            problems.extend(errs)
        if files.lists:
            src.own_held_out = _expand(files.validation_names, src.stories)
            lists = ", ".join(lst.path.name for lst in files.lists)
            src.own_how = f"named by the lists of {spec.label} ({lists})"
            problems.extend(files.list_problems)
        return src, problems
    if path.is_file():
        from dungeon.corpus.tables import read_jsonl, read_table

        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json"):
            stories, problems = read_jsonl(path, options)
            return SourceStories(spec, "JSONL", stories), problems
        if suffix in (".csv", ".tsv", ".tab"):
            stories, problems = read_table(path, options)
            return SourceStories(spec, "CSV" if suffix == ".csv" else "TSV", stories), problems
        stories, problems, found = read_text_file(path, path.name, options)
        return SourceStories(spec, "text file", stories, separator_found=found), problems
    if path.exists():
        return SourceStories(spec, "?"), [f"{path}: not a folder or a file"]
    if _looks_like_local_path(spec.path):
        return SourceStories(spec, "?"), [f"{spec.path}: no such file or folder"]
    return _read_hub(spec, options, cache)


def _expand(names: Sequence[str], stories: Sequence[StoryText]) -> list[str]:
    """Names a list holds out: a file's name holds out every story of that file."""
    chosen = set(names)
    return [s.name for s in stories if s.name in chosen or s.name.rsplit("#", 1)[0] in chosen]


def _is_saved_dataset(folder: Path) -> bool:
    return any((folder / f).is_file() for f in ("dataset_info.json", "dataset_dict.json"))


def _looks_like_local_path(source: str) -> bool:
    return (
        source.startswith((".", "/", "~"))
        or source.endswith((*TEXT_SUFFIXES, ".txt", ".md"))
        or source.count("/") > 1
    )


def _read_saved(spec: SourceSpec, path: Path, options: ReadOptions):
    import datasets

    return _read_loaded(spec, "saved dataset", datasets.load_from_disk(str(path)), options)


def _read_hub(spec: SourceSpec, options: ReadOptions, cache: str | None):
    import datasets

    try:
        loaded = datasets.load_dataset(spec.path, cache_dir=cache)
    except Exception as err:  # offline, unknown name, private...: one clear line
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return SourceStories(spec, "hub dataset"), [
            f"{spec.path}: not a local file or folder, and not loadable from the hub ({first[:160]})"
        ]
    return _read_loaded(spec, "hub dataset", loaded, options)


def _read_loaded(spec: SourceSpec, kind: str, loaded, options: ReadOptions):
    """A Dataset, or a DatasetDict whose validation (or valid, test) split is held out."""
    import datasets

    from dungeon.corpus.tables import read_dataset_rows

    label = spec.label
    src = SourceStories(spec, kind)
    if not isinstance(loaded, datasets.DatasetDict):
        src.stories, problems = read_dataset_rows(loaded, label, options)
        return src, problems
    if "train" not in loaded:
        return src, [f"{label}: a saved DatasetDict needs a 'train' split"]
    src.stories, problems = read_dataset_rows(loaded["train"], f"{label}[train]", options)
    split = next((s for s in ("validation", "valid", "test") if s in loaded), None)
    if split:
        held, errs = read_dataset_rows(loaded[split], f"{label}[{split}]", options)
        problems += errs
        src.stories += held
        src.own_held_out = [s.name for s in held]
        src.own_how, src.own_split = f"from the {split!r} split of {label}", True
    return src, problems


# ---------------------------------------------------------------------------------------------
# The corpus and its held-out stories


def read_corpus(
    data: Sequence[str | SourceSpec] | str | SourceSpec,
    *,
    options: ReadOptions | None = None,
    val_fraction: float | None = None,
    val_list: str | Path | None = None,
    seed: int = 0,
    cache_dir: str | Path | None = None,
) -> Corpus:
    """Read every source and choose the held-out stories; raises CorpusError listing every
    problem of every source (see the module docstring)."""
    options = options or ReadOptions()
    specs = [SourceSpec.parse(d) for d in ([data] if isinstance(data, (str, Path, SourceSpec)) else data)]  # fmt: skip
    problems: list[str] = []
    if not specs:
        problems.append("no --data source given")
    if val_fraction is not None and not 0.0 <= val_fraction < 1.0:
        problems.append(f"--val-fraction must be in [0, 1), got {val_fraction}")
    explicit_list = val_list is not None and str(val_list).lower() != "none"
    if explicit_list and not Path(val_list).is_file():
        problems.append(f"validation list {val_list} does not exist")
    for spec in specs:
        if not spec.weight > 0:
            problems.append(f"--data {spec.path}:{spec.weight:g}: a weight must be above 0")
    sources = []
    for spec in specs:
        src, errs = read_source(spec, options, str(cache_dir) if cache_dir else None)
        sources.append(src)
        problems.extend(errs)
    text_sources = [s for s in sources if s.kind in ("story folder", "text file")]
    if options.separator and not any(s.separator_found for s in text_sources):
        where = ", ".join(s.spec.path for s in text_sources) or "no text file or folder"
        problems.append(f"--separator {options.separator!r} occurs nowhere in {where}")
    if problems:
        raise CorpusError(problems)
    if len(sources) > 1:
        _prefix_names(sources)
    train, validation, how = choose_held_out(sources, val_fraction, val_list, seed)
    return Corpus(sources, train, validation, how)


def _prefix_names(sources: list[SourceStories]) -> None:
    """Several sources: a story's name starts with its folder's or dataset's (``extra/tale.txt``);
    a file's stories are already named after it (``big.txt#3``) unless two files share a name."""
    labels = [src.spec.label for src in sources]
    for i, src in enumerate(sources):
        unique = labels.count(labels[i]) == 1
        if unique and src.kind not in ("story folder", "saved dataset", "hub dataset"):
            continue
        label = labels[i] if unique else f"{i + 1}-{labels[i]}"
        for story in src.stories:
            story.name = f"{label}/{story.name}"
        if src.own_held_out is not None:
            src.own_held_out = [f"{label}/{n}" for n in src.own_held_out]


def choose_held_out(
    sources: list[SourceStories], val_fraction: float | None, val_list, seed: int
) -> tuple[list[StoryText], list[StoryText], str]:
    """``(train with weights applied, held out, how they were chosen)``."""
    everything = [s for src in sources for s in src.stories]
    names = [s.name for s in everything]
    if val_list is not None and str(val_list).lower() != "none":
        own = [src for src in sources if src.own_split]
        if own:
            raise CorpusError([f"{own[0].spec.path} has its own validation split; drop --val-list"])
        files = sorted({n.rsplit("#", 1)[0] for n in names} - set(names))  # big.txt: all of it
        lst = read_validation_list(Path(val_list), [*names, *files])
        if lst.problems:
            raise CorpusError(list(lst.problems))
        held = set(_expand(lst.names, everything))
        how = f"the stories {val_list} names"
        return _split(sources, held, seed, how)
    if val_list is not None:  # "none": a folder's lists are ignored, a saved split is not
        for src in sources:
            if not src.own_split:
                src.own_held_out, src.own_how = None, ""
    held: set[str] = set()
    hows = []
    for src in sources:
        if src.own_held_out is not None:
            held.update(src.own_held_out)
            hows.append(f"{len(src.own_held_out)} {src.own_how}")
    pool = [s for src in sources if src.own_held_out is None for s in src.stories]
    if val_fraction is not None and not pool and hows:
        named = "; ".join(hows)
        raise CorpusError(
            [
                f"the sources choose their own held-out stories ({named}), so --val-fraction "
                "does not apply; drop it, or pass --val-list none to split by fraction"
            ]
        )
    fraction = DEFAULT_VAL_FRACTION if val_fraction is None else val_fraction
    if pool and fraction > 0 and len(everything) == 1:
        return _hold_out_tail(sources, everything[0], fraction)
    if pool and fraction > 0:
        picked = split_by_fraction([s.name for s in pool], fraction, seed)
        held.update(picked)
        hows.append(f"{len(picked)} of {len(pool)} picked at random ({fraction:g}, seed {seed})")
    return _split(sources, held, seed, "; ".join(hows) or "none (--val-fraction 0)")


def _split(sources, held: set[str], seed: int, how: str):
    if held and all(s.name in held for src in sources for s in src.stories):
        raise CorpusError(["every story is held out for validation; none is left to train on"])
    train, validation = [], []
    for src in sources:
        kept = [s for s in src.stories if s.name not in held]
        validation.extend(s for s in src.stories if s.name in held)
        train.extend(weighted(kept, src.spec.weight, seed))
    return train, validation, how


def weighted(stories: list[StoryText], weight: float, seed: int) -> list[StoryText]:
    """``weight`` copies of ``stories``: whole copies, then a seeded share for the fraction."""
    whole = int(weight)
    out = list(stories) * whole
    extra = round((weight - whole) * len(stories))
    if extra:
        order = list(range(len(stories)))
        random.Random(seed).shuffle(order)
        out.extend(stories[i] for i in sorted(order[:extra]))
    return out


def split_by_fraction(names: Sequence[str], fraction: float, seed: int) -> list[str]:
    """Pick ``ceil(fraction * n)`` whole stories at random (seeded) to hold out."""
    if fraction <= 0 or len(names) < 2:
        return []
    order = sorted(names)
    random.Random(seed).shuffle(order)
    count = min(len(order) - 1, max(1, math.ceil(fraction * len(order))))
    return sorted(order[:count])


def _hold_out_tail(sources, story: StoryText, fraction: float):
    """One story: train on its head, hold out its tail (from a paragraph or turn boundary)."""
    text = story.text
    at = int(len(text) * (1 - fraction))  # the tail is at least this share of the text
    cut = text.rfind("\n\n", 0, at)
    if cut <= 0:
        cut = text.find("\n\n", at)
    if cut <= 0:  # one paragraph: cut at a space
        cut = text.rfind(" ", 0, at)
        if cut <= 0:
            raise CorpusError(
                [f"{story.name}: one story too short to hold out its tail; pass --val-fraction 0"]
            )
        head, tail = text[:cut], text[cut + 1 :]
    else:
        head, tail = text[:cut], text[cut + 2 :]
    head_story = replace(story, text=head)
    tail_story = replace(story, name=f"{story.name}#tail", text=tail, actions=[], changed=0)
    src = sources[0]
    how = (
        f"one story: its tail held out (the last {len(tail):,} of {len(text):,} characters, "
        f"from a {'paragraph or turn' if text[cut : cut + 2] == chr(10) * 2 else 'word'} boundary)"
    )
    train = weighted([head_story], src.spec.weight, 0)
    return train, [tail_story], how
