"""Training data: every kind of source, the split by whole story, packing, and the format identity.

The identity test is the one that matters most: the text a model trains on must be exactly the
text play sends it, turn after turn, or a fine-tuned model sees at play time a shape it never
learned.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from story_factory import make_story, write_corpus

from dungeon.context import ContextSettings, build_context
from dungeon.corpus.sources import find_stories
from dungeon.corpus.training import (
    IGNORE_INDEX,
    CorpusError,
    EpochShuffle,
    encode_story,
    load_corpus,
    pack_blocks,
    sample_prompt,
    tokenize_and_pack,
    training_text,
)
from dungeon.format import StoryFile, StoryFormatError, read_story_file, turn_prefix
from dungeon.story import Candidate, Story, Turn

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tokenizer():
    from dungeon.tiny import load_gpt2_tokenizer

    return load_gpt2_tokenizer()


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path_factory, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.getbasetemp() / "hf")


# --- the format identity ------------------------------------------------------------------------


def story_files() -> list[StoryFile]:
    """A synthetic story and every project story that parses right now (files are being written)."""
    stories = [make_story("synthetic-one", turns=9)]
    for path in find_stories(ROOT / "stories").stories:
        try:
            stories.append(read_story_file(path))
        except StoryFormatError:
            continue  # a story being written; the corpus checker's tests own that
    return stories


def test_training_text_is_what_play_sends_turn_after_turn(tokenizer):
    budget = ContextSettings(budget=10**9)
    for sf in story_files():
        text = training_text(sf)
        assert text == sf.model_text()
        story = Story(premise=sf.premise, title=sf.title)
        story.turns = [Turn(a, "do", [Candidate(r, 0)]) for a, r in sf.turns]
        for k, (action, response) in enumerate(sf.turns):
            prompt = build_context(
                story, turn_prefix(action, "do"), len, budget, turns=story.turns[:k]
            )
            assert text.startswith(prompt.text + response), f"{sf.path}: turn {k + 1} differs"
        # and the tokens end with exactly one end-of-text token, decoding back to the text
        ids = encode_story(text, tokenizer)
        assert ids[-1] == tokenizer.eos_token_id and ids.count(tokenizer.eos_token_id) == 1
        assert tokenizer.decode(ids) == text + tokenizer.eos_token


def test_loaded_corpus_rows_are_the_model_text(tmp_path, tokenizer):
    folder = write_corpus(tmp_path / "c", ["a-one", "b-two", "c-three"], val=["b-two"])
    corpus = load_corpus(folder)
    for split in ("train", "validation"):
        for row in corpus[split]:
            sf = read_story_file(folder / row["name"])
            assert row["text"] == sf.model_text()
            assert row["prompt"] == sf.premise + turn_prefix(sf.turns[0][0], "do")


# --- sources --------------------------------------------------------------------------------


def test_story_folder_uses_its_validation_list(tmp_path):
    folder = write_corpus(tmp_path / "c", ["a", "b", "c", "d"], val=["c"])
    corpus = load_corpus(folder)
    assert sorted(corpus["train"]["name"]) == ["a.txt", "b.txt", "d.txt"]
    assert list(corpus["validation"]["name"]) == ["c.txt"]


def test_validation_list_naming_a_missing_story_is_an_error_with_its_line(tmp_path):
    folder = write_corpus(tmp_path / "c", ["a", "b"], val=["b", "ghost"])
    with pytest.raises(CorpusError) as err:
        load_corpus(folder)
    assert err.value.problems == [f"{folder / 'validation.txt'}:3: no story file named 'ghost.txt' in the corpus"]  # fmt: skip


def test_val_fraction_holds_out_whole_stories_by_seed(tmp_path):
    names = [f"s{i:02d}" for i in range(20)]
    folder = write_corpus(tmp_path / "c", names)  # no validation.txt
    a = load_corpus(folder, val_fraction=0.2, seed=1)
    b = load_corpus(folder, val_fraction=0.2, seed=1)
    c = load_corpus(folder, val_fraction=0.2, seed=2)
    val = set(a["validation"]["name"])
    assert len(val) == 4 and val == set(b["validation"]["name"])
    assert val != set(c["validation"]["name"])
    assert val.isdisjoint(a["train"]["name"]) and len(a["train"]) == 16
    assert len(load_corpus(folder, val_fraction=0.0)["validation"]) == 0


def test_val_fraction_with_a_validation_list_is_refused(tmp_path):
    folder = write_corpus(tmp_path / "c", ["a", "b"], val=["b"])
    with pytest.raises(CorpusError, match="--val-fraction does not apply"):
        load_corpus(folder, val_fraction=0.1)
    assert len(load_corpus(folder, val_fraction=0.5, val_list="none")["validation"]) == 1


def test_jsonl_with_text_or_premise_and_turns(tmp_path):
    sf = make_story("jsonl-one")
    texts = tmp_path / "texts.jsonl"
    texts.write_text("\n".join(json.dumps({"text": t}) for t in [sf.model_text(), "Once.\n\n> You wait.\nRain."]))  # fmt: skip
    corpus = load_corpus(texts, val_fraction=0.5, seed=0)
    assert sorted([*corpus["train"]["text"], *corpus["validation"]["text"]]) == sorted(
        [sf.model_text(), "Once.\n\n> You wait.\nRain."]
    )
    turns = tmp_path / "turns.jsonl"
    rows = [
        {"premise": sf.premise, "turns": [list(t) for t in sf.turns]},
        {"premise": "You stand.", "turns": [["You sit.", "The chair creaks."]]},
    ]
    turns.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    texts_out = sorted(load_corpus(turns, val_fraction=0.0)["train"]["text"])
    assert texts_out == sorted([sf.model_text(), "You stand.\n\n> You sit.\nThe chair creaks."])


def test_jsonl_problems_name_file_and_line_all_at_once(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(
        b'{"text": "fine"}\n'
        b"not json\n"
        b'{"title": "no text"}\n'
        b'{"text": "caf\xe9"}\n'
        b'{"premise": "p", "turns": [["You go.", ""]]}\n'
    )
    with pytest.raises(CorpusError) as err:
        load_corpus(bad)
    assert [p.split(": ")[0] for p in err.value.problems] == [f"{bad}:{n}" for n in (2, 3, 4, 5)]
    assert "not UTF-8" in err.value.problems[2]


def test_saved_dataset_dict_keeps_its_validation_split(tmp_path):
    import datasets

    texts = [make_story(f"d{i}").model_text() for i in range(3)]
    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"text": texts[:2]}),
        validation=datasets.Dataset.from_dict({"text": texts[2:]}),
    )
    dd.save_to_disk(str(tmp_path / "saved"))
    corpus = load_corpus(tmp_path / "saved")
    assert list(corpus["validation"]["text"]) == texts[2:]
    assert sorted(corpus["train"]["text"]) == sorted(texts[:2])

    single = datasets.Dataset.from_dict(
        {"premise": ["You wake.", "You fall."], "turns": [[["You stand.", "It is cold."]]] * 2}
    )
    single.save_to_disk(str(tmp_path / "single"))
    corpus = load_corpus(tmp_path / "single", val_fraction=0.5)
    assert len(corpus["train"]) == 1 and len(corpus["validation"]) == 1


def test_unreachable_hub_dataset_is_one_clear_line(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(CorpusError) as err:
        load_corpus("someone/no-such-adventures")
    assert len(err.value.problems) == 1
    assert "not a local file or folder, and not loadable from the hub" in err.value.problems[0]


def test_bad_story_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="no story files"):
        load_corpus(tmp_path / "empty")
    folder = write_corpus(tmp_path / "c", ["good"])
    (folder / "broken.txt").write_text("title: x\ngenre: y\ntags: z\n---\nPremise.\n\n>no space\n")
    (folder / "latin1.txt").write_bytes(b"title: x\ngenre: y\ntags: z\n---\nCaf\xe9.\n")
    with pytest.raises(CorpusError) as err:
        load_corpus(folder)
    assert any(p.startswith(f"{folder / 'broken.txt'}:7:") for p in err.value.problems)
    assert any(p.startswith(f"{folder / 'latin1.txt'}:5: not UTF-8") for p in err.value.problems)
    with pytest.raises(CorpusError, match="no such file or folder"):
        load_corpus(tmp_path / "missing")


# --- tokenizing and packing -------------------------------------------------------------------


def test_pack_blocks_keeps_every_token_and_pads_the_last_block():
    seqs = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10, 11]]
    packed = pack_blocks(seqs, block_size=4, pad_id=0)
    assert packed["input_ids"] == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 0]]
    assert packed["attention_mask"][-1] == [1, 1, 1, 0]
    assert packed["labels"][-1] == [9, 10, 11, IGNORE_INDEX]
    for block_size in range(2, 9):
        p = pack_blocks(seqs, block_size, pad_id=0)
        kept = [
            t for ids, m in zip(p["input_ids"], p["attention_mask"]) for t, k in zip(ids, m) if k
        ]
        assert kept == [t for s in seqs for t in s]


def test_tokenize_and_pack_ends_each_story_with_eos(tmp_path, tokenizer):
    folder = write_corpus(tmp_path / "c", ["a", "b", "c", "d"], val=["d"])
    corpus = load_corpus(folder)
    blocks, stats = tokenize_and_pack(corpus, tokenizer, block_size=64, num_proc=1)
    train_ids = [encode_story(t, tokenizer) for t in corpus["train"]["text"]]
    flat = [t for ids in train_ids for t in ids]
    assert stats["train"].tokens == len(flat) and stats["train"].stories == 3
    assert stats["train"].blocks == len(blocks["train"]) == -(-len(flat) // 64)
    got = [t for b in blocks["train"] for t, m in zip(b["input_ids"], b["attention_mask"]) if m]
    assert got == flat and flat.count(tokenizer.eos_token_id) == 3
    # tokenizing in two processes gives the same blocks
    again, _ = tokenize_and_pack(corpus, tokenizer, block_size=64, num_proc=2)
    assert again["train"]["input_ids"] == blocks["train"]["input_ids"]


def test_epoch_shuffle_depends_only_on_seed_and_epoch():
    a, b = EpochShuffle(50, seed=3), EpochShuffle(50, seed=3)
    first = list(a)
    assert first == list(b) and sorted(first) == list(range(50))
    a.set_epoch(1)
    assert list(a) != first
    b.set_epoch(1)
    assert list(a) == list(b)


def test_sample_prompt_is_premise_and_first_action():
    text = "You wake.\n\nIt is dark.\n\n> You stand.\nYou fall.\n\n> You rise.\nOk."
    assert sample_prompt(text) == "You wake.\n\nIt is dark.\n\n> You stand.\n"
    assert sample_prompt("Just prose.\n\nMore prose.") == "Just prose."
