"""The Game API with a scripted fake generator: turns, streaming, cancel, undo/redo/retry."""

import pytest

from dungeon import (
    ContextSettings,
    FakeGenerator,
    Game,
    GameSettings,
    NothingToDo,
    Story,
    WorldEntry,
)
from dungeon.generator import SamplingSettings

PREMISE = "You wake in a cellar that smells of apples."


def test_act_commits_a_cleaned_turn():
    gen = FakeGenerator(["The ladder creaks under you. A trapdoor waits above.\n> You open it."])
    game = Game(gen, PREMISE)
    turn = game.act("I climb the ladder")
    assert turn.action == "You climb the ladder."
    assert turn.response == "The ladder creaks under you. A trapdoor waits above."
    assert game.story.turns == [turn]
    assert gen.prompts[0] == PREMISE + "\n\n> You climb the ladder.\n"


def test_stream_yields_clean_pieces_and_commits_at_the_end():
    gen = FakeGenerator(["It is dark. You hear \x1b[31mwater. Far away\n\n> You listen."])
    game = Game(gen, PREMISE)
    pieces = list(game.stream("listen"))
    assert "".join(pieces) == "It is dark. You hear water."
    assert all("\x1b" not in p and ">" not in p for p in pieces)
    assert game.story.turns[-1].response == "It is dark. You hear water."


def test_stream_closed_early_leaves_the_story_as_it_was():
    game = Game(FakeGenerator(["One. Two. Three. Four. Five."]), PREMISE)
    game.act("wait")
    before = game.story.text()
    stream = game.stream("wait again")
    next(stream)
    stream.close()
    assert game.story.text() == before and len(game.story.turns) == 1


def test_ctrl_c_during_generation_cancels_only_that_turn():
    class Interrupting(FakeGenerator):
        def stream(self, prompt, **kw):
            yield "The floor "
            raise KeyboardInterrupt

    game = Game(FakeGenerator(["Fine."]), PREMISE)
    game.act("wait")
    before = game.story.text()
    game.generator = Interrupting()
    with pytest.raises(KeyboardInterrupt):
        for _ in game.stream("dig"):
            pass
    assert game.story.text() == before
    game.generator = FakeGenerator(["The dirt is soft."])
    assert game.act("dig").response == "The dirt is soft."


def test_same_seed_same_story_and_two_games_are_independent():
    def play(seed):
        game = Game(FakeGenerator(), Story(premise=PREMISE, seed=seed))
        for action in ["look around", "say hello", "open the door", ""]:
            game.act(action)
        return game.story.text()

    assert play(7) == play(7)
    assert play(7) != play(8)
    a = Game(FakeGenerator(["Alpha happens."]), PREMISE)
    b = Game(FakeGenerator(["Beta happens."]), PREMISE)
    a.act("wait")
    assert b.story.turns == [] and a.story.turns[0].response == "Alpha happens."


def test_undo_redo_retry_alter_choose():
    game = Game(FakeGenerator(["First answer.", "Second answer.", "Third answer."]), PREMISE)
    game.act("wait")
    turn = game.retry()
    assert turn.response == "Second answer." and [c.text for c in turn.alternatives] == [
        "First answer."
    ]
    game.alter("An edited answer \x1b[2J")
    assert game.story.turns[-1].response == "An edited answer"
    game.choose(0)
    assert game.story.turns[-1].response == "First answer."
    undone = game.undo()
    assert game.story.turns == [] and undone.response == "First answer."
    assert game.redo() is undone and game.story.turns == [undone]
    game.undo()
    game.act("jump")
    with pytest.raises(NothingToDo, match="nothing to redo"):
        game.redo()


def test_nothing_to_undo_or_retry_on_a_new_story():
    game = Game(FakeGenerator(), PREMISE)
    for call in (game.undo, game.retry, lambda: game.alter("x")):
        with pytest.raises(NothingToDo, match="no turns yet"):
            call()


def test_a_loop_is_retried_with_a_new_seed_a_bounded_number_of_times():
    looping = "The wind howls through the broken window and the candle flickers."
    gen = FakeGenerator([looping])
    game = Game(gen, PREMISE)
    game.act("wait")
    gen.script = [looping, looping, "A cat jumps onto the table and stares at you."]
    gen.calls = 0
    turn = game.act("wait more")
    assert turn.response.startswith("A cat jumps")
    assert not turn.candidates[0].flagged
    assert gen.calls == 3


def test_a_loop_that_never_ends_is_kept_and_flagged():
    looping = "The wind howls through the broken window and the candle flickers."
    gen = FakeGenerator([looping])
    game = Game(gen, PREMISE, GameSettings(max_attempts=3))
    game.act("wait")
    gen.calls = 0
    turn = game.act("wait")
    assert gen.calls == 3
    assert turn.candidates[0].flagged and game.last_flagged


def test_empty_responses_are_retried():
    gen = FakeGenerator(["> You do it for me.", "The lamp goes out."])
    game = Game(gen, PREMISE)
    assert game.act("wait").response == "The lamp goes out."


def test_streamed_loop_is_caught_before_it_is_shown():
    looping = "The wind howls through the broken window and the candle flickers. More text."
    gen = FakeGenerator([looping])
    game = Game(gen, PREMISE)
    game.act("wait")
    gen.script = [looping, "A cat jumps onto the table and stares at you."]
    gen.calls = 0
    shown = "".join(game.stream("wait"))
    assert shown == "A cat jumps onto the table and stares at you."
    assert game.story.turns[-1].response == shown


def test_empty_input_continues_the_story():
    gen = FakeGenerator(["The rain keeps falling."])
    game = Game(gen, PREMISE)
    turn = game.act("   ")
    assert turn.mode == "continue" and turn.action == ""
    assert gen.prompts[-1] == PREMISE + " "
    assert game.story.text() == PREMISE + " The rain keeps falling."


def test_big_paste_is_bounded_with_a_notice():
    game = Game(FakeGenerator(["Ok."]), PREMISE)
    game.act("shout " + "a" * 100_000)
    assert game.last_notice and "characters" in game.last_notice
    assert len(game.story.turns[-1].action) < 2000


def test_memory_world_info_and_note_reach_the_prompt():
    gen = FakeGenerator(["Fine."])
    game = Game(gen, PREMISE)
    game.remember("You are a retired knight.")
    game.set_author_note("Keep it eerie.")
    game.add_world_entry(WorldEntry(["lantern"], "The lantern burns with blue fire."))
    game.act("light the lantern")
    prompt = gen.prompts[-1]
    assert prompt.startswith("You are a retired knight.")
    assert "blue fire" in prompt and "[Author's note: Keep it eerie.]" in prompt
    assert game.forget(0) == "You are a retired knight."
    with pytest.raises(IndexError, match="no memory entry 1"):
        game.forget(0)


def test_on_commit_runs_after_each_change():
    seen = []
    game = Game(
        FakeGenerator(["Ok."]), PREMISE, on_commit=lambda g: seen.append(len(g.story.turns))
    )
    game.act("wait")
    game.undo()
    game.redo()
    assert seen == [1, 0, 1]


def test_settings_are_validated():
    game = Game(FakeGenerator(), PREMISE)
    assert game.set_sampling("temperature", "0.5").temperature == 0.5
    with pytest.raises(ValueError, match="temperature must be between 0 and 5"):
        game.set_sampling("temperature", "9")
    with pytest.raises(ValueError, match="no setting 'warmth'"):
        game.set_sampling("warmth", "1")
    with pytest.raises(ValueError, match="top_p takes a float"):
        game.set_sampling("top_p", "lots")
    with pytest.raises(ValueError):
        SamplingSettings(min_new_tokens=100, max_new_tokens=10)
    with pytest.raises(ValueError, match="premise"):
        Game(FakeGenerator(), "  \x1b[2J ")


def test_context_budget_is_capped_by_the_model_window():
    gen = FakeGenerator(context_window=300)
    game = Game(gen, PREMISE)
    for _ in range(60):
        game.act("walk on")
    assert game.last_context.tokens <= 300 - game.sampling.max_new_tokens


# --- the world's state -------------------------------------------------------------------------


def _derived(game: Game):
    from dungeon.world_state import derive

    turns = ((t.action, t.response) for t in game.story.turns)
    return derive(turns, game.story.state.edits, game.story.premise)


WAITS = [
    "Rain drums on the roof above you, steady and cold, for what feels like an hour.",
    "A rat crosses the floor, stops to look at you, then squeezes under the far door.",
    "Somewhere upstairs a clock strikes nine. Each stroke shakes loose a little dust.",
    "Your stomach growls. The smell of apples is stronger now, sweet and rotten.",
    "Footsteps pass overhead and fade. Nobody calls down. Nobody opens the hatch.",
    "The candle gutters low. Shadows stretch along the barrels like long fingers.",
]


def test_the_state_follows_the_chosen_response_through_retry_choose_undo_and_redo():
    gen = FakeGenerator(
        [
            "You lift it. It is warm.",
            *WAITS,
            "You coil the rope over your shoulder.",
            "The rope won't budge.",
            "Nothing happens at all.",
        ]
    )
    game = Game(gen, PREMISE, GameSettings(context=ContextSettings(budget=160)))
    game.act("take the lamp")
    for _ in WAITS:
        game.act("wait")
    after_waits = game.story.state
    assert after_waits.names("inventory") == ["lamp"]
    game.act("take the rope")
    # The lamp's turn has left the prompt: the state line says what it established.
    assert "You carry: lamp.\n" in gen.prompts[-1] and game.last_context.first_turn > 0
    assert game.story.state.names("inventory") == ["lamp", "rope"]
    game.retry()
    # The retry is written without the response it replaces.
    assert "rope" not in gen.prompts[-1].split("\n\n")[0]
    assert game.story.state.names("inventory") == ["lamp"]
    game.choose(0)
    assert game.story.state.names("inventory") == ["lamp", "rope"]
    assert game.story.state == _derived(game)
    game.choose(1)
    assert game.story.state.names("inventory") == ["lamp"]
    game.undo()
    assert game.story.state == after_waits
    game.redo()
    assert game.story.state.names("inventory") == ["lamp"]
    assert game.story.state == _derived(game)


def test_the_players_edits_survive_undo_and_redo_and_stay_before_a_new_turn():
    gen = FakeGenerator(["You take it. It is yours.", "You wait a while.", "Rain falls."])
    game = Game(gen, PREMISE)
    game.act("take the apple")
    game.edit_state("drop", "apple")
    game.edit_state("add", "silver coin")
    assert game.story.state.names("inventory") == ["silver coin"]
    game.act("wait")
    game.undo()
    assert game.story.state.names("inventory") == ["silver coin"]
    game.redo()
    assert game.story.state.names("inventory") == ["silver coin"]
    assert game.story.state == _derived(game)
    with pytest.raises(ValueError, match="carry no sword"):
        game.edit_state("drop", "sword")


def test_state_off_keeps_it_but_leaves_it_out_of_the_context():
    gen = FakeGenerator(["You take it. It is yours.", "Nothing happens."])
    game = Game(gen, PREMISE, GameSettings(state=False))
    game.act("take the apple")
    game.edit_state("add", "silver coin")  # the player's own entries always show when on
    game.act("wait")
    assert game.story.state.names("inventory") == ["apple", "silver coin"]
    assert "You carry" not in gen.prompts[-1] and game.last_context.state == ""
    game.settings = GameSettings(state=True)
    assert game.context_preview().state == "You carry: silver coin."


def test_a_loaded_story_gets_its_state_from_its_turns():
    from dungeon.story import Candidate, Turn

    story = Story(PREMISE, turns=[Turn("You take the candle.", "do", [Candidate("Lit.", 1)])])
    assert story.state.inventory == ()
    game = Game(FakeGenerator(), story)
    assert game.story.state.names("inventory") == ["candle"]
