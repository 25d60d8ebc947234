"""The world's state: what the tracker reads from turns, its precision on the corpus's own stories
against hand labels, the player's edits, and the rendering for the context.

tests/data/world_state_labels.json holds 110 turns of stories/ labelled by hand (65 sampled at
random among inventory actions, wound-like responses and any turn, to tune the patterns on; 45
more, ``"sample": "held-out"``, labelled before the tracker read them). Each names what the turn
adds to the inventory (taken, received, or shown to be carried), removes from it, the people and
places it names, the player's conditions it states, and under ``ok`` what is arguable either way
(a prediction matching it is not counted wrong; recall does not ask for it).
"""

import json
from pathlib import Path

import pytest

from dungeon.format import read_story_file
from dungeon.world_reading import observe
from dungeon.world_state import (
    StateEdit,
    WorldState,
    derive,
    describe,
    edited,
    fit_state,
    render_lines,
    settled,
    update,
)
from dungeon.world_words import player_name, same_thing

ROOT = Path(__file__).resolve().parent.parent
LABELS = Path(__file__).resolve().parent / "data" / "world_state_labels.json"


def state_after(*turns: tuple[str, str], premise: str = "") -> WorldState:
    return derive(turns, premise=premise)


# --- the inventory ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "response", "carried"),
    [
        ("You take the iron key.", "You tuck it into your belt.", ["iron key"]),
        ("You pick up the lantern and the rope.", "They are dusty.", ["lantern", "rope"]),
        ("You pick the old map up.", "It crackles.", ["old map"]),
        ("You grab a torch from the wall.", "It sputters.", ["torch"]),
        ("You get the ladle.", "It is heavy.", ["ladle"]),
        ("You draw your knife.", "The blade glints.", ["knife"]),
        ("You put the letter in your pocket.", "It crackles.", ["letter"]),
        ("You put on the harness.", "It fits.", ["harness"]),
        ('You say "Thank you."', "Mara hands you a brass compass.", ["brass compass"]),
        (
            "You check your inventory.",
            "A war-pick, notched. A lantern with a full reservoir and a flask of spare oil. "
            "Four copper coins, your whole fortune.",
            ["war-pick", "lantern", "flask of spare oil", "four copper coins"],
        ),
    ],
)
def test_actions_and_responses_that_put_things_in_your_hands(action, response, carried):
    assert state_after((action, response)).names("inventory") == carried


@pytest.mark.parametrize(
    ("action", "response"),
    [
        ("You take the statue.", "It won't budge."),
        ("You pick up the anvil.", "It is far too heavy to lift."),
        ("You take the crown.", "You can't: the glass case is locked."),
        ("You grab the knife.", "The knife is gone. Someone took it in the night."),
        ("You take a deep breath.", "The air is cold."),
        ("You take the stairs down.", "They creak."),
        ("You take a look around.", "Dust everywhere."),
        ("You get up.", "Your knees crack."),
        ("You grab the railing.", "It holds."),
        ("You take Pebble.", "The cat purrs."),
        ('You say "I take the ring."', "Nobody answers."),
        ("You look at the sword.", "A fine sword. You take a moment to admire it."),
    ],
)
def test_a_refused_or_figurative_take_adds_nothing(action, response):
    assert state_after((action, response)).inventory == ()


@pytest.mark.parametrize(
    ("action", "response"),
    [
        ("You drop the key.", "It clatters."),
        ("You give the key to Nibsy.", "She pockets it."),
        ("You give Nibsy the key.", "She bites it to test it."),
        ("You hand her the key.", "She nods."),
        ("You put the key in the lock.", "It turns."),
        ("You throw the key into the well.", "Splash."),
        ("You leave the key on the altar.", "The altar hums."),
    ],
)
def test_giving_dropping_and_putting_away_take_it_out(action, response):
    state = state_after(("You take the iron key.", "It is cold."), (action, response))
    assert state.inventory == ()


def test_a_refused_give_keeps_the_item_and_an_item_never_held_is_not_removed():
    given_back = state_after(
        ("You take the letter.", "It is sealed."),
        ("You give her the letter.", "She reads it and hands it back to you."),
    )
    assert given_back.names("inventory") == ["letter"]
    assert state_after(("You drop the sword.", "Clang.")).inventory == ()


def test_drop_everything_undoes_the_same_turns_take():
    state = state_after(
        ("You take the lamp.", "Got it."),
        ("You pick up the hammer.", "You hit your own thumb. You drop everything and hop."),
    )
    assert state.names("inventory") == ["lamp"]
    assert state.names("condition") == ["hurt thumb"]


def test_each_entry_remembers_its_turn():
    state = state_after(("You wait.", "Rain."), ("You take the key.", "Cold."))
    assert [(e.name, e.turn) for e in state.inventory] == [("key", 1)]


# --- people and places ------------------------------------------------------------------------


def test_people_need_a_cue_and_the_player_is_not_one_of_them():
    state = state_after(
        (
            'You say "Hello?"',
            '"I am Nibsy," says the goblin. A man named Ortho waves. "Maud," Brennan says. '
            "Stone does not crack in straight lines. Mr. Dawes frowns.",
        ),
        premise="You are Maud Ironside, a dwarf sellsword.",
    )
    assert sorted(state.names("people")) == ["Brennan", "Mr. Dawes", "Nibsy", "Ortho"]


def test_a_fuller_name_replaces_a_shorter_one():
    state = state_after(("You ask Danny.", "Danny shrugs."), ("You wait.", "Danny Orme nods."))
    assert state.names("people") == ["Danny Orme"]


def test_places_by_their_words_and_by_travel():
    state = state_after(
        ("You ride to Greyslate.", "The road climbs past Deepmere Hold."),
        ("You wait.", 'She says it "in Common". You arrive in Bergen at dusk.'),
    )
    assert sorted(state.names("places")) == ["Bergen", "Deepmere Hold", "Greyslate"]


def test_player_name_from_the_premise():
    assert player_name("You are Wren Castellanos, systems counsellor.") == "Wren Castellanos"
    assert player_name("Leased to one Benedikt Obi, which is you.") == "Benedikt Obi"
    assert player_name("You wake in a cellar.") == ""


# --- the player's condition -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "condition"),
    [
        ("Your hand is cut.", ["cut hand"]),
        ("You are bleeding.", ["bleeding"]),
        ("Your left knee twists under you.", ["twisted left knee"]),
        ("You twist your ankle on the stair.", ["twisted ankle"]),
        ("The string whips back across your cheek.", ["hurt cheek"]),
        ("Your fingers are too numb to work the knot.", ["numb fingers"]),
        ("You are not hurt.", []),
        ("If you are bleeding, say so.", []),
        ("His hand is cut.", []),
        ('"Your hand is cut," she tells you.', ["cut hand"]),
    ],
)
def test_the_players_condition_where_the_story_states_it(response, condition):
    assert state_after(("You wait.", response)).names("condition") == condition


def test_conditions_heal_and_a_body_part_keeps_its_newest_word():
    state = state_after(
        ("You wait.", "You are bleeding. Your ankle is twisted."),
        ("You wait.", "Your ankle is swollen."),
    )
    assert state.names("condition") == ["bleeding", "swollen ankle"]
    healed = update(state, "You bandage it.", "The bleeding stops.", 2)
    assert healed.names("condition") == ["swollen ankle"]


# --- precision on the corpus ------------------------------------------------------------------

PRECISION_AT_LEAST = 0.9
"""Measured 84/86 = 0.977 over the 110 labelled turns: 50/51 on the 65 turns the patterns were
tuned on, 34/35 on the 45 labelled afterwards (27/29 = 0.931 at their first reading, before two
bugs they showed were fixed). Recall is lower by design: 131 of 180 labelled entries (0.73)."""

RECALL_AT_LEAST = 0.65
"""Measured 0.73 (131 of 180): a floor, so the tracker cannot reach its precision by going quiet."""

KIND_OF = {"add": "inventory", "people": "people", "places": "places", "condition": "condition"}


def _labelled_turns():
    """(label, state before, state after) for each labelled turn, the story read from its
    start as the game would."""
    labels = json.loads(LABELS.read_text(encoding="utf-8"))
    stories: dict[str, object] = {}
    for label in labels:
        story = stories.setdefault(
            label["story"], read_story_file(ROOT / "stories" / label["story"])
        )
        before = derive(story.turns[: label["turn"]], premise=story.premise)
        action, response = story.turns[label["turn"]]
        yield label, before, update(before, action, response, label["turn"])


def _changes(before: WorldState, after: WorldState) -> dict[str, list[str]]:
    """What a turn added to each kind, and took out of the inventory."""
    changes = {
        k: [n for n in after.names(v) if n not in before.names(v)] for k, v in KIND_OF.items()
    }
    changes["remove"] = [n for n in before.names("inventory") if n not in after.names("inventory")]
    return changes


def _matches(name: str, expected: list[str]) -> bool:
    return any(same_thing(name, e) or same_thing(name, e, names=True) for e in expected)


def test_tracker_precision_on_hand_labelled_corpus_turns():
    labels = json.loads(LABELS.read_text(encoding="utf-8"))
    assert len(labels) >= 40 and len({(x["story"], x["turn"]) for x in labels}) == len(labels)
    predictions, wrong = 0, []
    for label, before, after in _labelled_turns():
        for kind, names in _changes(before, after).items():
            predictions += len(names)
            wrong += [
                (label["story"], label["turn"], kind, name)
                for name in names
                if not _matches(name, label[kind] + label["ok"])
            ]
    assert predictions >= 60  # enough entries for the figure to mean something
    assert 1 - len(wrong) / predictions >= PRECISION_AT_LEAST, wrong


def test_tracker_recall_on_hand_labelled_corpus_turns():
    found = total = 0
    for label, before, after in _labelled_turns():
        for kind, kept in KIND_OF.items():
            total += len(label[kind])
            found += sum(_matches(name, after.names(kept)) for name in label[kind])
        for name in label["remove"]:
            if _matches(name, before.names("inventory")):  # only what the state held
                total += 1
                found += not _matches(name, after.names("inventory"))
    assert found / total >= RECALL_AT_LEAST, (found, total)


def test_every_label_names_a_real_turn():
    for label in json.loads(LABELS.read_text(encoding="utf-8")):
        story = read_story_file(ROOT / "stories" / label["story"])
        assert 0 <= label["turn"] < len(story.turns), label
        assert set(label) >= {"add", "remove", "people", "places", "condition", "ok", "sample"}


# --- the player's edits -----------------------------------------------------------------------


def test_edits_replay_where_they_were_made():
    turns = [("You take the rope.", "Done."), ("You wait.", "Rain.")]
    state = derive(turns)
    state = edited(state, "add", "lucky coin", 2)
    state = edited(state, "drop", "rope", 2)
    assert state.names("inventory") == ["lucky coin"]
    assert derive(turns, state.edits) == state
    # After an undo the edit still applies (at the end), and a redo brings its order back.
    assert derive(turns[:1], state.edits).names("inventory") == ["lucky coin"]
    # A new turn after the undo comes after the edit: taking the rope again keeps it.
    settled_state = settled(derive(turns[:1], state.edits), 1)
    again = derive([turns[0], ("You take the rope.", "Again.")], settled_state.edits)
    assert sorted(again.names("inventory")) == ["lucky coin", "rope"]


def test_edits_that_change_nothing_are_refused():
    state = derive([("You take the rope.", "Done.")])
    with pytest.raises(ValueError, match="already carry"):
        edited(state, "add", "rope", 1)
    with pytest.raises(ValueError, match="carry no sword"):
        edited(state, "drop", "sword", 1)
    with pytest.raises(ValueError, match="lists no Nobody"):
        edited(state, "forget", "Nobody", 1)
    with pytest.raises(ValueError, match="needs a name"):
        edited(state, "add", "  ", 1)
    with pytest.raises(ValueError, match="unknown state edit"):
        StateEdit("burn", "rope", 0)  # type: ignore[arg-type]


def test_a_forgotten_name_stays_forgotten():
    turns = [("You wait.", "Gorm says hello."), ("You wait.", "Gorm nods again.")]
    assert derive(turns).names("people") == ["Gorm"]
    state = edited(derive(turns[:1]), "forget", "Gorm", 1)
    assert state.people == ()
    assert derive(turns, state.edits).people == ()


# --- rendering --------------------------------------------------------------------------------


def test_render_keeps_the_newest_entries_and_fits_a_token_limit():
    state = WorldState()
    for i in range(30):
        state = update(state, f"You take the stone{i} pebble.", "Got it.", i)
    lines = render_lines(state)
    assert lines[0].startswith("You carry: ") and "stone29 pebble" in lines[0]
    assert "stone19 pebble" not in lines[0]  # only the 10 newest
    count = lambda text: len(text.split())  # noqa: E731
    fitted = fit_state(state, count, 8)
    assert count(fitted) <= 8 and "stone29 pebble" in fitted and fitted.endswith(".\n")
    assert fit_state(state, count, 2) == ""


def test_describe_shows_every_kind_and_where_each_entry_came_from():
    state = edited(derive([("You take the key.", "Cold.")]), "add", "coin", 1)
    text = describe(state)
    assert "You carry: key (turn 1), coin (you)" in text
    assert "People you have met: (none)" in text


def test_observe_is_pure_and_cached():
    a = observe("You take the key.", "Cold.")
    assert observe("You take the key.", "Cold.") is a
    assert a.adds == ("key",)


def test_story_text_the_player_writes_is_read_as_narration():
    state = state_after(
        ("A bee crawls out of the apple and stings you on the tip of the nose.", "It swells."),
        ("The innkeeper tells you that her name is Maud Fairweather.", "She smiles."),
        ("A marsh viper sinks its fangs into your left heel.", "You cry out."),
    )
    assert state.names("condition") == ["stung nose", "bitten left heel"]
    assert state.names("people") == ["Maud Fairweather"]
