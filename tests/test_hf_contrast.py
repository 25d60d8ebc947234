"""score_continuations on the tiny models: batched scores over the cached prompt equal the
full-forward scores of token_logprobs, and scoring leaves the next generation unchanged."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from dungeon.format import turn_prefix  # noqa: E402
from dungeon.generator import ContinuationScorer, SamplingSettings  # noqa: E402
from dungeon.hf_generator import TransformersGenerator  # noqa: E402
from dungeon.tiny import tiny_llama_generator  # noqa: E402

STORY = (
    "The lantern gutters as you climb down into the well. Cold water laps at the stones, and "
    "somewhere below a chain creaks in the dark.\n\n> You look around.\nMoss covers the walls."
)
ACTIONS = ("You pull the chain.", 'You say "Hello?"', "You climb back up.")
TEXTS = (
    "The chain rattles and a bucket rises out of the black water.",
    "Your voice echoes down the shaft.",
    "",
    "Nothing.",
)
SETTINGS = SamplingSettings(max_new_tokens=12, min_new_tokens=12)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """The tiny models run on one thread (see conftest.one_torch_thread)."""


def contexts() -> list[str]:
    return [STORY + turn_prefix(a, "do") for a in ACTIONS]


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2) -> TransformersGenerator:
    from dungeon.models import load_generator

    return load_generator(tiny_gpt2, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def llama() -> TransformersGenerator:
    return tiny_llama_generator(tie_word_embeddings=True)


def assert_matches_full_forward(gen, scores, texts=TEXTS, atol=1e-4):
    for i, context in enumerate(contexts()):
        for j, text in enumerate(texts):
            want = gen.token_logprobs(context, text) if text else []
            assert scores[i][j] == pytest.approx(want, abs=atol), (i, j)


@pytest.mark.parametrize("which", ["gpt2", "llama", "llama-guided"])
def test_cached_batch_scores_equal_full_forward_scores(which, gpt2, llama, monkeypatch):
    from dungeon import hf_contrast

    gen = gpt2 if which == "gpt2" else llama
    assert isinstance(gen, ContinuationScorer)
    if which == "llama-guided":  # rows of their own lengths: the shared part is still used
        neutral = STORY + turn_prefix("You wait.", "do")
        guided = SamplingSettings(max_new_tokens=12, min_new_tokens=12, guidance=1.0)
        list(gen.stream_guided(contexts()[0], neutral, seeds=[1, 2], settings=guided))
        assert gen.runner.own is not None
    else:
        gen.generate_batch(contexts()[0], seeds=[1, 2], settings=SETTINGS)  # the prompt is cached
    assert gen.last_stats.prompt_tokens > 40
    runs = []  # the batch size of each forward pass
    if which != "gpt2":
        forward = hf_contrast._llama_forward

        def counted(dec, rows, *args, **kwargs):
            runs.append(len(rows))
            return forward(dec, rows, *args, **kwargs)

        monkeypatch.setattr(hf_contrast, "_llama_forward", counted)
    else:
        model_forward = gen.model.forward

        def counted(*args, **kwargs):
            runs.append(kwargs["input_ids"].shape[0])
            return model_forward(*args, **kwargs)

        monkeypatch.setattr(gen.model, "forward", counted)
    scores = gen.score_continuations(contexts(), TEXTS)
    assert runs == [3 * 3]  # one pass over (context, non-empty text) rows: the prefix was cached
    assert len(scores) == 3 and all(len(row) == len(TEXTS) for row in scores)
    assert scores[0][2] == [] and len(scores[0][3]) == len(gen.encode("Nothing."))
    assert_matches_full_forward(gen, scores)


@pytest.mark.parametrize("which", ["gpt2", "llama"])
def test_scores_without_a_cache_and_cut_to_max_tokens(which, tiny_gpt2, gpt2, llama):
    gen = gpt2 if which == "gpt2" else llama
    gen.reset_cache()  # nothing cached: the shared prefix runs once, for this call
    scores = gen.score_continuations(contexts(), TEXTS)
    assert_matches_full_forward(gen, scores)
    short = gen.score_continuations(contexts(), TEXTS, max_tokens=3)
    assert short[1][0] == pytest.approx(scores[1][0][:3], abs=1e-4)
    assert gen._cache_ids == []  # still empty: scoring writes no cache


def test_a_cache_that_holds_another_prompt_is_not_used(llama):
    llama.generate("An entirely different story about a ship at sea.", seed=1, settings=SETTINGS)
    assert_matches_full_forward(llama, llama.score_continuations(contexts(), TEXTS))


def test_scores_run_through_an_unmerged_adapter():
    gen = tiny_llama_generator(lora=True, tie_word_embeddings=True)
    assert type(gen.runner).__name__ == "LlamaDecoder"
    gen.generate(contexts()[0], seed=3, settings=SETTINGS)
    assert_matches_full_forward(gen, gen.score_continuations(contexts(), TEXTS))


@pytest.mark.parametrize("which", ["gpt2", "llama"])
@pytest.mark.parametrize("rows", [1, 3])
def test_scoring_leaves_the_next_generation_unchanged(which, rows, gpt2, llama):
    gen = gpt2 if which == "gpt2" else llama
    prompt = contexts()[0]
    following = prompt + " The bucket is empty." + turn_prefix("You drop the bucket.", "do")

    def two_turns(score: bool) -> list[str]:
        gen.reset_cache()
        first = gen.generate_batch(prompt, seeds=list(range(rows)), settings=SETTINGS)
        if score:
            gen.score_continuations(contexts(), [*first, "A gull cries."])
        return [*first, gen.generate(following, seed=9, settings=SETTINGS)]

    assert two_turns(score=True) == two_turns(score=False)
    assert gen.last_stats.reused_tokens > 40  # the second turn still reused the cache


@pytest.mark.slow
def test_builtin_model_scores_match_a_full_forward_and_leave_the_cache():
    from dungeon.config import PlayOptions
    from dungeon.startup import build_generator

    gen = build_generator(PlayOptions())  # the shipped default: 4-bit decode, the adapter
    assert type(gen.runner).__name__ == "LlamaDecoder"
    settings = SamplingSettings(max_new_tokens=24)
    texts = gen.generate_batch(contexts()[0], seeds=[1, 2, 3], settings=settings)
    scores = gen.score_continuations(contexts(), texts)
    for i, context in enumerate(contexts()):
        for j, text in enumerate(texts):
            full = gen.token_logprobs(context, text)
            # bf16 products in another order: close per text, not to the last digit
            assert sum(scores[i][j]) / len(full) == pytest.approx(sum(full) / len(full), abs=0.03)
    following = contexts()[0] + texts[0] + turn_prefix("You drop the bucket.", "do")

    def next_turn(score: bool) -> str:
        gen.reset_cache()
        batch = gen.generate_batch(contexts()[0], seeds=[1, 2, 3], settings=settings)
        assert batch == texts
        if score:
            gen.score_continuations(contexts(), batch)
        return gen.generate(following, seed=9, settings=settings)

    assert next_turn(score=True) == next_turn(score=False)
