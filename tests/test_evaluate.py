"""dungeon eval: the per-turn measures, scoring text (the Scorer protocol), perplexity, and a
smoke run on a tiny model."""

import json
import math
from importlib import resources
from pathlib import Path

import pytest

from dungeon.evaluate import (
    Playtest,
    distinct_2,
    impersonates,
    incomplete,
    load_playtests,
    perplexity,
    run_playtests,
    second_person_slip,
)
from dungeon.generator import (
    FAKE_END_LOGPROB,
    FAKE_NEW_LOGPROB,
    FAKE_SEEN_LOGPROB,
    FakeGenerator,
    Scorer,
)

HALL = "You are in a hall.\n\n> You look around.\n"


def test_measures():
    assert impersonates("The door opens. You decide to go inside.")
    assert impersonates('He waits. You say "Fine, I will go."')
    assert not impersonates("The guard says nothing and looks away.")
    assert impersonates("The hall is dark.> You light the lamp.")
    assert not impersonates("The sign reads -> EXIT. You follow it.")
    assert incomplete("The guard says nothing and") and not incomplete('He says "Go."')
    assert second_person_slip("I walk to the door. My hands shake.")
    assert not second_person_slip('You hear him say "I am here, my friend."')
    assert distinct_2("the cat the cat the cat") < distinct_2("the cat sat on a warm mat")


def test_load_playtests_reads_every_shipped_script_in_name_order():
    """(The shape of each script is checked in test_playtests.py; this is the loader.)"""
    folder = Path(str(resources.files("dungeon") / "playtests"))
    expected = sorted(p.name for p in folder.glob("*.json"))
    tests = load_playtests()
    assert [f"{t.name}.json" for t in tests] == expected
    first = json.loads((folder / expected[0]).read_text(encoding="utf-8"))
    assert tests[0] == Playtest(first["name"], first["genre"], first["premise"], first["inputs"])


def test_the_shipped_playtests_cover_the_genres():
    tests = load_playtests()
    assert len(tests) >= 12 and len({t.genre for t in tests}) >= 10


def test_playtest_counts_problems_and_crashes():
    script = ["The door creaks. You decide to run.", "", "Half a sente", "A cat sleeps."]
    tests = [Playtest("t", "g", "You are in a hall.", ["look", "wait", "go on", "sit"])]
    result = run_playtests(FakeGenerator(script), tests, seed=1)
    # The empty response is retried by the Game, so the next script line stands in for it.
    assert [t.response for t in result.turns] == [script[0], script[2], script[3], script[2]]
    s = result.summary()
    assert s["turns"] == 4 and s["crashes"] == 0 and s["empty_rate"] == 0
    assert s["impersonation_rate"] == 0.25 and s["incomplete_rate"] == 0.5

    class Broken(FakeGenerator):
        def stream(self, prompt, **kw):
            raise RuntimeError("boom")
            yield ""

    crashed = run_playtests(Broken(), tests)
    assert crashed.summary()["crashes"] == 4 and "boom" in crashed.crashes[0]


# --- scoring text ------------------------------------------------------------------------------


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


def test_eval_smoke_on_a_tiny_gpt2(tiny_gpt2, one_torch_thread):
    import torch

    from dungeon.models import load_generator

    gen = load_generator(str(tiny_gpt2), dtype="float32")
    gen.settings = gen.settings.with_value("max_new_tokens", "12")
    texts = [HALL + "It is dark."]
    ids = gen.tokenizer(texts[0] + gen.tokenizer.eos_token, return_tensors="pt").input_ids
    with torch.inference_mode():
        expected = math.exp(float(gen.model(ids, labels=ids).loss))
    assert perplexity(gen, texts, window=64) == pytest.approx(expected, rel=1e-4)
    windowed = perplexity(gen, texts, window=8)
    assert windowed > 1 and windowed != pytest.approx(expected, rel=1e-4)  # less context
    tests = load_playtests()[:1]
    tests[0] = Playtest(tests[0].name, tests[0].genre, tests[0].premise, tests[0].inputs[:3])
    a = run_playtests(gen, tests, seed=5).summary()
    b = run_playtests(gen, tests, seed=5).summary()
    a.pop("median_turn_s"), b.pop("median_turn_s")
    assert a == b and a["turns"] == 3 and a["crashes"] == 0
    json.dumps(a)


def test_eval_command_on_a_tiny_gpt2_prints_a_table_a_json_line_and_a_report(
    tiny_gpt2, tmp_path, capsys, one_torch_thread
):
    import torch

    from dungeon.cli import main
    from dungeon.models import default_threads

    folder = tmp_path / "playtests"
    folder.mkdir()
    script = {"name": "cellar", "premise": "You wake in a cellar.", "inputs": ["look", '"hello']}
    (folder / "cellar.json").write_text(json.dumps(script))
    report = tmp_path / "turns.jsonl"
    argv = ["eval", "--model", str(tiny_gpt2), "--dtype", "float32", "--playtests", str(folder)]
    torch.set_num_threads(2)  # one_torch_thread puts the old value back
    assert main([*argv, "--seed", "3", "--report", str(report)]) == 0
    assert torch.get_num_threads() == (default_threads() or 2)  # eval runs as play does
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["measure", "value"]
    figures = json.loads(lines[-1])
    assert figures["turns"] == 2 and figures["crashes"] == 0
    assert figures["perplexity"] > 1 and figures["seed"] == 3
    turns = [json.loads(line) for line in report.read_text().splitlines()]
    assert [t["input"] for t in turns] == ["look", '"hello']

    (folder / "broken.json").write_text("{not json")
    assert main([*argv, "--no-perplexity"]) == 2
    assert "broken.json" in capsys.readouterr().err


def test_rescore_of_a_report_gives_the_figures_of_the_run(tmp_path, capsys):
    from dataclasses import asdict

    from dungeon.cli import main
    from dungeon.evaluate import rescore

    tests = load_playtests()[:2]
    result = run_playtests(FakeGenerator(), tests, seed=2)
    lines = [json.dumps(asdict(t)) for t in result.turns]
    assert rescore(lines).summary() == result.summary()
    report = tmp_path / "turns.jsonl"
    report.write_text("\n".join(lines) + "\n")
    assert main(["eval", "--rescore", str(report)]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert figures["turns"] == 30 and figures["report"] == str(report)

    report.write_text(lines[0] + "\n{not json\n")
    assert main(["eval", "--rescore", str(report)]) == 2
    assert "report line 2" in capsys.readouterr().err
