"""The project's corpus passes its checker, and the checker catches what it should."""

from conftest import ROOT
from story_factory import make_story

from dungeon.corpus.check import check_corpus, check_story, word_ngram_hashes
from dungeon.format import parse_story_file, render_story_file


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


def test_word_ngram_hashes_count_shared_five_word_runs():
    a = word_ngram_hashes("The owl sat on the gate at dusk.")
    b = word_ngram_hashes("An owl sat on the gate at dawn!")
    assert len(a) == 4 and len(b) == 4
    assert len(a & b) == 2  # "owl sat on the gate", "sat on the gate at"
    assert word_ngram_hashes("too short to count") == set()


def write_genre_corpus(folder, per_genre: int = 10):
    """Stories of two genres that pass the per-story checks: gold-NN and iron-NN."""
    folder.mkdir()
    for genre in ("gold", "iron"):
        for i in range(per_genre):
            name = f"{genre}-{i:02d}"
            story = make_story(name, turns=9, genre=genre)
            (folder / f"{name}.txt").write_text(render_story_file(story), encoding="utf-8")
    return folder


def test_every_validation_list_is_checked_and_reported(tmp_path):
    folder = write_genre_corpus(tmp_path / "c")
    (folder / "validation.txt").write_text("# fixed\ngold-00.txt\niron-00.txt  # one each\n")
    (folder / "validation-new.txt").write_text("gold-09.txt\niron-00.txt\nghost.txt\n")
    report = check_corpus(folder)
    assert report.validation == ["gold-00.txt", "gold-09.txt", "iron-00.txt"]
    assert [lst.path.name for lst in report.lists] == ["validation.txt", "validation-new.txt"]
    new = folder / "validation-new.txt"
    assert set(report.problems) == {
        f"{new}:3: no story file named 'ghost.txt' in the corpus",
        f"{new}: iron-00.txt is held out by validation.txt already",
    }
    table = report.table()
    assert "validation.txt: 2 stories held out, 2 genre(s)" in table
    assert "validation-new.txt: 2 stories held out, 2 genre(s)" in table
    assert "total                     20       3" in table


def test_the_held_out_stories_together_must_cover_every_genre_and_a_tenth(tmp_path):
    folder = write_genre_corpus(tmp_path / "c")
    (folder / "validation.txt").write_text("gold-00.txt\n")
    (folder / "validation-new.txt").write_text("")
    report = check_corpus(folder)
    assert set(report.problems) == {
        f"{folder / 'validation*.txt'}: 1 stories; at least 10% of 20 are needed",
        f"{folder / 'validation*.txt'}: no validation story of genre 'iron'",
        f"{folder / 'validation-new.txt'}: empty; list held-out stories in it, or delete it",
    }
    (folder / "validation-new.txt").write_text("iron-05.txt\n")
    assert check_corpus(folder).problems == []


# --- any corpus: `dungeon check-corpus` reads what fine-tuning reads ------------------------------


def check_corpus_cli(capsys, *argv) -> tuple[int, str, str]:
    from dungeon.cli import main

    rc = main(["check-corpus", *map(str, argv)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_check_corpus_takes_a_plain_corpus_and_prints_what_finetune_would_train(tmp_path, capsys):
    from story_factory import prose, transcript

    from dungeon.corpus.loading import read_corpus
    from dungeon.corpus.readers import ReadOptions

    big = tmp_path / "big.txt"
    big.write_text("\n~~~\n".join(transcript(f"t{i}") for i in range(12)))
    folder = tmp_path / "tales"
    folder.mkdir()
    (folder / "one.md").write_text(prose("one"))
    rc, out, err = check_corpus_cli(
        capsys, big, "--data", f"{folder}:3", "--separator", "~~~", "--no-tokens", "--seed", 4
    )
    assert rc == 0, err
    assert "text file" in out and "story folder" in out and "total" in out
    assert "action line(s) rewritten as play sends them" in out
    assert out.rstrip().endswith(f"{big} {folder}:3: 13 stories, all checks passed")
    # the held-out stories it names are the ones fine-tuning holds out with the same flags
    corpus = read_corpus([str(big), f"{folder}:3"], options=ReadOptions(separator="~~~"), seed=4)
    assert f"held out ({len(corpus.held_out_names)}): {', '.join(corpus.held_out_names)}" in out
    assert len(corpus.train) == 11 + 3  # the folder's one story, three times


def test_check_corpus_reports_bad_input_one_line_each(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("")
    (tmp_path / "b.txt").write_bytes(b"caf\xe9 au lait.\n\nThe cup is warm.\n" * 3)
    rc, out, err = check_corpus_cli(capsys, tmp_path, "--no-tokens")
    assert rc == 1
    assert err.splitlines() == [
        f"{tmp_path / 'a.txt'}: empty file",
        f"{tmp_path / 'b.txt'}:1: not UTF-8 text (byte 0xe9 at offset 3); save it as UTF-8, or "
        "pass --encoding (e.g. cp1252)",
        f"2 problem(s) in {tmp_path}",
    ]
    rc, out, err = check_corpus_cli(capsys, tmp_path / "b.txt", "--encoding", "latin-1")
    assert rc == 1 and "less than one block of 512" in err  # GPT-2 tokens, as finetune counts


def test_check_corpus_applies_the_story_rules_to_files_in_the_project_format(tmp_path, capsys):
    from story_factory import transcript

    (tmp_path / "plain.txt").write_text(transcript("plain"))
    (tmp_path / "short.txt").write_text(render_story_file(make_story("short", turns=2)))
    rc, out, err = check_corpus_cli(capsys, tmp_path, "--no-tokens")
    assert rc == 1
    assert err.splitlines()[0] == f"{tmp_path / 'short.txt'}: 2 turns; a story needs 8 to 30"
