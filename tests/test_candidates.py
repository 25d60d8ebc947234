"""Several responses per turn (Game(candidates=n)): one batch, a picker, retry from ready ones."""

import pytest

from dungeon import FakeGenerator, Game, GameSettings, Story
from dungeon.saves import SaveData, dumps, loads

PREMISE = "You wake in a cellar that smells of apples."


def game(seed: int = 5, **kw) -> Game:
    return Game(FakeGenerator(), Story(premise=PREMISE, seed=seed), GameSettings(**kw))


def test_a_turn_keeps_its_candidates_and_shows_the_first():
    g = game(candidates=3)
    turn = g.act("look around")
    assert len(turn.candidates) == 3 and turn.chosen == 0
    assert [c.shown for c in turn.candidates] == [True, False, False]
    assert len({c.text for c in turn.candidates}) == 3  # three different responses
    assert len({c.seed for c in turn.candidates}) == 3


def test_the_same_seed_gives_the_same_candidates():
    texts = [[c.text for c in game(seed=11, candidates=4).act("wait").candidates] for _ in "ab"]
    assert texts[0] == texts[1]
    assert texts[0] != [c.text for c in game(seed=12, candidates=4).act("wait").candidates]


def test_one_candidate_plays_as_before_and_the_first_of_a_batch_is_that_one():
    alone = game(seed=3).act("open the door")
    batch = game(seed=3).act("open the door", candidates=3)
    assert len(alone.candidates) == 1
    assert batch.candidates[0].text == alone.response  # same seed for candidate 0


def test_retry_shows_a_ready_candidate_without_generating():
    g = game(candidates=3)
    first = g.act("listen")
    calls = g.generator.calls
    second = g.retry()
    assert g.generator.calls == calls  # nothing generated: it was ready
    assert second.chosen == 1 and second.response == first.candidates[1].text
    g.retry()
    assert g.generator.calls == calls and g.story.turns[-1].chosen == 2
    g.retry()  # none ready: a new batch
    assert g.generator.calls == calls + 3
    assert len(g.story.turns[-1].candidates) == 6 and g.story.turns[-1].chosen == 3


def test_choose_flips_between_candidates_and_marks_them_shown():
    g = game(candidates=2)
    g.act("wait")
    turn = g.choose(1)
    assert turn.chosen == 1 and turn.ready == []
    with pytest.raises(IndexError):
        g.choose(2)


def test_the_picker_chooses_and_the_stream_ends_with_the_choice():
    g = game(candidates=3)
    g.picker = lambda turn, cands: max(range(len(cands)), key=lambda i: len(cands[i].text))
    shown = "".join(g.stream("look around"))
    turn = g.story.turns[-1]
    assert turn.response == max((c.text for c in turn.candidates), key=len)
    assert turn.candidates[turn.chosen].shown
    assert shown.startswith(turn.candidates[0].text) or shown == turn.response


def test_a_bad_picker_is_an_error_not_a_silent_choice():
    g = game(candidates=2)
    g.picker = lambda turn, cands: 7
    with pytest.raises(ValueError, match="picker chose 7 of 2"):
        g.act("wait")
    assert g.story.turns == []


def test_empty_and_looping_candidates_are_dropped():
    looping = "The rain falls on the roof of the old barn and the roof holds."
    gen = FakeGenerator([looping, looping, "", "A crow lands on the fence."])
    g = Game(gen, Story(premise=PREMISE, seed=1), GameSettings(candidates=3))
    g.act("listen")  # the first response, alone in its batch
    turn = g.act("listen again")
    assert [c.text for c in turn.candidates] == ["A crow lands on the fence."]


def test_candidates_are_validated():
    with pytest.raises(ValueError, match="candidates must be between 1 and 8"):
        GameSettings(candidates=0)
    with pytest.raises(ValueError, match="candidates must be between 1 and 8"):
        game().act("wait", candidates=9)


def test_unshown_candidates_survive_a_save():
    g = game(candidates=3)
    g.act("wait")
    back = loads(dumps(SaveData(g.story))).story
    assert [c.shown for c in back.turns[0].candidates] == [True, False, False]
    assert back.turns[0].ready == [1, 2]


class BatchingFake(FakeGenerator):
    """A FakeGenerator with a batched stream that interleaves its rows, as a real batch does."""

    def __init__(self):
        super().__init__()
        self.batches = 0

    def stream_batch(self, prompt, *, seeds, settings=None, stop=()):
        self.batches += 1
        streams = [list(self.stream(prompt, seed=s, settings=settings)) for s in seeds]
        for step in range(max(len(s) for s in streams)):
            for row, pieces in enumerate(streams):
                if step < len(pieces):
                    yield row, pieces[step]


def test_a_batching_backend_writes_all_candidates_in_one_batch():
    gen = BatchingFake()
    g = Game(gen, Story(premise=PREMISE, seed=5), GameSettings(candidates=3))
    shown = "".join(g.stream("look around"))
    turn = g.story.turns[-1]
    assert gen.batches == 1 and len(turn.candidates) == 3
    assert shown == turn.response == turn.candidates[0].text  # the first row was streamed
    sequential = game(seed=5, candidates=3).act("look around")
    assert [c.text for c in turn.candidates] == [c.text for c in sequential.candidates]
