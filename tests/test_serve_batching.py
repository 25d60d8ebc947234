"""Turns from different games decoded in one batch (dungeon.multi_decode, dungeon.serve.batching)
on a tiny random Llama (the built-in model's family) with the real GPT-2 BPE."""

from __future__ import annotations

import threading
import time

import pytest
from serve_helpers import running_server

torch = pytest.importorskip("torch")

from dungeon.generator import SamplingSettings  # noqa: E402

PROMPTS = [
    "You stand in a hall of mirrors and",
    "The dragon",
    "A knock at the door.\n> You open it.\n",
    "Rain falls on the ruined keep. You climb the stairs, slowly, one by one.",
]


@pytest.fixture(scope="module")
def tiny_llama():
    """A TransformersGenerator over a tiny random Llama, on LlamaDecoder as the built-in is."""
    from dungeon.tiny import tiny_llama_generator

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    gen = tiny_llama_generator(settings=SamplingSettings(max_new_tokens=16, min_new_tokens=2))
    yield gen
    torch.set_num_threads(before)


def _batching(gen, **kw):
    from dungeon.serve.batching import BatchingGenerator

    return BatchingGenerator(gen, **{"max_rows": 4, **kw})


def test_rows_at_their_own_positions_match_one_prompt_at_a_time(tiny_llama):
    from dungeon.multi_decode import MultiDecoder

    gen, runner = tiny_llama, tiny_llama.runner
    multi = MultiDecoder.for_generator(gen, max_rows=4)
    ids = [gen.encode(p) for p in PROMPTS[:3]]
    with torch.inference_mode():
        got = [multi.add(x)[1] for x in ids]
        stepped = multi.step([11, 22, 33])
        for row, (x, token) in enumerate(zip(ids, [11, 22, 33])):
            runner.reset()
            alone = runner.forward(torch.tensor([x]))[0]
            assert torch.allclose(got[row], alone, atol=1e-5)
            alone = runner.forward(torch.tensor([[token]]))[0]
            assert torch.allclose(stepped[row], alone, atol=1e-5)
        gen.reset_cache()


def test_a_games_text_does_not_depend_on_who_else_is_in_the_batch(tiny_llama):
    alone = [tiny_llama.generate(p, seed=i) for i, p in enumerate(PROMPTS)]
    batching = _batching(tiny_llama)
    try:
        assert batching.generate(PROMPTS[0], seed=0) == alone[0]  # a batch of one
        texts = [""] * len(PROMPTS)

        def play(i: int) -> None:
            texts[i] = batching.generate(PROMPTS[i], seed=i)

        threads = [threading.Thread(target=play, args=(i,)) for i in range(len(PROMPTS))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert texts == alone
        assert batching.rows_stepped > batching.steps  # some steps ran several rows
    finally:
        batching.close()


def test_candidates_batch_like_stream_batch(tiny_llama):
    batching = _batching(tiny_llama, max_rows=2)
    try:
        rows = ["", "", ""]  # more candidates than rows: two, then one
        for row, piece in batching.stream_batch(PROMPTS[1], seeds=[4, 5, 6]):
            rows[row] += piece
        assert rows == tiny_llama.generate_batch(PROMPTS[1], seeds=[4, 5, 6])
    finally:
        batching.close()


def test_guided_games_in_a_batch_write_what_the_generator_writes_alone(tiny_llama):
    story = "Rain falls on the ruined keep.\n\n> You look around.\nStairs climb into the dark."
    prompt, contrast = story + "\n\n> You climb the stairs.\n", story + "\n\n> You wait.\n"
    guided = SamplingSettings(max_new_tokens=16, min_new_tokens=2, guidance=1.5)

    def texts(gen, seeds):
        out = [""] * len(seeds)
        for row, piece in gen.stream_guided(prompt, contrast, seeds=seeds, settings=guided):
            out[row] += piece
        return out

    alone = texts(tiny_llama, [4, 5, 6])
    plain = [tiny_llama.generate(p, seed=i) for i, p in enumerate(PROMPTS[:2])]
    assert alone != tiny_llama.generate_batch(prompt, seeds=[4, 5, 6], settings=guided)
    batching = _batching(tiny_llama, max_rows=4)  # two guided responses at a time
    try:
        got: dict[str, list[str]] = {}

        def guided_game() -> None:
            got["guided"] = texts(batching, [4, 5, 6])

        def plain_game(i: int) -> None:
            got[str(i)] = [batching.generate(PROMPTS[i], seed=i)]

        threads = [threading.Thread(target=guided_game)]
        threads += [threading.Thread(target=plain_game, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert got["guided"] == alone
        assert [got["0"][0], got["1"][0]] == plain
        deadline = time.monotonic() + 5  # the decode thread frees rows after the last piece
        while batching._reserved and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batching._reserved == 0 and batching.multi.rows == 0, "every row is freed"
        # The contrast rows are not kept for later turns; the responses are.
        neutral = tiny_llama.encode(contrast)
        entries = list(batching.multi.store.entries.values())
        assert entries and all(e.ids[: len(neutral)] != neutral for e in entries)
    finally:
        batching.close()


def test_the_next_turn_reuses_the_games_cache(tiny_llama):
    batching = _batching(tiny_llama)
    try:
        first = batching.generate(PROMPTS[3], seed=1)
        before = batching.reused_tokens
        batching.generate(PROMPTS[3] + first + "\n> You wait.\n", seed=2)
        # Everything of the first turn that tokenizes the same is reused, not prefilled.
        assert batching.reused_tokens - before >= len(tiny_llama.encode(PROMPTS[3])) - 1
        assert batching.multi.store.entries  # kept for the turn after
    finally:
        batching.close()


def test_a_reader_that_goes_away_frees_its_row(tiny_llama):
    batching = _batching(tiny_llama)
    try:
        pieces = batching.stream(PROMPTS[0], seed=3, settings=SamplingSettings(max_new_tokens=200))
        next(pieces)
        pieces.close()
        assert batching.generate(PROMPTS[1], seed=1) == tiny_llama.generate(PROMPTS[1], seed=1)
        assert batching.multi.rows == 0
    finally:
        batching.close()


def test_the_prefix_store_keeps_to_its_bound_in_bytes():
    from dungeon.multi_decode import PrefixStore

    store = PrefixStore(max_bytes=3 * 4 * 10)  # room for 3 entries of 10 float32s
    kv = lambda: torch.zeros(10)  # noqa: E731
    store.put([1, 2], kv())
    store.put([5, 6], kv())
    store.put([1, 2, 3], kv())  # extends [1, 2]: the older turn goes
    assert sorted(e.ids for e in store.entries.values()) == [[1, 2, 3], [5, 6]]
    assert store.best([5, 6, 7])[1] == 2  # [5, 6] is now the most recently used
    store.put([8], kv())
    store.put([9], kv())  # over the bound: the least recently used ([1, 2, 3]) goes
    assert sorted(e.ids for e in store.entries.values()) == [[5, 6], [8], [9]]
    assert store.bytes <= store.max_bytes
    store.put(list(range(5)), torch.zeros(100))  # bigger than the whole store: not kept
    assert store.bytes <= store.max_bytes


def _play(server, seed: int, actions: list[str]) -> list[str]:
    with server.client(timeout=120) as c:
        game = c.post("/v1/games", json={"scenario": "fantasy", "seed": seed}).json()
        for action in actions:
            r = c.post(f"/v1/games/{game['id']}/turns", json={"text": action})
            assert r.status_code == 200, r.text
        story = c.get(f"/v1/games/{game['id']}").json()
    return [t["response"] for t in story["turns"]]


def test_games_played_together_tell_the_stories_they_tell_alone(tiny_llama, tmp_path):
    """Four games at once on a batching server, then one by one on a server that decodes one
    turn at a time: the same seeds and actions give the same stories."""
    actions = ["I look around", "I open the door"]
    with running_server(tiny_llama, saves=tmp_path / "a", batch_size=4) as server:
        state = server.app.state.dungeon
        assert state.queue.slots == 4
        together = [None] * 4

        def play(i: int) -> None:
            together[i] = _play(server, 100 + i, actions)

        threads = [threading.Thread(target=play, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        batched = state.generator
        assert batched.rows_stepped > batched.steps
    with running_server(tiny_llama, saves=tmp_path / "b", batch_size=1) as server:
        assert server.app.state.dungeon.queue.slots == 1
        alone = [_play(server, 100 + i, actions) for i in range(4)]
    assert together == alone


@pytest.mark.slow
def test_the_built_in_model_tells_the_same_text_alone_and_in_a_batch():
    """int4 products, the adapter's side path and all: a row's text is its own. (No prefix
    store here: a prompt prefilled whole runs dense products where a reused one would run its
    last tokens through the int4 kernel, and that rounding is not what this test is about.)"""
    from dungeon import startup
    from dungeon.config import PlayOptions

    gen = startup.build_generator(PlayOptions(sampling=SamplingSettings(max_new_tokens=24)))
    batching = _batching(gen, max_rows=8, cache_mb=0)
    try:
        prompts = PROMPTS * 2  # eight rows: products in two chunks of four
        alone = [batching.generate(p, seed=i) for i, p in enumerate(prompts)]
        texts = [""] * len(prompts)

        def play(i: int) -> None:
            texts[i] = batching.generate(prompts[i], seed=i)

        threads = [threading.Thread(target=play, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert texts == alone
        assert batching.rows_stepped > batching.steps
    finally:
        batching.close()
