"""The project's corpus passes its checker, and the checker catches what it should."""

from conftest import ROOT

from dungeon.corpus import check_corpus, check_story
from dungeon.format import parse_story_file


def test_the_corpus_passes_the_checker_and_meets_the_size_targets():
    report = check_corpus(ROOT / "stories")
    assert report.problems == []
    assert len(report.stories) >= 150
    assert report.words >= 120_000
    assert len(report.by_genre()) >= 10
    assert len(report.validation) >= 0.1 * len(report.stories)


STORY = """title: T
genre: g
tags: a, b
---
You are a cook.

> I stir my pot.
I taste the soup. It needs more salt, I think to myself.

> You wait.
The soup bubbles.
> You sit.
"""


def test_checker_catches_bad_stories(tmp_path):
    story = parse_story_file(STORY.replace("> You sit.\n", ""), "t.txt")
    problems = check_story(story)
    assert any("2 turns" in p for p in problems)
    assert any("not as play renders it" in p and "You stir your pot." in p for p in problems)
    assert any("first person" in p for p in problems)


def test_checker_reports_parse_errors_duplicates_and_validation(tmp_path):
    (tmp_path / "a.txt").write_text(STORY)  # player line without a blank line before it
    good = "title: G\ngenre: g\ntags: a\n---\nYou are here.\n" + "".join(
        f"\n> You take step {i}.\nThe hall goes on and the torches burn low and steady tonight.\n"
        for i in range(9)
    )
    (tmp_path / "b.txt").write_text(good)
    (tmp_path / "c.txt").write_text(good.replace("title: G", "title: H"))
    report = check_corpus(tmp_path)
    assert any("a.txt:12: a player line must follow a blank line" in p for p in report.problems)
    assert any("near-duplicates" in p for p in report.problems)
    assert any("validation.txt: missing" in p for p in report.problems)
