"""Which files are stories and which are held out: one answer, shared by the checker,
``dungeon eval`` and fine-tuning."""

from __future__ import annotations

import pytest
from conftest import ROOT
from story_factory import make_story, write_corpus

from dungeon.corpus.check import check_corpus
from dungeon.corpus.sources import find_stories, read_validation_list
from dungeon.evaluation import validation_texts
from dungeon.format import read_story_file, render_story_file


def write_story(path, name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_story_file(make_story(name, turns=9)), encoding="utf-8")


@pytest.fixture
def nested(tmp_path):
    """Stories at the top and in a subfolder, two validation lists, and files that are not
    stories: a README, a hidden folder, the lists themselves."""
    folder = write_corpus(tmp_path / "c", ["a-one", "b-two", "c-three", "d-four"], val=["b-two"])
    write_story(folder / "extra" / "e-five.txt", "e-five")
    write_story(folder / "extra" / "f-six.txt", "f-six")
    write_story(folder / ".drafts" / "g-seven.txt", "g-seven")
    (folder / "README.md").write_text("# notes\n")
    (folder / "validation-new.txt").write_text("# new material\nf-six.txt   # by file name\n")
    return folder


def test_stories_are_every_txt_file_below_the_folder_but_lists_and_hidden_ones(nested):
    files = find_stories(nested)
    assert files.names == [
        "a-one.txt", "b-two.txt", "c-three.txt", "d-four.txt", "extra/e-five.txt", "extra/f-six.txt",
    ]  # fmt: skip
    assert files.problems == []
    assert [lst.path.name for lst in files.lists] == ["validation.txt", "validation-new.txt"]
    assert files.validation_names == ["b-two.txt", "extra/f-six.txt"]
    assert files.held_out == [nested / "b-two.txt", nested / "extra" / "f-six.txt"]


def test_a_validation_list_names_stories_by_name_or_unique_file_name(tmp_path):
    names = ["a.txt", "x/b.txt", "x/c.txt", "y/c.txt"]
    listed = tmp_path / "validation.txt"
    listed.write_text("a.txt\n\n  # a comment\nb.txt # the one in x/\ny/c.txt\nc.txt\nzzz.txt\n")
    lst = read_validation_list(listed, names)
    assert lst.names == ("a.txt", "x/b.txt", "y/c.txt")
    assert lst.problems == (
        f"{listed}:6: 'c.txt' could be x/c.txt, y/c.txt; write the folder too",
        f"{listed}:7: no story file named 'zzz.txt' in the corpus",
    )


def test_several_lists_hold_out_their_union_and_each_story_once(tmp_path):
    folder = write_corpus(tmp_path / "c", ["a", "b", "c", "d"], val=["a"])
    (folder / "validation-new.txt").write_text("b.txt\na.txt\n")
    (folder / "validation-extra.txt").write_text("c.txt\n")
    files = find_stories(folder)
    assert [lst.path.name for lst in files.lists] == [
        "validation.txt", "validation-extra.txt", "validation-new.txt",
    ]  # fmt: skip
    assert files.validation_names == ["a.txt", "b.txt", "c.txt"]
    assert files.problems == [
        f"{folder / 'validation-new.txt'}: a.txt is held out by validation.txt already"
    ]


def test_a_missing_or_empty_folder_is_a_problem(tmp_path):
    assert find_stories(tmp_path / "nowhere").problems == [
        f"{tmp_path / 'nowhere'}: no such folder"
    ]
    (tmp_path / "empty").mkdir()
    assert find_stories(tmp_path / "empty").problems == [
        f"{tmp_path / 'empty'}: no story files (*.txt, *.md) in this folder"
    ]


# --- the checker, dungeon eval and fine-tuning agree --------------------------------------------


@pytest.fixture(scope="module")
def finetune():
    """What fine-tuning reads: dungeon.training's settings and corpus loading."""
    from types import SimpleNamespace

    from dungeon.training.checks import load_stories
    from dungeon.training.settings import parse_settings

    return SimpleNamespace(parse_settings=parse_settings, load_stories=load_stories)


def held_out_three_ways(folder, finetune) -> tuple[list[str], list[str], list[str]]:
    """The held-out stories as the checker, ``dungeon eval`` and fine-tuning see them,
    each as the model texts of the stories (sorted)."""
    report = check_corpus(folder)
    checker = sorted(report.by_name[n].model_text() for n in report.validation)
    evaluate = sorted(validation_texts(folder))
    settings = finetune.parse_settings(["--data", str(folder)])
    training = sorted(finetune.load_stories(settings)["validation"]["text"])
    return checker, evaluate, training


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path_factory, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.getbasetemp() / "hf")


def test_checker_eval_and_finetune_hold_out_the_same_stories(nested, finetune):
    checker, evaluate, training = held_out_three_ways(nested, finetune)
    expected = sorted(read_story_file(p).model_text() for p in find_stories(nested).held_out)
    assert len(expected) == 2
    assert checker == evaluate == training == expected


def test_checker_eval_and_finetune_hold_out_the_same_project_stories(finetune):
    folder = ROOT / "stories"
    checker, evaluate, training = held_out_three_ways(folder, finetune)
    files = find_stories(folder)
    assert len(files.held_out) >= 24
    assert checker == evaluate == training
    assert checker == sorted(read_story_file(p).model_text() for p in files.held_out)


def test_eval_refuses_a_folder_without_held_out_stories_or_with_a_bad_list(tmp_path):
    folder = write_corpus(tmp_path / "c", ["a", "b"])
    with pytest.raises(ValueError, match="lists no stories"):
        validation_texts(folder)
    (folder / "validation.txt").write_text("a.txt\nghost.txt\n")
    with pytest.raises(ValueError) as err:
        validation_texts(folder)
    assert str(err.value) == f"{folder / 'validation.txt'}:2: no story file named 'ghost.txt' in the corpus"  # fmt: skip
