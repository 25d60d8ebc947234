"""The context builder: token budget, pinned parts, world info, author's note, sliding."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dungeon.context import ContextOverflowError, ContextSettings, build_context
from dungeon.format import render_story, turn_prefix
from dungeon.generator import FakeGenerator
from dungeon.story import Candidate, Story, Turn, WorldEntry
from dungeon.world_state import Entry, WorldState

count = FakeGenerator().count_tokens


def turn(action: str, response: str, mode="do") -> Turn:
    return Turn(action, mode, [Candidate(response, 1)])


def story_with(n: int, **kw) -> Story:
    turns = [
        turn(f"You take step {i}.", f"Step {i} echoes in the hall. The dust settles.")
        for i in range(n)
    ]
    return Story(premise="You stand at the gate of the old keep.", turns=turns, **kw)


def test_all_fits_equals_the_training_text():
    story = story_with(3)
    tail = turn_prefix("You knock.", "do")
    ctx = build_context(story, tail, count, ContextSettings(budget=10_000))
    full = render_story(story.premise, [(t.action, t.mode, t.response) for t in story.turns])
    assert ctx.text == full + tail
    assert ctx.first_turn == 0 and ctx.tokens == count(ctx.text)


def test_oldest_turns_go_first_and_budget_holds():
    story = story_with(40)
    ctx = build_context(story, turn_prefix("You knock.", "do"), count, ContextSettings(budget=200))
    assert ctx.tokens <= 200
    assert ctx.text.startswith(story.premise)
    assert "You take step 39." in ctx.text and "You take step 0." not in ctx.text
    assert ctx.text.endswith("\n\n> You knock.\n")


def test_partial_oldest_turn_is_cut_at_a_sentence():
    story = story_with(1)
    story.turns[0] = turn("You wait.", "First sentence here. Second sentence there. Third one now.")
    tail = turn_prefix("You knock.", "do")
    need = count(story.premise + tail)
    ctx = build_context(story, tail, count, ContextSettings(budget=need + 8))
    assert ctx.partial and ctx.first_turn == 1
    assert "Third one now." in ctx.text and "First" not in ctx.text


def test_pinned_parts_too_big_raise_a_typed_error():
    story = Story(premise="word " * 300)
    with pytest.raises(ContextOverflowError) as err:
        build_context(story, turn_prefix("You wait.", "do"), count, ContextSettings(budget=100))
    assert err.value.part == "premise" and err.value.tokens > 100
    assert "premise" in str(err.value) and "budget" in str(err.value)
    story = Story(premise="Short.", memory=["fact " * 200])
    with pytest.raises(ContextOverflowError, match="memory"):
        build_context(story, "", count, ContextSettings(budget=100))


def test_world_info_keys_whole_words_secondary_and_constant():
    story = story_with(2)
    story.turns.append(turn("You greet Mara.", "Mara nods at the dragon statue."))
    story.world = [
        WorldEntry(["mara"], "Mara is the keeper of the keys."),
        WorldEntry(["ara"], "ARA should not match inside Mara."),
        WorldEntry(["dragon"], "Dragons sleep under the keep.", secondary_keys=["gold"]),
        WorldEntry(["statue"], "The statue weeps at midnight.", secondary_keys=["dragon"]),
        WorldEntry([], "Magic is fading from the world.", constant=True),
    ]
    ctx = build_context(story, turn_prefix("You look.", "do"), count, ContextSettings(budget=2000))
    assert ctx.world_entries == (4, 0, 3)
    assert "keeper of the keys" in ctx.text and "weeps at midnight" in ctx.text
    assert "ARA" not in ctx.text and "Dragons sleep" not in ctx.text
    assert ctx.text.index("Magic is fading") < ctx.text.index(story.premise)


def test_memory_first_and_author_note_depth():
    story = story_with(
        5, memory=["You are a thief.", "The duke wants you dead."], author_note="Tense, dark."
    )
    ctx = build_context(
        story,
        turn_prefix("You run.", "do"),
        count,
        ContextSettings(budget=2000, author_note_depth=2),
    )
    assert ctx.text.startswith("You are a thief.\nThe duke wants you dead.\n\n" + story.premise)
    note = ctx.text.index("[Author's note: Tense, dark.]")
    assert ctx.text.index("You take step 2.") < note < ctx.text.index("You take step 3.")
    ctx0 = build_context(
        story,
        turn_prefix("You run.", "do"),
        count,
        ContextSettings(budget=2000, author_note_depth=0),
    )
    assert ctx0.text.endswith("[Author's note: Tense, dark.]\n\n> You run.\n")


def test_start_hint_keeps_the_prompt_start_then_slides_with_slack():
    settings = ContextSettings(budget=300, slide_slack=0.3)
    story = story_with(4)
    tail = turn_prefix("You knock.", "do")
    first = build_context(story, tail, count, settings, start_hint=0)
    assert first.first_turn == 0
    # Grow until it no longer fits: the start stays put while it does.
    hint, starts = 0, []
    for i in range(4, 40):
        story.turns.append(
            turn(f"You take step {i}.", f"Step {i} echoes in the hall. The dust settles.")
        )
        ctx = build_context(story, tail, count, settings, start_hint=hint)
        assert ctx.tokens <= settings.budget
        starts.append(ctx.first_turn)
        hint = ctx.first_turn
    changes = sum(1 for a, b in zip(starts, starts[1:]) if a != b)
    assert changes >= 1
    assert changes <= len(starts) // 3  # slides in jumps, not every turn


class MergingCounter:
    """A counter whose whole-text count exceeds the sum of its parts (like BPE merges can)."""

    def __call__(self, text: str) -> int:
        return len(text.encode("utf-8")) // 3 + text.count("\n\n") * 2 + 1


texts = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r"),
    min_size=0,
    max_size=120,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    premise=texts.filter(lambda s: s.strip()),
    turns=st.lists(
        st.tuples(texts, st.sampled_from(["do", "say", "story", "continue"]), texts), max_size=25
    ),
    memory=st.lists(texts, max_size=3),
    note=texts,
    action=texts,
    budget=st.integers(min_value=16, max_value=600),
    depth=st.integers(min_value=0, max_value=5),
    hint=st.one_of(st.none(), st.integers(min_value=0, max_value=30)),
    merging=st.booleans(),
)
def test_never_exceeds_the_budget(
    premise, turns, memory, note, action, budget, depth, hint, merging
):
    counter = MergingCounter() if merging else count
    story = Story(
        premise=premise,
        memory=[m for m in memory if m.strip()],
        author_note=note,
        turns=[Turn(a, m, [Candidate(r, 0)]) for a, m, r in turns],
        world=[WorldEntry([premise.split()[0]], "Constant lore.", constant=True)],
    )
    tail = turn_prefix(action, "do")
    try:
        ctx = build_context(
            story,
            tail,
            counter,
            ContextSettings(budget=budget, author_note_depth=depth),
            start_hint=hint,
        )
    except ContextOverflowError as err:
        assert err.tokens > 0 and err.budget == budget
        return
    assert counter(ctx.text) == ctx.tokens <= budget
    assert ctx.text.endswith(tail)
    assert premise in ctx.text


# --- the world's state -------------------------------------------------------------------------


def state_of(n_items: int, name_words: int = 1, *, by_player: bool = True) -> WorldState:
    """A state carrying ``n_items`` things of ``name_words`` words (entry i from turn i, or the
    player's own), with as many people."""
    things = [" ".join(f"thing{i}x{j}" for j in range(name_words)) for i in range(n_items)]
    return WorldState(
        inventory=tuple(Entry(t, i, by_player) for i, t in enumerate(things)),
        people=tuple(Entry(f"Person{i}", i, by_player) for i in range(n_items)),
    )


def test_the_state_goes_after_memory_and_before_world_info():
    story = story_with(2, memory=["You are a thief."])
    story.world = [WorldEntry([], "Magic is fading.", constant=True)]
    story.state = state_of(2)
    ctx = build_context(story, turn_prefix("You run.", "do"), count, ContextSettings(budget=2000))
    assert ctx.text.startswith(
        "You are a thief.\n\nYou carry: thing0x0, thing1x0.\n"
        "People you have met: Person0, Person1.\n\nMagic is fading.\n\n"
    )
    assert ctx.state == "You carry: thing0x0, thing1x0.\nPeople you have met: Person0, Person1."
    off = build_context(
        story, turn_prefix("You run.", "do"), count, ContextSettings(budget=2000, state_tokens=0)
    )
    assert "You carry" not in off.text and off.state == ""


def test_the_state_lists_what_the_turns_left_out_established():
    story = story_with(40)
    story.state = WorldState(inventory=(Entry("iron key", 0), Entry("lamp", 39)))
    ctx = build_context(story, turn_prefix("You run.", "do"), count, ContextSettings(budget=300))
    assert ctx.first_turn > 0
    assert ctx.state == "You carry: iron key."  # the lamp's turn is in the prompt
    everything = build_context(
        story, turn_prefix("You run.", "do"), count, ContextSettings(budget=100_000)
    )
    assert everything.first_turn == 0 and everything.state == ""


def test_the_state_lines_change_only_when_the_window_slides():
    settings_ = ContextSettings(budget=300, slide_slack=0.3)
    story, tail = story_with(4), turn_prefix("You knock.", "do")
    hint, seen = 0, []
    for i in range(4, 60):
        story.turns.append(turn(f"You take pebble {i}.", f"Pebble {i} is smooth. It is cold."))
        story.state = WorldState(inventory=tuple(Entry(f"pebble {j}", j) for j in range(i + 1)))
        ctx = build_context(story, tail, count, settings_, start_hint=hint)
        seen.append((ctx.first_turn, ctx.state))
        hint = ctx.first_turn
    assert any(state for _, state in seen)
    for (first_a, state_a), (first_b, state_b) in zip(seen, seen[1:]):
        if first_a == first_b:
            assert state_a == state_b  # the prompt's start stays the same between slides


def test_the_state_is_capped_and_keeps_its_newest_entries():
    story = story_with(3)
    story.state = state_of(40)
    ctx = build_context(
        story, turn_prefix("You run.", "do"), count, ContextSettings(budget=2000, state_tokens=12)
    )
    assert 0 < count(ctx.state + "\n\n") <= 12
    assert "thing39x0" in ctx.state and "thing0x0" not in ctx.state


def test_the_state_never_pushes_out_a_pinned_part():
    story = Story(premise="You stand at the gate.", memory=["You are a thief."])
    story.author_note = "Dark."
    story.state = state_of(10)
    tail = turn_prefix("You knock.", "do")
    pinned = build_context(story, tail, count, ContextSettings(budget=2000, state_tokens=0))
    ctx = build_context(story, tail, count, ContextSettings(budget=pinned.tokens + 3))
    assert ctx.tokens <= pinned.tokens + 3 and ctx.state == ""
    assert ctx.text == pinned.text


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    premise=texts.filter(lambda s: s.strip()),
    memory=st.lists(texts, max_size=3),
    note=texts,
    action=texts,
    items=st.integers(min_value=0, max_value=300),
    words=st.integers(min_value=1, max_value=12),
    by_player=st.booleans(),
    budget=st.integers(min_value=16, max_value=600),
    cap=st.integers(min_value=0, max_value=400),
    merging=st.booleans(),
)
def test_a_huge_state_stays_within_the_budget_and_keeps_the_pinned_parts(
    premise, memory, note, action, items, words, by_player, budget, cap, merging
):
    counter = MergingCounter() if merging else count
    story = Story(
        premise=premise,
        memory=[m for m in memory if m.strip()],
        author_note=note,
        turns=[turn(f"You take step {i}.", "The dust settles.") for i in range(5)],
    )
    story.state = state_of(items, words, by_player=by_player)
    tail = turn_prefix(action, "do")
    settings_ = ContextSettings(budget=budget, state_tokens=cap)
    try:
        ctx = build_context(story, tail, counter, settings_)
    except ContextOverflowError as err:
        # Only the pinned parts can overflow: without the state they overflow too.
        with pytest.raises(ContextOverflowError):
            build_context(story, tail, counter, ContextSettings(budget=budget, state_tokens=0))
        assert err.budget == budget
        return
    assert counter(ctx.text) == ctx.tokens <= budget
    assert ctx.text.endswith(tail) and premise in ctx.text
    assert all(m in ctx.text for m in story.memory)
    if story.author_note.strip():
        assert f"[Author's note: {story.author_note}]" in ctx.text
    if ctx.state:
        assert counter(ctx.state + "\n\n") <= cap
        assert ctx.state in ctx.text


def test_state_all_lists_the_whole_state():
    story = story_with(40)
    story.state = WorldState(inventory=(Entry("iron key", 0), Entry("lamp", 39)))
    settings_ = ContextSettings(budget=300, state_all=True)
    ctx = build_context(story, turn_prefix("You run.", "do"), count, settings_)
    assert ctx.state == "You carry: iron key, lamp."
