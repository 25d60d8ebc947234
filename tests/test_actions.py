"""Player input to action: a table of what players type and what the model must see."""

import pytest

from dungeon.actions import MAX_INPUT_CHARS, make_action

CASES = [
    # do: first person -> second person, "You" prefix, final punctuation
    ("I pick up my sword", "do", "You pick up your sword.", "do"),
    ("pick up the sword", "do", "You pick up the sword.", "do"),
    ("Pick up the sword", "do", "You pick up the sword.", "do"),
    ("open the door.", "do", "You open the door.", "do"),
    ("run!", "do", "You run!", "do"),
    ("is the door locked?", "do", "Is the door locked?", "do"),
    ("you open the door", "do", "You open the door.", "do"),
    ("You open the door", "do", "You open the door.", "do"),
    ("you you open the door", "do", "You open the door.", "do"),
    ("You you you wave", "do", "You wave.", "do"),
    ("I look at myself in the mirror", "do", "You look at yourself in the mirror.", "do"),
    ("the goblin hits me", "do", "The goblin hits you.", "do"),
    ("give the key to me", "do", "You give the key to you.", "do"),
    ("tell him to follow me", "do", "You tell him to follow you.", "do"),
    ("I hurt myself", "do", "You hurt yourself.", "do"),
    ("I'm tired", "do", "You're tired.", "do"),
    ("I've got a plan", "do", "You've got a plan.", "do"),
    ("I'd rather wait", "do", "You'd rather wait.", "do"),
    ("I'll climb the wall", "do", "You'll climb the wall.", "do"),
    ("I’m cold", "do", "You’re cold.", "do"),
    ("I am the king", "do", "You are the king.", "do"),
    ("I was here first", "do", "You were here first.", "do"),
    ("Am I dead", "do", "Are you dead?", "do"),
    ("My sword glows", "do", "Your sword glows.", "do"),
    ("I open My Journal", "do", "You open Your Journal.", "do"),
    ("the book is mine", "do", "The book is yours.", "do"),
    ("i open the chest", "do", "You open the chest.", "do"),
    ('I shout "I am here!"', "do", 'You shout "I am here!"', "do"),
    ('I whisper "my name is Ana" to her', "do", 'You whisper "my name is Ana" to her.', "do"),
    (
        'I write "me and my shadow" on the wall',
        "do",
        'You write "me and my shadow" on the wall.',
        "do",
    ),
    ("I tell the TV to be quiet", "do", "You tell the TV to be quiet.", "do"),
    ("NPC the guard", "do", "You NPC the guard.", "do"),
    ("x lamp", "do", "You examine the lamp.", "do"),
    ("x my lamp", "do", "You examine your lamp.", "do"),
    ("x Bob", "do", "You examine Bob.", "do"),
    ("g all", "do", "You get all.", "do"),
    ("x me", "do", "You examine yourself.", "do"),
    # the player acting on themself, and "me" in another's clause
    ("look at me", "do", "You look at yourself.", "do"),
    ("I dance at Jāņi with Mārtiņš", "do", "You dance at Jāņi with Mārtiņš.", "do"),
    ("I greet Zoë, I think", "do", "You greet Zoë, you think.", "do"),
    ("I pinch me", "do", "You pinch yourself.", "do"),
    ("the goblin hits me", "do", "The goblin hits you.", "do"),
    ("I ask her to help me", "do", "You ask her to help you.", "do"),
    ("tell the guard to follow me", "do", "You tell the guard to follow you.", "do"),
    ("n", "do", "You go north.", "do"),
    ("i", "do", "You check your inventory.", "do"),
    ("look", "do", "You look around.", "do"),
    ("  draw   my\tblade  ", "do", "You draw your blade.", "do"),
    ("I open the door. Then I step inside", "do", "You open the door. Then you step inside.", "do"),
    ("I smile. My heart races", "do", "You smile. Your heart races.", "do"),
    ("I imagine a tiny island", "do", "You imagine a tiny island.", "do"),
    # say
    ("say hello there", "do", 'You say "Hello there."', "say"),
    ("Say what do you want?", "do", 'You say "What do you want?"', "say"),
    ('"hello there', "do", 'You say "Hello there."', "say"),
    ('"Who goes there?"', "do", 'You say "Who goes there?"', "say"),
    ("I am not afraid of you", "say", 'You say "I am not afraid of you."', "say"),
    ('"quiet!"', "say", 'You say "Quiet!"', "say"),
    # story: raw text, no prefix
    ("The sky turns red.", "story", "The sky turns red.", "story"),
    ("suddenly I remember everything", "story", "suddenly I remember everything", "story"),
    # empty means continue
    ("", "do", "", "continue"),
    ("   \n\t ", "do", "", "continue"),
    ("", "say", "", "continue"),
    ("anything", "continue", "", "continue"),
]


@pytest.mark.parametrize(("raw", "mode", "expected", "expected_mode"), CASES)
def test_action_table(raw, mode, expected, expected_mode):
    action = make_action(raw, mode)
    assert action.text == expected
    assert action.mode == expected_mode


def test_table_is_big_enough():
    assert len(CASES) >= 40


def test_escape_sequences_and_controls_are_removed():
    action = make_action("open \x1b[31mthe\x1b[0m door\x07", "do")
    assert action.text == "You open the door."


def test_huge_paste_is_bounded_with_a_notice():
    raw = "I walk " + "very " * 20_000 + "far"  # about 100 KB
    action = make_action(raw, "do")
    assert len(action.text) <= MAX_INPUT_CHARS + 10
    assert action.notice and "characters" in action.notice
    assert action.text.endswith(".")


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown mode"):
        make_action("hi", "shout")
