"""TransformersGenerator on the tiny random GPT-2: sampling, streaming, stops, cache reuse.

The built-in model runs the same generation checks in the tests marked slow.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from dungeon import Game, Story  # noqa: E402
from dungeon.format import STOP_STRINGS, turn_prefix  # noqa: E402
from dungeon.generator import Generator, SamplingSettings  # noqa: E402
from dungeon.hf_generator import Detokenizer, TransformersGenerator, common_prefix  # noqa: E402
from dungeon.sampling import candidates, penalize_repetition, pick_token  # noqa: E402

PROMPT = (
    "The lantern gutters as you climb down into the well. Cold water laps at the stones.\n\n"
    "> You look around.\n"
)
GREEDY = SamplingSettings(temperature=0.0, repetition_penalty=1.0, min_new_tokens=0)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs the tiny model on one thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def gen(tiny_gpt2) -> TransformersGenerator:
    from dungeon.models import load_generator

    return load_generator(tiny_gpt2, device="cpu", dtype="float32")


def fresh(tiny_gpt2, **kwargs) -> TransformersGenerator:
    from dungeon.models import load_generator

    kwargs.setdefault("dtype", "float32")
    return load_generator(tiny_gpt2, device="cpu", **kwargs)


def scripted(gen: TransformersGenerator, monkeypatch, ids: list[int]) -> None:
    """Make the model 'want' the given tokens in order (then end of text), cache untouched."""
    queue = list(ids)
    vocab = gen.model.config.vocab_size

    def forward(new_ids):
        gen._cache_ids = (gen._cache_ids or []) + list(new_ids)
        logits = torch.zeros(vocab)
        logits[queue.pop(0) if queue else gen.stop_token_ids[0]] = 10.0
        return logits

    monkeypatch.setattr(gen, "_forward", forward)


# --- the protocol and determinism --------------------------------------------------------------


def test_is_a_generator_with_the_models_window(gen):
    assert isinstance(gen, Generator)
    assert gen.context_window == 512  # n_positions of the tiny model
    assert gen.count_tokens("Hello there, traveller.") == len(
        gen.tokenizer.encode("Hello there, traveller.")
    )


def test_same_seed_same_text_and_stream_matches_generate(gen):
    settings = SamplingSettings(max_new_tokens=30, min_new_tokens=30)
    a = gen.generate(PROMPT, seed=7, settings=settings)
    b = "".join(gen.stream(PROMPT, seed=7, settings=settings))
    assert a == b and a
    others = {gen.generate(PROMPT, seed=s, settings=settings) for s in range(1, 5)}
    assert len(others) > 1, "different seeds should give different stories"


def test_max_new_tokens_bounds_the_response(gen):
    gen.generate(PROMPT, seed=1, settings=SamplingSettings(max_new_tokens=5, min_new_tokens=5))
    assert gen.last_stats.new_tokens <= 5


def test_a_prompt_longer_than_the_window_is_cut_from_the_front(gen):
    long = "The rain keeps falling. " * 400 + "\n\n> You wait.\n"
    assert gen.count_tokens(long) > gen.context_window
    gen.generate(long, seed=3, settings=SamplingSettings(max_new_tokens=4))
    assert gen.last_stats.prompt_tokens == gen.context_window - 4


# --- stops and streaming -----------------------------------------------------------------------


def test_the_player_marker_never_reaches_the_caller(gen, monkeypatch):
    ids = gen.tokenizer.encode("The door opens.\n> You run away")
    scripted(gen, monkeypatch, ids)
    pieces = list(gen.stream(PROMPT, seed=0, settings=GREEDY))
    assert "".join(pieces) == "The door opens."
    assert not any(">" in p for p in pieces)


def test_a_blank_line_ends_the_response(gen, monkeypatch):
    scripted(gen, monkeypatch, gen.tokenizer.encode("It is dark.\n\nThe end"))
    assert gen.generate(PROMPT, seed=0, settings=GREEDY) == "It is dark."


def test_a_marker_right_after_the_prompt_is_caught(gen, monkeypatch):
    # The prompt ends with "\n"; a response starting with ">" makes "\n>" across the boundary.
    scripted(gen, monkeypatch, gen.tokenizer.encode("> You open the chest."))
    assert gen.generate(PROMPT, seed=0, settings=GREEDY) == ""


def test_end_of_text_ends_the_response(gen, monkeypatch):
    ids = [*gen.tokenizer.encode("You find a key."), gen.tokenizer.eos_token_id]
    scripted(gen, monkeypatch, [*ids, *gen.tokenizer.encode(" More text.")])
    assert gen.generate(PROMPT, seed=0, settings=GREEDY) == "You find a key."


def test_multibyte_characters_are_never_split(gen, monkeypatch):
    text = "A 🐉 flies over the café."
    ids = gen.tokenizer.encode(text)
    assert len(ids) > len(text.split()), "the dragon takes several byte tokens"
    scripted(gen, monkeypatch, ids)
    pieces = list(gen.stream(PROMPT, seed=0, settings=GREEDY))
    assert "".join(pieces) == text
    assert not any("\ufffd" in p for p in pieces)


def test_min_new_tokens_forbids_ending_early(gen, monkeypatch):
    # The model wants to end at once: a blank line, then end of text.
    scripted(gen, monkeypatch, [gen.tokenizer.encode("\n\n")[0], gen.stop_token_ids[0]] * 3)
    settings = SamplingSettings(temperature=0.0, repetition_penalty=1.0, min_new_tokens=2)
    gen.generate(PROMPT, seed=0, settings=settings)
    assert gen.last_stats.new_tokens >= 2


def test_ban_marker_forbids_tokens_that_start_a_player_line(gen):
    marker = set(gen.marker_ids.tolist())
    tok = gen.tokenizer
    assert tok.convert_tokens_to_ids(">") in marker
    assert tok.encode(" >")[0] not in marker  # a '>' inside a sentence is fine
    assert all(tok.decode([i]).startswith(">") or "\n>" in tok.decode([i]) for i in marker)
    # Logits that want '>' above all: with the ban, it is never picked.
    gt = tok.convert_tokens_to_ids(">")
    settings = SamplingSettings(ban_marker=True, temperature=1.0, top_k=0, top_p=1.0)
    for seed in range(20):
        logits = torch.zeros(len(tok))
        logits[gt] = 20.0
        rng = torch.Generator().manual_seed(seed)
        assert pick_token(logits, settings, rng, banned=gen.marker_ids) != gt


def test_ban_marker_in_generation(gen, monkeypatch):
    scripted(gen, monkeypatch, gen.tokenizer.encode(">>>>>>"))
    settings = SamplingSettings(
        temperature=0.0, repetition_penalty=1.0, min_new_tokens=0, ban_marker=True
    )
    out = gen.generate(PROMPT, seed=0, settings=settings)
    assert not out.lstrip().startswith(">")


# --- sampling ----------------------------------------------------------------------------------


def test_repetition_penalty_is_sign_correct():
    logits = torch.tensor([2.0, -2.0, 1.0])
    penalize_repetition(logits, [0, 1], 2.0)
    assert logits.tolist() == [1.0, -4.0, 1.0]  # both became less likely; token 2 untouched


def test_filters_keep_the_expected_tokens():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    probs, ids = candidates(logits, SamplingSettings(temperature=1.0, top_k=2, top_p=1.0))
    assert ids.tolist() == [0, 1]
    probs, ids = candidates(logits, SamplingSettings(temperature=1.0, top_k=0, top_p=0.7))
    assert ids.tolist() == [0, 1]  # 0.5 < 0.7, then 0.8 covers it
    assert torch.allclose(probs.sum(), torch.tensor(1.0))
    _, ids = candidates(logits, SamplingSettings(temperature=1.0, top_k=0, top_p=1.0))
    assert sorted(ids.tolist()) == [0, 1, 2, 3]
    _, ids = candidates(
        logits, SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, typical_p=0.5)
    )
    assert 0 < len(ids) < 4


def test_greedy_ignores_the_seed(gen):
    settings = SamplingSettings(temperature=0.0, max_new_tokens=12, min_new_tokens=12)
    assert gen.generate(PROMPT, seed=1, settings=settings) == gen.generate(
        PROMPT, seed=2, settings=settings
    )


# --- the key/value cache -----------------------------------------------------------------------


def turns_of_a_game():
    """Prompts as a game makes them: each extends the last, then the window slides."""
    base = "You stand at the gate of the ruined keep. Crows circle the broken tower."
    history = ""
    prompts = []
    for action in ("You knock.", "You push the gate.", "You step inside.", "You call out."):
        prompts.append(base + history + turn_prefix(action, "do"))
        history += turn_prefix(action, "do") + "Nothing answers but the wind."
    prompts.append(prompts[2])  # an undo / retry: a shorter prompt than the cache holds
    prompts.append("Crows circle." + history + turn_prefix("You leave.", "do"))  # slid
    return prompts


def test_cache_reuse_gives_the_same_text_as_no_reuse(tiny_gpt2):
    settings = SamplingSettings(max_new_tokens=24, min_new_tokens=24)
    with_reuse = fresh(tiny_gpt2)
    without = fresh(tiny_gpt2, reuse_cache=False)
    reused = []
    for i, prompt in enumerate(turns_of_a_game()):
        a = with_reuse.generate(prompt, seed=i, settings=settings)
        reused.append(with_reuse.last_stats.reused_tokens)
        b = without.generate(prompt, seed=i, settings=settings)
        assert without.last_stats.reused_tokens == 0
        assert a == b, f"turn {i}: cache reuse changed the text"
    assert reused[0] == 0
    assert all(r > 10 for r in reused[1:5]), reused  # later turns reuse the shared start
    assert reused[5] == 0  # the window slid: the start differs, everything is prefilled


def test_the_same_prompt_twice_reuses_all_but_one_token(gen):
    gen.generate(PROMPT, seed=1)
    gen.generate(PROMPT, seed=1)
    stats = gen.last_stats
    assert stats.reused_tokens == stats.prompt_tokens - 1


def test_ctrl_c_during_a_forward_pass_leaves_the_generator_usable(tiny_gpt2, monkeypatch):
    settings = SamplingSettings(max_new_tokens=20, min_new_tokens=20)
    reference = fresh(tiny_gpt2).generate(PROMPT, seed=5, settings=settings)
    g = fresh(tiny_gpt2)
    g.generate(PROMPT, seed=4, settings=settings)  # fill the cache
    real = g.model.forward
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:
            # Part of the layers have written their keys: the cache is now half-updated.
            real(*args, **kwargs)
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(g.model, "forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        for _ in g.stream(PROMPT + " More.", seed=4, settings=settings):
            pass
    monkeypatch.setattr(g.model, "forward", real)
    assert g.generate(PROMPT, seed=5, settings=settings) == reference


def test_a_stream_closed_early_leaves_the_cache_consistent(tiny_gpt2):
    settings = SamplingSettings(max_new_tokens=20, min_new_tokens=20)
    reference = fresh(tiny_gpt2).generate(PROMPT, seed=9, settings=settings)
    g = fresh(tiny_gpt2)
    stream = g.stream(PROMPT, seed=8, settings=settings)
    next(stream)
    stream.close()
    assert g.generate(PROMPT, seed=9, settings=settings) == reference


def test_mixed_precision_decodes_with_half_copies_close_to_float32(tiny_gpt2):
    from dungeon.cpu_decode import DecodeLinear

    exact, mixed = fresh(tiny_gpt2), fresh(tiny_gpt2, dtype="mixed")
    assert mixed.precision == "float32+float16 decode"
    assert sum(isinstance(m, DecodeLinear) for m in mixed.model.modules()) > 0
    ids = exact.encode(PROMPT)
    with torch.inference_mode():
        # Prefill runs in fp32 (only its last row goes through the LM head's half copy).
        pre_a, pre_b = exact._prefill(ids)[0], mixed._prefill(ids)[0]
        a, b = exact._forward([ids[-1]]), mixed._forward([ids[-1]])  # decode: fp16 copies
    assert not torch.equal(a, b)
    assert torch.allclose(pre_a, pre_b, atol=1e-2, rtol=1e-2)
    assert torch.allclose(a, b, atol=1e-2, rtol=1e-2)


def test_a_float16_overflow_is_redone_in_float32(tiny_gpt2):
    from dungeon.cpu_decode import DecodeLinear

    settings = SamplingSettings(temperature=0.0, max_new_tokens=8, min_new_tokens=8)
    exact, mixed = fresh(tiny_gpt2), fresh(tiny_gpt2, dtype="mixed")
    # Blow up the last MLP output layer: its float16 copy overflows, float32 stays finite.
    for g in (exact, mixed):
        proj = g.model.transformer.h[-1].mlp.c_proj
        with torch.no_grad():
            proj.weight.mul_(1e4)
        if isinstance(proj, DecodeLinear):
            proj.half_weight.copy_((proj.weight.t() * 1e4).clamp(-6e4, 6e4).half())
            with torch.inference_mode():
                assert not torch.isfinite(proj(torch.ones(1, proj.half_weight.shape[1]))).all()
    assert mixed.generate(PROMPT, seed=0, settings=settings) == exact.generate(
        PROMPT, seed=0, settings=settings
    )


# --- candidates: one batch, one row per seed ---------------------------------------------------


def test_a_batch_of_one_is_stream(gen):
    settings = SamplingSettings(max_new_tokens=30)
    for seed in (3, 7):
        pieces = list(gen.stream(PROMPT, seed=seed, settings=settings))
        batch = list(gen.stream_batch(PROMPT, seeds=[seed], settings=settings))
        assert batch == [(0, p) for p in pieces] and pieces


def test_the_same_seeds_give_the_same_candidates(gen):
    settings = SamplingSettings(max_new_tokens=24, min_new_tokens=24)
    a = gen.generate_batch(PROMPT, seeds=[1, 2, 3, 4], settings=settings)
    b = gen.generate_batch(PROMPT, seeds=[1, 2, 3, 4], settings=settings)
    assert a == b
    assert len(set(a)) == 4, "each row samples with its own seed"
    assert gen.last_stats.rows == 4 and gen.last_stats.new_tokens == 4 * 24


def test_each_candidate_is_the_response_of_its_seed(tiny_gpt2):
    # float32 on the transformers path: a row of the batch is the text one call would give.
    g = fresh(tiny_gpt2)
    settings = SamplingSettings(max_new_tokens=40, min_new_tokens=2)
    texts = g.generate_batch(PROMPT, seeds=[5, 6, 7], settings=settings)
    assert texts == [g.generate(PROMPT, seed=s, settings=settings) for s in (5, 6, 7)]


def test_rows_stop_on_their_own_and_hold_back_stops(gen):
    settings = SamplingSettings(max_new_tokens=40, min_new_tokens=0)
    seeds = list(range(10, 16))
    pieces: dict[int, list[str]] = {}
    for row, piece in gen.stream_batch(PROMPT, seeds=seeds, settings=settings):
        pieces.setdefault(row, []).append(piece)
    texts = ["".join(pieces.get(r, [])) for r in range(len(seeds))]
    assert texts == gen.generate_batch(PROMPT, seeds=seeds, settings=settings)
    assert not any(stop in t for t in texts for stop in STOP_STRINGS)
    assert len({len(gen.encode(t)) for t in texts}) > 1, "rows end at different lengths"


def test_the_next_turn_reuses_the_cache_after_candidates(gen):
    settings = SamplingSettings(max_new_tokens=16, min_new_tokens=16)
    texts = gen.generate_batch(PROMPT, seeds=[1, 2, 3], settings=settings)
    prompt_tokens = gen.last_stats.prompt_tokens
    gen.generate(PROMPT + texts[1] + "\n\n> You wait.\n", seed=0, settings=settings)
    assert gen.last_stats.reused_tokens >= prompt_tokens


# --- pieces ------------------------------------------------------------------------------------


def test_common_prefix():
    assert common_prefix([1, 2, 3], [1, 2, 4, 5]) == 2
    assert common_prefix([], [1]) == 0
    assert common_prefix([1, 2], [1, 2]) == 2


def test_detokenizer_holds_back_partial_characters(gen):
    tok = gen.tokenizer
    ids = tok.encode(" 🐉!")
    d = Detokenizer(tok, tok.encode("Look:"))
    pieces = [d.push(i) for i in ids]
    assert pieces[:-2] == [""] * (len(ids) - 2)  # nothing until the dragon is whole
    assert "".join(pieces) + d.flush() == " 🐉!"


# --- through the Game --------------------------------------------------------------------------


def test_plays_turns_through_the_game(gen):
    game = Game(gen, Story(premise="You wake in a cellar that smells of apples."))
    for action in ("look around", "open the door"):
        pieces = list(game.stream(action))
        assert ">" not in "".join(pieces)
    assert len(game.story.turns) == 2
    assert all(STOP_STRINGS[0] not in t.response for t in game.story.turns)


@pytest.mark.slow
def test_builtin_model_candidates_on_4_bit_weights():
    from dungeon.models import load_generator

    g = load_generator("smollm2-135m", quantize="int4")
    assert "int4" in g.precision and type(g.runner).__name__ == "LlamaDecoder"
    settings = SamplingSettings(max_new_tokens=24)
    texts = g.generate_batch(PROMPT, seeds=[1, 2, 3, 4], settings=settings)
    assert texts == g.generate_batch(PROMPT, seeds=[1, 2, 3, 4], settings=settings)  # cached
    g.reset_cache()
    assert texts == g.generate_batch(PROMPT, seeds=[1, 2, 3, 4], settings=settings)  # cold
    assert len(set(texts)) > 1 and all(">" not in t for t in texts)
    assert g.generate_batch(PROMPT, seeds=[5], settings=settings) == [
        g.generate(PROMPT, seed=5, settings=settings)
    ]


@pytest.mark.slow
def test_builtin_model_plays_a_few_turns():
    from dungeon.models import load_generator

    g = load_generator("smollm2-135m")
    game = Game(g, Story(premise="You are a knight riding toward a dark forest.", seed=3))
    for action in ("enter the forest", "say is anyone there?", "light a torch"):
        turn = game.act(action)
        assert turn.response.strip()
        assert not turn.response.lstrip().startswith(">")
    assert g.last_stats.reused_tokens > 0


@pytest.mark.slow
def test_builtin_model_same_seed_same_text_and_cache_reuse():
    from dungeon.models import load_generator

    settings = SamplingSettings(max_new_tokens=24, min_new_tokens=24)
    # Dense weights: with 4-bit decode, the cached keys of generated tokens come from the
    # 4-bit products and a re-read prompt from the dense ones, so texts may differ after a while.
    a = load_generator("smollm2-135m", dtype="float32", quantize="none")
    b = load_generator("smollm2-135m", dtype="float32", quantize="none", reuse_cache=False)
    for i, prompt in enumerate(turns_of_a_game()[:3]):
        assert a.generate(prompt, seed=i, settings=settings) == b.generate(
            prompt, seed=i, settings=settings
        )
