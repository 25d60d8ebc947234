"""Which files of a story folder are stories, and which of them are held out.

The one place that answers this, for the corpus checker (``dungeon check-corpus``), held-out
perplexity (``dungeon eval``) and fine-tuning (scripts/finetune.py through
dungeon.corpus.training), so the three always agree on the held-out stories::

    from dungeon.corpus.sources import find_stories

    files = find_stories("stories")
    files.stories           # every story file, sorted
    files.held_out          # the story files a validation list names
    files.validation_names  # their names ("fantasy-04-familiar-exam.txt")
    files.problems          # every problem with the folder or its lists, one line each

The rules:

- A story file is a ``*.txt`` or ``*.md`` file anywhere under the folder, except files inside
  a folder whose name starts with "." (or hidden files), validation lists, and a folder's notes
  (README, LICENSE, CHANGELOG, ...). Its *name* is its path relative to the folder, with "/"
  between folders (``fantasy-01-x.txt``, ``extra/y.md``).
- A validation list is a ``validation*.txt`` file at the top of the folder: ``validation.txt``
  (the fixed list), ``validation-new.txt`` and so on. One story a line, by name or by file name
  where that is unique; ``#`` at the start of a line or after a space starts a comment (a story
  of a bigger file is named ``big.txt#3``); blank lines are skipped. A folder may have several
  lists: the held-out stories are all the stories they name.

A corpus may hold several sources (``--data a/ --data b.jsonl:2``): ``SourceSpec.parse`` reads
one ``--data`` value and its optional weight.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

STORY_PATTERNS = ("*.txt", "*.md")
"""Story files, searched for in the folder and every folder below it."""
STORY_PATTERN = ", ".join(STORY_PATTERNS)
NOT_STORIES = ("readme", "license", "licence", "changelog", "notice", "contributing", "authors")
"""A file whose name (without extension) is one of these is a folder's notes, not a story."""
VALIDATION_LIST = "validation.txt"
"""The fixed validation list of a story folder."""
VALIDATION_PATTERN = "validation*.txt"
"""Every file of this pattern at the top of a story folder is a validation list."""


_COMMENT = re.compile(r"(?:^|\s)#")


class CorpusError(ValueError):
    """A corpus that cannot be used; ``problems`` lists every problem, one line each."""

    def __init__(self, problems: Sequence[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class ValidationList:
    """One validation list: the story names it holds out, and what is wrong with it."""

    path: Path
    names: tuple[str, ...] = ()
    """The names of the stories it holds out, sorted; entries naming no story are left out."""
    problems: tuple[str, ...] = ()
    """Entries that name no story of the corpus (file:line), or a file that cannot be read."""


@dataclass
class CorpusFiles:
    """The story files of a folder and its validation lists (see ``find_stories``)."""

    folder: Path
    stories: list[Path] = field(default_factory=list)
    """Every story file, sorted (by path)."""
    lists: list[ValidationList] = field(default_factory=list)
    """The folder's validation lists, ``validation.txt`` first."""
    folder_problems: list[str] = field(default_factory=list)
    """Problems of the folder itself: it is missing, or holds no story file."""

    def name(self, path: Path) -> str:
        """A story's name: its path relative to the folder, with "/" between folders."""
        return Path(path).relative_to(self.folder).as_posix()

    @property
    def names(self) -> list[str]:
        return [self.name(p) for p in self.stories]

    @property
    def validation_names(self) -> list[str]:
        """The names of the held-out stories, sorted: every story any list names."""
        return sorted({n for lst in self.lists for n in lst.names})

    @property
    def held_out(self) -> list[Path]:
        held = set(self.validation_names)
        return [p for p in self.stories if self.name(p) in held]

    @property
    def list_problems(self) -> list[str]:
        return [p for lst in self.lists for p in lst.problems]

    @property
    def problems(self) -> list[str]:
        """Every problem: the folder's, then each list's."""
        return [*self.folder_problems, *self.list_problems]


def find_stories(folder: str | Path) -> CorpusFiles:
    """The story files of ``folder`` and its validation lists; problems are listed, not raised."""
    folder = Path(folder)
    if not folder.is_dir():
        return CorpusFiles(folder, folder_problems=[f"{folder}: no such folder"])
    found = {p for pattern in STORY_PATTERNS for p in folder.rglob(pattern)}
    stories = sorted(p for p in found if is_story_file(p, folder))
    files = CorpusFiles(folder, stories)
    if not stories:
        files.folder_problems.append(f"{folder}: no story files ({STORY_PATTERN}) in this folder")
    files.lists = validation_lists(folder, files.names)
    return files


def is_story_file(path: Path, folder: Path) -> bool:
    parts = path.relative_to(folder).parts
    return (
        path.is_file()
        and not fnmatch.fnmatch(path.name, VALIDATION_PATTERN)
        and path.stem.lower() not in NOT_STORIES
        and not any(part.startswith(".") for part in parts)
    )


def validation_lists(folder: Path, names: Sequence[str]) -> list[ValidationList]:
    """Every validation list at the top of ``folder``, read against the corpus ``names``.

    A story named by two lists is a problem of the second: a new list holds out new stories.
    """
    paths = sorted(
        (p for p in folder.glob(VALIDATION_PATTERN) if p.is_file()),
        key=lambda p: (p.name != VALIDATION_LIST, p.name),
    )
    lists, seen = [], {}
    for path in paths:
        lst = read_validation_list(path, names)
        again = [
            f"{path}: {n} is held out by {seen[n].name} already" for n in lst.names if n in seen
        ]
        if again:
            lst = replace(lst, problems=(*lst.problems, *again))
        for n in lst.names:
            seen.setdefault(n, path)
        lists.append(lst)
    return lists


def read_validation_list(path: str | Path, names: Sequence[str]) -> ValidationList:
    """The stories a validation list names; every entry must name one story of ``names``.

    An entry is a story's name, or its file name where no other story has the same one.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        return ValidationList(path, problems=(f"{path}: not UTF-8 text",))
    except OSError as err:
        return ValidationList(path, problems=(f"{path}: cannot be read ({err.strerror or err})",))
    known = set(names)
    by_file_name: dict[str, list[str]] = {}
    for n in names:
        by_file_name.setdefault(n.rsplit("/", 1)[-1], []).append(n)
    chosen, problems = set(), []
    for lineno, raw in enumerate(lines, start=1):
        entry = _COMMENT.split(raw, 1)[0].strip()
        if not entry:
            continue
        if entry in known:
            chosen.add(entry)
        elif len(by_file_name.get(entry, [])) == 1:
            chosen.add(by_file_name[entry][0])
        elif entry in by_file_name:
            where = ", ".join(by_file_name[entry])
            problems.append(f"{path}:{lineno}: {entry!r} could be {where}; write the folder too")
        else:
            problems.append(f"{path}:{lineno}: no story file named {entry!r} in the corpus")
    return ValidationList(path, tuple(sorted(chosen)), tuple(problems))


@dataclass(frozen=True)
class SourceSpec:
    """One ``--data`` value: a folder, a file, a saved dataset or a hub dataset, and its weight.

    ``weight`` multiplies the source's training stories: 2 trains on each twice per epoch, 0.5
    on a seeded half of them. Held-out stories are never weighted.
    """

    path: str
    weight: float = 1.0

    @classmethod
    def parse(cls, text: str | SourceSpec) -> SourceSpec:
        """``a/`` or ``b.jsonl:2``: a trailing ``:NUMBER`` is a weight unless the whole text
        names an existing file."""
        if isinstance(text, SourceSpec):
            return text
        text = str(text)
        m = re.fullmatch(r"(.+):(\d+(?:\.\d*)?|\.\d+)", text)
        if m and not Path(text).exists():
            return cls(m.group(1), float(m.group(2)))
        return cls(text)

    @property
    def label(self) -> str:
        """A short name for tables and story names: the folder's or file's name."""
        return Path(self.path.rstrip("/")).name or self.path
