"""dungeon.evaluation.perplexity and the Scorer it reads: held-out perplexity on the fixed and
the new validation lists, and scoring text (FakeGenerator's toy scores, hf_scoring on a tiny
GPT-2)."""

import math

import pytest
from conftest import ROOT
from story_factory import write_corpus

from dungeon.corpus.sources import find_stories
from dungeon.evaluation.perplexity import held_out_texts, perplexity, validation_texts
from dungeon.format import read_story_file
from dungeon.generator import (
    FAKE_END_LOGPROB,
    FAKE_NEW_LOGPROB,
    FAKE_SEEN_LOGPROB,
    FakeGenerator,
    Scorer,
)

HALL = "You are in a hall.\n\n> You look around.\n"


def test_the_fake_scorer_is_deterministic_and_simple():
    fake = FakeGenerator()
    assert isinstance(fake, Scorer)
    # Tokens are words, punctuation and runs of spaces; the first has no context when the
    # prefix is empty, a repeated token scores -1, a new one -4, the end -2.
    seen, new, end = FAKE_SEEN_LOGPROB, FAKE_NEW_LOGPROB, FAKE_END_LOGPROB
    assert fake.token_logprobs("", "a b a") == [new, new, seen, seen]
    assert fake.token_logprobs("", "a b a", end=True) == [new, new, seen, seen, end]
    assert fake.token_logprobs("You see a door.", " a cat") == [seen, seen, seen, new]
    assert perplexity(fake, ["a b a", "c"]) == pytest.approx(math.exp(14 / 6))


def test_perplexity_of_nothing_is_an_error():
    with pytest.raises(ValueError, match="no tokens"):
        perplexity(FakeGenerator(), [])


def test_the_fixed_and_the_new_lists_are_held_out_apart(tmp_path):
    folder = write_corpus(tmp_path / "c", ["a", "b", "c", "d"], val=["a"])
    (folder / "validation-new.txt").write_text("c.txt\nd.txt\n")
    fixed, new = held_out_texts(folder)
    text = {n: read_story_file(folder / f"{n}.txt").model_text() for n in "abcd"}
    assert fixed == [text["a"]] and new == [text["c"], text["d"]]
    assert sorted(validation_texts(folder)) == sorted(fixed + new)  # every held-out story
    (folder / "validation.txt").unlink()
    assert held_out_texts(folder) == ([], [text["c"], text["d"]])


def test_the_project_keeps_its_24_fixed_stories_apart_from_the_new_ones():
    fixed, new = held_out_texts(ROOT / "stories")
    files = find_stories(ROOT / "stories")
    fixed_list = next(lst for lst in files.lists if lst.path.name == "validation.txt")
    assert len(fixed) == len(fixed_list.names) >= 24
    assert len(fixed) + len(new) == len(files.held_out) and new


@pytest.fixture(scope="module")
def tiny(tiny_gpt2):
    """The tiny GPT-2, in float32 on the CPU."""
    from dungeon.models import load_generator

    return load_generator(str(tiny_gpt2), device="cpu", dtype="float32")


def reference_logprobs(model, ids):
    """log p(ids[i] | ids[:i]) for i >= 1, from one forward pass."""
    import torch

    with torch.inference_mode():
        logits = model(torch.tensor([ids])).logits[0, :-1].float()
    return logits.log_softmax(-1).gather(-1, torch.tensor(ids[1:]).unsqueeze(-1)).squeeze(-1)


def test_token_logprobs_on_a_tiny_gpt2(tiny, one_torch_thread):
    from dungeon.hf_scoring import token_logprobs

    response = "It is dark. A draught comes from the stairs."
    ids = tiny.encode(HALL) + tiny.encode(response)
    expected = reference_logprobs(tiny.model, ids).tolist()
    # The whole text: every token but the first, each given all the tokens before it.
    assert token_logprobs(tiny, "", HALL + response) == pytest.approx(expected, abs=1e-5)
    assert tiny.encode(HALL + response) == ids
    # A response after an action: only the response's tokens, with the story as context.
    after = token_logprobs(tiny, HALL, response)
    assert after == pytest.approx(expected[len(tiny.encode(HALL)) - 1 :], abs=1e-5)
    # end=True adds the end-of-text token's log-prob; the rest stays the same.
    with_end = token_logprobs(tiny, HALL, response, end=True)
    eos = tiny.tokenizer.eos_token_id
    tail = reference_logprobs(tiny.model, [*ids, eos]).tolist()[-1]
    assert with_end == pytest.approx([*after, tail], abs=1e-5)


def test_token_logprobs_in_windows_gives_each_token_half_a_window_of_context(
    tiny, one_torch_thread
):
    """A text longer than the window: each token is scored once, after 4 to 7 tokens of
    context with a window of 8, and the first window's tokens exactly as in one pass."""
    from dungeon.hf_scoring import token_logprobs

    text = HALL + "It is dark. A draught comes from the stairs, and the lamp gutters out."
    ids = tiny.encode(text)
    windowed = token_logprobs(tiny, "", text, window=8)
    assert len(windowed) == len(ids) - 1
    assert windowed[:7] == pytest.approx(reference_logprobs(tiny.model, ids[:8]).tolist(), abs=1e-5)
    for i in range(8, len(ids)):
        with_context = [
            float(reference_logprobs(tiny.model, ids[i - k : i + 1])[-1]) for k in range(4, 8)
        ]
        assert any(abs(windowed[i - 1] - lp) < 1e-5 for lp in with_context), i


def test_a_transformers_generator_is_a_scorer(tiny, one_torch_thread):
    from dungeon.hf_scoring import token_logprobs

    assert isinstance(tiny, Scorer)
    expected = token_logprobs(tiny, HALL, "It is dark.", end=True, window=8)
    assert tiny.token_logprobs(HALL, "It is dark.", end=True, window=8) == expected


def test_perplexity_of_a_tiny_gpt2_is_its_mean_loss(tiny, one_torch_thread):
    import torch

    texts = [HALL + "It is dark."]
    ids = tiny.tokenizer(texts[0] + tiny.tokenizer.eos_token, return_tensors="pt").input_ids
    with torch.inference_mode():
        expected = math.exp(float(tiny.model(ids, labels=ids).loss))
    assert perplexity(tiny, texts, window=64) == pytest.approx(expected, rel=1e-4)
    windowed = perplexity(tiny, texts, window=8)
    assert windowed > 1 and windowed != pytest.approx(expected, rel=1e-4)  # less context
