"""Output cleanup: nothing from a model or a file may drive the terminal or act for the player."""

from dungeon.cleanup import (
    balance_quotes,
    clean_response,
    cut_at_stop,
    loop_score,
    sanitize,
    stream_view,
    trim_incomplete,
)


def test_sanitize_removes_escape_sequences_and_controls():
    nasty = (
        "Red\x1b[31m text\x1b[0m, a title\x1b]0;pwned\x07, clear\x1b[2J\x1b[H,"
        " bell\x07, null\x00, c1\x9b31m, bidi\u202e, tab\there\r\nend"
    )
    clean = sanitize(nasty)
    assert "\x1b" not in clean and "\x07" not in clean and "\x00" not in clean
    assert "\x9b" not in clean and "\u202e" not in clean and "pwned" not in clean
    assert clean == "Red text, a title, clear, bell, null, c1, bidi, tab here\nend"


def test_stop_at_the_player_marker():
    assert cut_at_stop("The door opens.\n> You go in.") == ("The door opens.", True)
    assert cut_at_stop("The door opens.\n\nLater...") == ("The door opens.", True)
    assert cut_at_stop("> You go in.") == ("", True)
    assert cut_at_stop("A > B is fine.") == ("A > B is fine.", False)


def test_trim_incomplete_and_balance_quotes():
    assert trim_incomplete("He runs. She") == "He runs."
    assert trim_incomplete('She says "Stop!" and') == 'She says "Stop!"'
    assert trim_incomplete("no end at all") == "no end at all"
    assert balance_quotes('He says "Run.') == 'He says "Run."'
    assert balance_quotes('"Hi," he says.') == '"Hi," he says.'


def test_clean_response_whole_pipeline():
    raw = (
        "  The  wolf\x1b[5m growls.   It bares its teeth.\nIt bares its teeth. Then it\n> You flee."
    )
    c = clean_response(raw)
    assert c.text == "The wolf growls. It bares its teeth."
    assert c.stopped and c.trimmed and c.flags == ()
    assert clean_response("\n> You act.").flags == ("empty",)
    assert clean_response("no end").flags == ("incomplete",)


def test_loop_score():
    a = "The wind howls through the broken window and the candle flickers."
    assert loop_score(a, [a]) == 1.0
    assert loop_score("A bird sings in the old oak tree outside.", [a]) == 0.0
    assert loop_score("You wait.", ["You wait."]) == 0.0  # too short to call a loop


def test_stream_view_is_a_prefix_of_the_final_text():
    raw = 'The hall is dark. A voice says "Who. Is. There?" and a door'
    views = [stream_view(raw[:i]) for i in range(len(raw) + 1)]
    final = clean_response(raw).text
    for v in views:
        assert final.startswith(v)
    # each view extends the previous one
    for a, b in zip(views, views[1:]):
        assert b.startswith(a)
