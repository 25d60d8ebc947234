"""The corpus checker: keeps stories/ healthy, and checks any corpus before it trains.

    dungeon check-corpus [stories/]
    dungeon check-corpus --data my-stories/ --data big.txt:2 --separator '***'

Every file must parse, carry its header, have 8-30 turns of sensible length, answer in the
second person, never write a player action inside a response, and not nearly duplicate
another story. Which files are stories and which are held out is dungeon.corpus.sources'
answer, the same that ``dungeon eval`` and fine-tuning use. Every validation list
(validation.txt, validation-new.txt, ...) must name existing stories, each held out once;
together they must cover every genre and hold at least a tenth of the corpus.

Those rules are the project's, for a folder in the project's format (``check_corpus``). Any
other corpus, every shape fine-tuning reads (``check_sources``), gets the statistics
fine-tuning prints, the held-out stories it would hold out, the bad-input checks (empty,
binary and non-UTF-8 files, a missing separator, a corpus smaller than one block) and, for
files in the project's format among it, the story rules above.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dungeon.actions import make_action
from dungeon.corpus.loading import Corpus, read_corpus
from dungeon.corpus.readers import ReadOptions, split_header
from dungeon.corpus.sources import (
    VALIDATION_LIST,
    VALIDATION_PATTERN,
    CorpusError,
    CorpusFiles,
    SourceSpec,
    ValidationList,
    find_stories,
)
from dungeon.format import REQUIRED_HEADER, StoryFile, StoryFormatError, read_story_file

MIN_TURNS, MAX_TURNS = 8, 30
MIN_RESPONSE_WORDS, MAX_RESPONSE_WORDS = 3, 220
DUPLICATE_THRESHOLD = 0.25
"""Stories sharing this share of their word 5-grams (Jaccard) are near-duplicates."""
MIN_VALIDATION_SHARE = 0.10

_QUOTED = re.compile(r"\"[^\"]*\"|“[^”]*”")
_FIRST_PERSON = re.compile(r"\b(I|I'm|I've|I'd|I'll|(?i:me|my|mine|myself))\b")
_SECOND_PERSON = re.compile(r"\b(you|your|yours|yourself)\b", re.IGNORECASE)


@dataclass
class CorpusReport:
    stories: list[StoryFile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    validation: list[str] = field(default_factory=list)
    """The names of the held-out stories: every story a validation list names."""
    lists: list[ValidationList] = field(default_factory=list)
    by_name: dict[str, StoryFile] = field(default_factory=dict)
    """Each parsed story by its name in the folder (dungeon.corpus.sources)."""
    tokens: int | None = None

    @property
    def words(self) -> int:
        return sum(len(s.model_text().split()) for s in self.stories)

    @property
    def turns(self) -> int:
        return sum(len(s.turns) for s in self.stories)

    def by_genre(self) -> dict[str, list[StoryFile]]:
        groups: dict[str, list[StoryFile]] = defaultdict(list)
        for s in self.stories:
            groups[s.genre].append(s)
        return dict(sorted(groups.items()))

    def table(self) -> str:
        val = {self.by_name[n].path for n in self.validation if n in self.by_name}
        rows = [f"{'genre':<20}{'stories':>8}{'valid.':>8}{'turns':>8}{'words':>9}"]
        for genre, group in self.by_genre().items():
            words = sum(len(s.model_text().split()) for s in group)
            nval = sum(s.path in val for s in group)
            turns = sum(len(s.turns) for s in group)
            rows.append(f"{genre:<20}{len(group):>8}{nval:>8}{turns:>8}{words:>9,}")
        rows.append(
            f"{'total':<20}{len(self.stories):>8}{len(val):>8}{self.turns:>8}{self.words:>9,}"
        )
        for lst in self.lists:
            genres = {self.by_name[n].genre for n in lst.names if n in self.by_name}
            rows.append(
                f"{lst.path.name}: {len(lst.names)} stories held out, {len(genres)} genre(s)"
            )
        actions = [a for s in self.stories for a, _ in s.turns]
        if actions:
            speech = sum(a.startswith("You say") for a in actions) / len(actions)
            terse = sum(len(a.split()) <= 4 for a in actions) / len(actions)
            rows.append(f"actions: {speech:.0%} speech, {terse:.0%} terse (4 words or fewer)")
        if self.tokens is not None:
            rows.append(f"GPT-2 tokens: {self.tokens:,}")
        return "\n".join(rows)


def narration_only(text: str) -> str:
    """Narration only: drop quoted speech, and writing introduced by a colon ("reads: ...")."""
    return re.sub(r":\s+[A-Z].*", " ", _QUOTED.sub(" ", text))


def check_story(story: StoryFile) -> list[str]:
    """Problems of one parsed story (format errors are found by the parser)."""
    p, where = [], story.path
    if not MIN_TURNS <= len(story.turns) <= MAX_TURNS:
        p.append(f"{where}: {len(story.turns)} turns; a story needs {MIN_TURNS} to {MAX_TURNS}")
    if not re.search(r"\byou\b", story.premise, re.IGNORECASE):
        p.append(f"{where}: the premise is not in the second person (no 'you')")
    for n, (action, response) in enumerate(story.turns, start=1):
        rendered = make_action(action, "do").text
        if rendered != action:
            p.append(
                f"{where}: turn {n}: the action is not as play renders it: {action!r} -> {rendered!r}"
            )
        words = len(response.split())
        if not MIN_RESPONSE_WORDS <= words <= MAX_RESPONSE_WORDS:
            p.append(
                f"{where}: turn {n}: the response has {words} words; keep it {MIN_RESPONSE_WORDS}-{MAX_RESPONSE_WORDS}"
            )
        if "> " in response or response.lstrip().startswith(">"):
            p.append(f"{where}: turn {n}: the response contains a player marker '> '")
        if re.match(r"you (then )?(decide|choose) to\b", response, re.IGNORECASE):
            p.append(f"{where}: turn {n}: the response decides the player's next action")
        # Narration slipping into the first person. Signs and letters quoted without quote
        # marks ("The note reads: I was here.") are fine, so one stray "I" is not a slip.
        if first_person_slip(response):
            p.append(
                f"{where}: turn {n}: the narration is in the first person; write in the second person"
            )
    return p


def first_person_slip(text: str) -> bool:
    """The narration (not speech, not quoted writing) is in the first person."""
    narration = narration_only(text)
    first = len(_FIRST_PERSON.findall(narration))
    return first >= 2 and first > len(_SECOND_PERSON.findall(narration))


def word_ngram_hashes(text: str, n: int = 5) -> set[int]:
    """Hashes of the word n-grams of ``text`` (lower case): two stories' overlap measure."""
    words = re.findall(r"\w+", text.lower())
    return {hash(tuple(words[i : i + n])) for i in range(max(0, len(words) - n + 1))}


def near_duplicates(stories: list[StoryFile], threshold: float = DUPLICATE_THRESHOLD) -> list[str]:
    sets = [word_ngram_hashes(s.model_text()) for s in stories]
    found = []
    for i in range(len(stories)):
        for j in range(i + 1, len(stories)):
            a, b = sets[i], sets[j]
            if not a or not b:
                continue
            shared = len(a & b)
            sim = shared / (len(a) + len(b) - shared)  # Jaccard, without building the union
            if sim >= threshold:
                found.append(
                    f"{stories[i].path} and {stories[j].path} are near-duplicates ({sim:.0%} shared 5-grams)"
                )
    return found


def check_corpus(folder: Path, count_tokens: Callable[[str], int] | None = None) -> CorpusReport:
    """Parse and check every story in ``folder`` and its validation lists; every problem goes
    in the report."""
    folder = Path(folder)
    files = find_stories(folder)
    report = CorpusReport(lists=files.lists)
    if not files.stories:
        report.problems.extend(files.folder_problems)
        return report
    for path in files.stories:
        try:
            story = read_story_file(path)
        except StoryFormatError as err:
            report.problems.extend(err.problems)
            continue
        report.stories.append(story)
        report.by_name[files.name(path)] = story
        report.problems.extend(check_story(story))
    titles = Counter(s.title.lower() for s in report.stories)
    report.problems.extend(
        f"{folder}: the title {t!r} is used {n} times" for t, n in titles.items() if n > 1
    )
    report.problems.extend(near_duplicates(report.stories))
    report.validation = files.validation_names
    report.problems.extend(check_validation(files, report))
    if count_tokens is not None:
        report.tokens = sum(count_tokens(s.model_text()) for s in report.stories)
    return report


def check_validation(files: CorpusFiles, report: CorpusReport) -> list[str]:
    """Each list names stories, held out once; together they cover every genre and a tenth."""
    folder = files.folder
    if not files.lists:
        where = folder / VALIDATION_LIST
    else:
        where = files.lists[0].path if len(files.lists) == 1 else folder / VALIDATION_PATTERN
    problems = []
    if not report.validation and not files.list_problems:
        problems.append(f"{where}: missing or empty; list the held-out stories")
    for lst in files.lists:
        if not lst.names and not lst.problems and report.validation:
            problems.append(f"{lst.path}: empty; list held-out stories in it, or delete it")
        problems.extend(lst.problems)
    covered = {report.by_name[n].genre for n in report.validation if n in report.by_name}
    for genre in sorted({s.genre for s in report.stories} - covered):
        problems.append(f"{where}: no validation story of genre {genre!r}")
    if len(report.validation) < MIN_VALIDATION_SHARE * len(report.stories):
        problems.append(
            f"{where}: {len(report.validation)} stories; at least "
            f"{MIN_VALIDATION_SHARE:.0%} of {len(report.stories)} are needed"
        )
    return problems


# ---------------------------------------------------------------------------------------------
# Any corpus: what fine-tuning would train on


@dataclass
class SourcesReport:
    """``check_sources``: the project checker's report where it applies, and the corpus as
    fine-tuning reads it."""

    corpus: Corpus | None = None
    project: CorpusReport | None = None
    """The strict report of a folder in the project's format."""
    problems: list[str] = field(default_factory=list)
    tokens: dict[str, int] | None = None

    def table(self) -> str:
        parts = [self.project.table()] if self.project is not None else []
        if self.corpus is not None:
            parts.append(self.corpus.table(self.tokens))
            names = self.corpus.held_out_names
            more = " ..." if len(names) > 30 else ""
            parts.append(f"held out ({len(names)}): {', '.join(names[:30])}{more}")
        return "\n".join(parts)


def is_project_folder(folder: Path) -> bool:
    """A folder whose every story file carries the project's header (title, genre, tags)."""
    files = find_stories(folder)
    if not files.stories or files.problems:
        return bool(files.stories)
    for path in files.stories:
        try:
            head = path.read_bytes()[:4096].decode("utf-8", errors="replace")
        except OSError:
            return False
        header, _ = split_header(head.replace("\r\n", "\n"))
        if not all(header.get(k) for k in REQUIRED_HEADER):
            return False
    return True


def check_sources(
    data: list[str],
    *,
    options: ReadOptions | None = None,
    val_fraction: float | None = None,
    val_list: str | None = None,
    seed: int = 0,
    count_tokens: Callable[[str], int] | None = None,
    block_size: int | None = None,
) -> SourcesReport:
    """Check the corpus fine-tuning would read from ``data`` (same sources, same flags)."""
    report = SourcesReport()
    specs = [SourceSpec.parse(d) for d in data]
    single = specs[0] if len(specs) == 1 else None
    if single and Path(single.path).is_dir() and is_project_folder(Path(single.path)):
        report.project = check_corpus(Path(single.path), count_tokens)
        report.problems.extend(report.project.problems)
        if report.problems:
            return report
    try:
        corpus = read_corpus(
            specs, options=options, val_fraction=val_fraction, val_list=val_list, seed=seed
        )
    except CorpusError as err:
        report.problems.extend(err.problems)
        return report
    report.corpus = corpus
    if report.project is None:  # the project's story rules, for files in its format
        for story in corpus.stories:
            if story.project is not None:
                report.problems.extend(check_story(story.project))
    if count_tokens is not None:
        report.tokens = {
            "training": sum(count_tokens(s.text) + 1 for s in corpus.train),
            "held out": sum(count_tokens(s.text) + 1 for s in corpus.validation),
        }
        if block_size and report.tokens["training"] < block_size:
            report.problems.append(
                f"{' '.join(data)}: the training stories hold {report.tokens['training']} tokens "
                f"(GPT-2, end-of-text included), less than one block of {block_size}; add "
                "stories or lower --block-size"
            )
    return report
