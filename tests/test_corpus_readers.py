"""A user's corpus in every shape: plain folders, transcripts, prose, big text files, CSV/TSV,
several weighted sources, the held-out stories named, and every bad input at once.

Each test writes a small corpus of its own (tests/story_factory.py).
"""

from __future__ import annotations

import json

import pytest
from conftest import ROOT
from story_factory import make_story, prose, transcript, write_corpus

from dungeon.actions import make_action
from dungeon.context import ContextSettings, build_context
from dungeon.corpus.loading import read_corpus
from dungeon.corpus.readers import ReadOptions, story_from_text
from dungeon.corpus.sources import CorpusError, SourceSpec, find_stories, read_validation_list
from dungeon.format import render_story_file, turn_prefix
from dungeon.story import Candidate, Story, Turn


def names(stories) -> list[str]:
    return sorted(s.name for s in stories)


def problems_of(*args, **kwargs) -> list[str]:
    with pytest.raises(CorpusError) as err:
        read_corpus(*args, **kwargs)
    return err.value.problems


# --- one text, every shape ----------------------------------------------------------------------


def test_a_transcript_becomes_turns_with_actions_as_play_sends_them():
    text = "You wake in a cellar.\n\n> look\nBarrels line the walls.\n\nA rat watches.\n\n> I take my lamp\nIt is warm.\n"
    story, problems = story_from_text(text, "t", "t.txt", ReadOptions())
    assert problems == []
    assert story.kind == "turns" and story.changed == 2
    assert story.actions == ["You look around.", "You take your lamp."]
    # a response's paragraphs become one (play ends a response at a blank line)
    assert story.text == (
        "You wake in a cellar.\n\n> You look around.\nBarrels line the walls. A rat watches."
        "\n\n> You take your lamp.\nIt is warm."
    )
    kept, _ = story_from_text(text, "t", "t.txt", ReadOptions(keep_actions=True))
    assert kept.changed == 0 and "> look\n" in kept.text and "> I take my lamp\n" in kept.text


def test_what_trains_is_what_play_sends_for_a_users_transcript():
    """The prompt play builds from the raw actions a player types, plus the response, is the
    training text turn after turn, byte for byte."""
    raw = transcript("wren", turns=5)
    story, _ = story_from_text(raw, "wren", "wren.txt", ReadOptions())
    premise, *turn_texts = raw.strip("\n").split("\n\n> ")
    played = Story(premise=premise)
    budget = ContextSettings(budget=10**9)
    for k, chunk in enumerate(turn_texts):
        typed, response = chunk.split("\n", 1)
        action = make_action(typed)  # what play makes of what the player typed
        prompt = build_context(played, turn_prefix(action.text, action.mode), len, budget)
        response = " ".join(p.strip() for p in response.split("\n\n") if p.strip())
        assert story.text.startswith(prompt.text + response), f"turn {k + 1} differs"
        played.turns.append(Turn(action.text, action.mode, [Candidate(response, 0)]))


def test_prose_is_continuous_text_and_a_title_falls_back_to_the_heading_or_file_name():
    story, _ = story_from_text(prose("tale"), "tale.txt", "tale.txt", ReadOptions(), "tale")
    assert story.kind == "prose" and story.actions == [] and story.title == "tale"
    assert "\n\n" in story.text and "bridge\n" not in story.text  # hard wraps joined
    md, _ = story_from_text("# The Salt Road\n\nYou walk.\n", "r.md", "r.md", ReadOptions(), "r")
    assert md.title == "The Salt Road" and md.text == "You walk."


def test_a_partial_header_is_optional_and_a_full_one_is_the_project_format():
    partial, problems = story_from_text(
        "title: Night Ferry\n---\nYou board.\n\n> wait\nThe horn sounds.\n",
        "f",
        "f.txt",
        ReadOptions(),
    )
    assert problems == [] and partial.title == "Night Ferry" and partial.project is None
    assert partial.text == "You board.\n\n> You wait.\nThe horn sounds."
    sf = make_story("strict-one")
    strict, _ = story_from_text(render_story_file(sf), "s", "s.txt", ReadOptions())
    assert strict.project.turns == sf.turns and strict.project.path == "s.txt"
    assert strict.text == sf.model_text() and strict.changed == 0


# --- folders and files ---------------------------------------------------------------------------


def test_a_folder_of_plain_txt_and_md_files_recursively(tmp_path):
    folder = tmp_path / "mine"
    (folder / "deep" / "er").mkdir(parents=True)
    (folder / "one.txt").write_text(prose("one"))
    (folder / "deep" / "two.md").write_text("# Two\n\n" + transcript("two"))
    (folder / "deep" / "er" / "three.txt").write_text(transcript("three"))
    (folder / "README.md").write_text("# About this corpus\n")  # notes, not a story
    (folder / ".git").mkdir()
    (folder / ".git" / "x.txt").write_text("hidden")
    corpus = read_corpus(folder, val_fraction=0)
    assert names(corpus.stories) == ["deep/er/three.txt", "deep/two.md", "one.txt"]
    kinds = {s.name: s.kind for s in corpus.stories}
    assert kinds == {"deep/er/three.txt": "turns", "deep/two.md": "turns", "one.txt": "prose"}
    assert corpus.changed > 0 and len(corpus.train) == 3
    assert "one.txt" in corpus.table() or "mine" in corpus.table()


def test_one_big_file_splits_on_endoftext_or_a_separator(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("<|endoftext|>".join(transcript(f"s{i}") for i in range(4)) + "<|endoftext|>\n")
    corpus = read_corpus(big, val_fraction=0.25, seed=3)
    assert names(corpus.stories) == ["big.txt#1", "big.txt#2", "big.txt#3", "big.txt#4"]
    assert len(corpus.validation) == 1 and len(corpus.train) == 3
    assert all("<|endoftext|>" not in s.text for s in corpus.stories)

    stars = tmp_path / "stars.txt"
    stars.write_text("\n***\n".join(prose(f"p{i}") for i in range(3)))
    opts = ReadOptions(separator="***")
    assert len(read_corpus(stars, options=opts, val_fraction=0).stories) == 3
    assert problems_of(big, options=opts) == [f"--separator '***' occurs nowhere in {big}"]


def test_a_single_story_holds_out_its_tail(tmp_path):
    novel = tmp_path / "novel.txt"
    novel.write_text(prose("novel", paragraphs=40))
    corpus = read_corpus(novel)
    [head], [tail] = corpus.train, corpus.validation
    assert tail.name == "novel.txt#tail" and "tail held out" in corpus.held_out_how
    whole = corpus.stories[0].text
    assert head.text + "\n\n" + tail.text == whole
    assert 0.03 * len(whole) < len(tail.text) < 0.1 * len(whole)


def test_csv_and_tsv_with_a_text_column(tmp_path):
    import csv

    rows = [{"id": str(i), "story": transcript(f"c{i}"), "title": f"Tale {i}"} for i in range(3)]
    path = tmp_path / "tales.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "story", "title"])
        writer.writeheader()
        writer.writerows(rows)
    corpus = read_corpus(path, options=ReadOptions(text_column="story"), val_fraction=0)
    assert names(corpus.stories) == ["Tale 0", "Tale 1", "Tale 2"]
    assert all(s.kind == "turns" and s.text.startswith("You are c") for s in corpus.stories)
    [problem] = problems_of(path)
    assert (
        "no 'text' column (columns: 'id', 'story', 'title')" in problem
        and "--text-column" in problem
    )

    tsv = tmp_path / "tales.tsv"
    tsv.write_text("title\ttext\n" + "".join(f"t{i}\tYou are t{i}. It rains.\n" for i in range(2)))
    assert len(read_corpus(tsv, val_fraction=0).stories) == 2


def test_a_saved_dataset_with_another_text_column(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"body": [prose("a"), transcript("b")]}).save_to_disk(
        str(tmp_path / "ds")
    )
    corpus = read_corpus(tmp_path / "ds", options=ReadOptions(text_column="body"), val_fraction=0)
    assert sorted(s.kind for s in corpus.stories) == ["prose", "turns"]
    [problem] = problems_of(tmp_path / "ds")
    assert "needs a 'text' column" in problem and "'body'" in problem


def test_jsonl_text_actions_go_through_play_normalisation(tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [{"text": "You stand.\n\n> look\nDust."}, {"premise": "You sit.", "turns": [["i wait", "Rain."]]}]  # fmt: skip
    path.write_text("\n".join(json.dumps(r) for r in rows))
    corpus = read_corpus(path, val_fraction=0)
    assert sorted(s.text for s in corpus.stories) == [
        "You sit.\n\n> You wait.\nRain.", "You stand.\n\n> You look around.\nDust.",
    ]  # fmt: skip
    assert corpus.changed == 2


# --- several sources, weights, held-out stories ---------------------------------------------------


def test_several_sources_with_weights_and_each_sources_held_out_stories(tmp_path):
    folder = write_corpus(tmp_path / "stories", ["a", "b", "c", "d"], val=["d"])
    big = tmp_path / "extra.txt"
    big.write_text("<|endoftext|>".join(transcript(f"x{i}") for i in range(10)))
    corpus = read_corpus([str(folder), f"{big}:2"], seed=1)
    held = corpus.held_out_names
    assert "stories/d.txt" in held and len(held) == 2  # the list, and 5% of the other source
    assert sum(n.startswith("extra.txt#") for n in held) == 1
    train = [s.name for s in corpus.train]
    assert train.count("stories/a.txt") == 1
    assert all(train.count(n) == 2 for n in train if n.startswith("extra.txt#"))
    assert len(train) == 3 + 2 * 9
    assert "named by the lists of stories (validation.txt)" in corpus.held_out_how
    half = read_corpus([f"{folder}:0.5"], seed=0)
    assert len(half.train) == 2 and len(half.validation) == 1  # weights never touch held-out
    assert SourceSpec.parse("b.jsonl:2") == SourceSpec("b.jsonl", 2.0)
    assert SourceSpec.parse("x/y") == SourceSpec("x/y", 1.0)


def test_the_held_out_split_repeats_from_the_list_a_run_writes(tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("<|endoftext|>".join(transcript(f"r{i}") for i in range(20)))
    first = read_corpus(big, val_fraction=0.2, seed=5)
    listed = tmp_path / "held-out.txt"
    listed.write_text("# how: ...\n" + "\n".join(first.held_out_names) + "\n")
    again = read_corpus(big, val_list=listed)
    assert again.held_out_names == first.held_out_names and len(first.held_out_names) == 4
    # a list may name a whole file of stories; '#' starts a comment only after a space
    lst = read_validation_list(listed, [s.name for s in first.stories])
    assert list(lst.names) == first.held_out_names and lst.problems == ()
    everything = tmp_path / "all.txt"
    everything.write_text("big.txt   # every story of it\n")
    assert problems_of(big, val_list=everything) == [
        "every story is held out for validation; none is left to train on"
    ]


# --- bad input: one line each, all at once --------------------------------------------------------


def test_every_bad_input_is_one_line_and_all_come_at_once(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "ok.txt").write_text(transcript("ok"))
    (folder / "empty.txt").write_text("  \n\n")
    (folder / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    (folder / "latin1.md").write_bytes(b"You wake.\n\n> look\nA caf\xe9.\n")
    problems = problems_of(folder, options=ReadOptions(separator="@@"))
    assert problems == [
        f"{folder / 'empty.txt'}: empty file",
        f"{folder / 'image.txt'}: a binary file, not text (a NUL byte in its first bytes)",
        f"{folder / 'latin1.md'}:4: not UTF-8 text (byte 0xe9 at offset 23); save it as UTF-8, "
        "or pass --encoding (e.g. cp1252)",
        f"--separator '@@' occurs nowhere in {folder}",
    ]
    (folder / "empty.txt").unlink()
    (folder / "image.txt").unlink()
    fixed = read_corpus(folder, options=ReadOptions(encoding="latin-1"), val_fraction=0)
    assert any("A café." in s.text for s in fixed.stories)
    assert problems_of(folder, options=ReadOptions(encoding="klingon"))[0] == (
        "--encoding 'klingon': no such encoding"
    )


def test_missing_sources_and_bad_weights(tmp_path):
    problems = problems_of([str(tmp_path / "nowhere.txt"), f"{tmp_path}:0"], val_fraction=0)
    assert problems == [
        f"--data {tmp_path}:0: a weight must be above 0",
        f"{tmp_path / 'nowhere.txt'}: no such file or folder",
        f"{tmp_path}: no story files (*.txt, *.md) in this folder",
    ]


def test_find_stories_skips_a_folders_notes():
    files = find_stories(ROOT / "stories")
    assert files.stories and all(p.suffix == ".txt" for p in files.stories)  # README.md skipped
