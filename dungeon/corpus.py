"""The corpus checker: keeps stories/ healthy and reports its statistics.

    dungeon check-corpus [stories/]

Every file must parse, carry its header, have 8-30 turns of sensible length, answer in the
second person, never write a player action inside a response, and not nearly duplicate
another story. The fixed validation list (validation.txt) must name existing stories, cover
every genre and hold at least a tenth of the corpus.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dungeon.actions import make_action
from dungeon.format import StoryFile, StoryFormatError, read_story_file

MIN_TURNS, MAX_TURNS = 8, 30
MIN_RESPONSE_WORDS, MAX_RESPONSE_WORDS = 3, 220
DUPLICATE_THRESHOLD = 0.25
"""Stories sharing this share of their word 5-grams (Jaccard) are near-duplicates."""
VALIDATION_FILE = "validation.txt"
MIN_VALIDATION_SHARE = 0.10

_QUOTED = re.compile(r"\"[^\"]*\"|“[^”]*”")
_FIRST_PERSON = re.compile(r"\b(I|I'm|I've|I'd|I'll|(?i:me|my|mine|myself))\b")
_SECOND_PERSON = re.compile(r"\b(you|your|yours|yourself)\b", re.IGNORECASE)


@dataclass
class CorpusReport:
    stories: list[StoryFile] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    validation: list[str] = field(default_factory=list)
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
        val = set(self.validation)
        rows = [f"{'genre':<20}{'stories':>8}{'valid.':>8}{'turns':>8}{'words':>9}"]
        for genre, group in self.by_genre().items():
            words = sum(len(s.model_text().split()) for s in group)
            nval = sum(Path(s.path).name in val for s in group)
            turns = sum(len(s.turns) for s in group)
            rows.append(f"{genre:<20}{len(group):>8}{nval:>8}{turns:>8}{words:>9,}")
        rows.append(
            f"{'total':<20}{len(self.stories):>8}{len(val):>8}{self.turns:>8}{self.words:>9,}"
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


def shingles(text: str, n: int = 5) -> set[int]:
    words = re.findall(r"\w+", text.lower())
    return {hash(tuple(words[i : i + n])) for i in range(max(0, len(words) - n + 1))}


def near_duplicates(stories: list[StoryFile], threshold: float = DUPLICATE_THRESHOLD) -> list[str]:
    sets = [shingles(s.model_text()) for s in stories]
    found = []
    for i in range(len(stories)):
        for j in range(i + 1, len(stories)):
            a, b = sets[i], sets[j]
            if not a or not b:
                continue
            sim = len(a & b) / len(a | b)
            if sim >= threshold:
                found.append(
                    f"{stories[i].path} and {stories[j].path} are near-duplicates ({sim:.0%} shared 5-grams)"
                )
    return found


def read_validation_list(folder: Path) -> list[str]:
    path = folder / VALIDATION_FILE
    if not path.exists():
        return []
    names = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.append(line)
    return names


def check_corpus(folder: Path, count_tokens: Callable[[str], int] | None = None) -> CorpusReport:
    """Parse and check every ``*.txt`` story in ``folder``; every problem goes in the report."""
    folder = Path(folder)
    report = CorpusReport()
    files = sorted(p for p in folder.glob("*.txt") if p.name != VALIDATION_FILE)
    if not files:
        report.problems.append(f"{folder}: no story files (*.txt)")
        return report
    for path in files:
        try:
            story = read_story_file(path)
        except StoryFormatError as err:
            report.problems.extend(err.problems)
            continue
        report.stories.append(story)
        report.problems.extend(check_story(story))
    titles = Counter(s.title.lower() for s in report.stories)
    report.problems.extend(
        f"{folder}: the title {t!r} is used {n} times" for t, n in titles.items() if n > 1
    )
    report.problems.extend(near_duplicates(report.stories))

    report.validation = read_validation_list(folder)
    names = {Path(s.path).name: s for s in report.stories}
    if not report.validation:
        report.problems.append(
            f"{folder / VALIDATION_FILE}: missing or empty; list the held-out stories"
        )
    for name in report.validation:
        if name not in names:
            report.problems.append(f"{folder / VALIDATION_FILE}: {name} is not a story in {folder}")
    covered = {names[n].genre for n in report.validation if n in names}
    for genre in sorted({s.genre for s in report.stories} - covered):
        report.problems.append(
            f"{folder / VALIDATION_FILE}: no validation story of genre {genre!r}"
        )
    if report.stories and len(report.validation) < MIN_VALIDATION_SHARE * len(report.stories):
        report.problems.append(
            f"{folder / VALIDATION_FILE}: {len(report.validation)} stories; at least "
            f"{MIN_VALIDATION_SHARE:.0%} of {len(report.stories)} are needed"
        )
    if count_tokens is not None:
        report.tokens = sum(count_tokens(s.model_text()) for s in report.stories)
    return report
