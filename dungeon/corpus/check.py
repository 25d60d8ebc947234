"""The corpus checker: keeps stories/ healthy and reports its statistics.

    dungeon check-corpus [stories/]

Every file must parse, carry its header, have 8-30 turns of sensible length, answer in the
second person, never write a player action inside a response, and not nearly duplicate
another story. Which files are stories and which are held out is dungeon.corpus.sources'
answer, the same that ``dungeon eval`` and fine-tuning use. Every validation list
(validation.txt, validation-new.txt, ...) must name existing stories, each held out once;
together they must cover every genre and hold at least a tenth of the corpus.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dungeon.actions import make_action
from dungeon.corpus.sources import (
    VALIDATION_LIST,
    VALIDATION_PATTERN,
    CorpusFiles,
    ValidationList,
    find_stories,
)
from dungeon.format import StoryFile, StoryFormatError, read_story_file

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
