"""Action guidance (SamplingSettings.guidance): each response has a second cache row that follows
a contrast prompt (the same story, a neutral action), and its tokens are picked from the logits
after the action plus guidance times the log-prob lift over the contrast. Checked against a
slow reference that runs the whole model on both prompts at every step."""

from __future__ import annotations

import logging

import pytest

torch = pytest.importorskip("torch")

from dungeon import Game, Story  # noqa: E402
from dungeon.format import turn_prefix  # noqa: E402
from dungeon.generator import GuidedGenerator, SamplingSettings, stream_rows  # noqa: E402
from dungeon.sampling import GUIDANCE_FLOOR, guide  # noqa: E402
from dungeon.tiny import tiny_llama_generator  # noqa: E402

STORY = (
    "The lantern gutters as you climb down into the well. Cold water laps at the stones.\n\n"
    "> You look around.\nMoss covers the walls."
)
PROMPT = STORY + turn_prefix("You pull the rusty chain hard.", "do")
CONTRAST = STORY + turn_prefix("You look around.", "do")
GREEDY = SamplingSettings(
    temperature=0.0, repetition_penalty=1.0, min_new_tokens=0, max_new_tokens=12, guidance=1.5
)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """The tiny models run on one thread (see conftest.one_torch_thread)."""


@pytest.fixture(scope="module")
def llama():
    return tiny_llama_generator()


def test_guide_adds_the_lift_over_the_contrast_among_plausible_tokens():
    logits = torch.tensor([3.0, 2.9, 2.0, -5.0])
    contrast = torch.tensor([3.0, 0.0, 2.0, -9.0])
    out = guide(logits, contrast, 1.0)
    lift = torch.log_softmax(logits, 0) - torch.log_softmax(contrast, 0)
    assert out[:3] == pytest.approx((logits + lift)[:3].tolist())
    assert out[3] == float("-inf"), "under the floor: never picked, whatever its lift"
    assert int(out.argmax()) == 1, "the token the action made likelier wins"
    assert guide(logits, contrast, 0.0).tolist() == logits.tolist()
    # The floor is relative to the likeliest token after the action.
    edge = torch.log(torch.tensor([1.0, GUIDANCE_FLOOR * 1.01, GUIDANCE_FLOOR * 0.99]))
    assert torch.isfinite(guide(edge, edge, 2.0)).tolist() == [True, True, False]
    # ... among the tokens that may be written: a banned favourite does not empty the row.
    ban = torch.tensor([0])
    assert torch.isfinite(guide(edge, edge, 2.0, banned=ban)).tolist() == [False, True, True]
    assert torch.isfinite(guide(edge, edge, 2.0, banned=torch.arange(3))).tolist() == [
        True,
        True,
        False,
    ]


def reference(gen, prompt: str, contrast: str, settings: SamplingSettings) -> list[int]:
    """Greedy guided decoding with a full forward pass of both prompts at every step."""
    model, ids, other, out = gen.model, gen.encode(prompt), gen.encode(contrast), []
    with torch.inference_mode():
        for _ in range(settings.max_new_tokens):
            a = model(torch.tensor([ids + out])).logits[0, -1].float()
            c = model(torch.tensor([other + out])).logits[0, -1].float()
            token = int(guide(a, c, settings.guidance).argmax())
            if token in gen.stop_token_ids:
                break
            out.append(token)
    return out


def test_guided_greedy_text_is_the_reference_and_differs_from_unguided(llama):
    assert isinstance(llama, GuidedGenerator)
    want = llama.tokenizer.decode(reference(llama, PROMPT, CONTRAST, GREEDY))
    rows = list(llama.stream_guided(PROMPT, CONTRAST, seeds=[0], settings=GREEDY))
    assert "".join(piece for _, piece in rows) == want
    assert llama.last_stats.new_tokens == 12
    plain = llama.generate(PROMPT, seed=0, settings=GREEDY)
    assert plain != want, "guidance changes the text (the tiny model's lift is large)"


def test_each_guided_candidate_is_its_seed_alone_and_the_next_turn_reuses_the_cache(llama):
    settings = SamplingSettings(max_new_tokens=16, min_new_tokens=3, guidance=1.0)

    def guided(seeds):
        texts = [""] * len(seeds)
        for row, piece in llama.stream_guided(PROMPT, CONTRAST, seeds=seeds, settings=settings):
            texts[row] += piece
        return texts

    alone = [guided([seed])[0] for seed in (4, 5, 6)]
    texts = guided([4, 5, 6])
    assert texts == alone
    assert len(set(texts)) == 3
    follow = PROMPT + texts[1] + "\n\n> You wait.\n"
    llama.generate(follow, seed=0, settings=settings)
    assert llama.last_stats.reused_tokens >= len(llama.encode(PROMPT + texts[1])) - 2


def test_no_guidance_or_no_shared_start_writes_unguided_text(llama):
    off = SamplingSettings(max_new_tokens=10, min_new_tokens=10)
    plain = llama.generate_batch(PROMPT, seeds=[1, 2], settings=off)
    for settings, contrast in ((off, CONTRAST), (GREEDY.with_value("guidance", "1"), "Zzz")):
        rows = llama.stream_guided(PROMPT, contrast, seeds=[1, 2], settings=settings)
        texts = ["", ""]
        for row, piece in rows:
            texts[row] += piece
        if settings is off:
            assert texts == plain
        else:  # nothing shared with the prompt: the unguided greedy text
            assert texts == [llama.generate(PROMPT, seed=s, settings=settings) for s in (1, 2)]


def test_a_model_without_the_fast_decoder_warns_once_and_writes_unguided_text(tiny_gpt2, caplog):
    from dungeon.models import load_generator

    gen = load_generator(tiny_gpt2, device="cpu", dtype="float32")
    with caplog.at_level(logging.WARNING, logger="dungeon.hf_generator"):
        for _ in range(2):
            got = "".join(
                p for _, p in gen.stream_guided(PROMPT, CONTRAST, seeds=[0], settings=GREEDY)
            )
    assert got == gen.generate(PROMPT, seed=0, settings=GREEDY)
    assert [r.message for r in caplog.records].count(
        "action guidance needs a Llama-family model on the CPU; ignored"
    ) == 1


class Recording:
    """A GuidedGenerator that records what the Game asks of it and answers a fixed text."""

    name, context_window = "recording", 2048

    def __init__(self, settings: SamplingSettings):
        self.settings = settings
        self.calls: list[tuple[str, str | None]] = []

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def stream(self, prompt, *, seed, settings=None, stop=()):
        self.calls.append((prompt, None))
        yield "The chain rattles."

    def generate(self, prompt, *, seed, settings=None, stop=()):
        return "".join(self.stream(prompt, seed=seed))

    def stream_guided(self, prompt, contrast, *, seeds, settings=None, stop=()):
        self.calls.append((prompt, contrast))
        for row in range(len(seeds)):
            yield row, "The chain rattles."


def test_the_game_guides_actions_with_a_neutral_contrast_and_only_when_asked():
    gen = Recording(SamplingSettings(guidance=1.0))
    game = Game(gen, Story(premise="You stand at the well."))
    game.act("pull the chain")
    game.act("a voice calls", "story")  # no action line: nothing to contrast
    (prompt, contrast), (story_prompt, none) = gen.calls
    assert prompt.endswith(turn_prefix("You pull the chain.", "do"))
    assert contrast == prompt[: -len(turn_prefix("You pull the chain.", "do"))] + turn_prefix(
        "You look around.", "do"
    )
    assert none is None
    off = Recording(SamplingSettings())
    Game(off, Story(premise="You stand at the well.")).act("pull the chain")
    assert off.calls[0][1] is None
    assert list(stream_rows(off, "x", seeds=[0], contrast="y")) == [(0, "The chain rattles.")]
