"""The word wrapper (dungeon.wrap) on its own: streaming equals all at once, words kept whole."""

from hypothesis import given
from hypothesis import strategies as st

from dungeon.wrap import WordWrapper


def wrap_all(pieces, width, **kw) -> str:
    w = WordWrapper(width, **kw)
    return "".join(w.feed(p) for p in pieces) + w.finish()


def test_wrapper_breaks_at_words():
    text = "The torchlight flickers across the damp stone walls."
    assert wrap_all([text], 20) == "The torchlight\nflickers across the\ndamp stone walls."


def test_wrapper_holds_back_only_the_unfinished_word():
    w = WordWrapper(40)
    assert w.feed("The tor") == "The"
    assert w.feed("chlight ") == " torchlight"
    assert w.finish() == ""


def test_wrapper_keeps_newlines_and_indentation():
    assert wrap_all(["a b\n  c d\n\ne"], 20) == "a b\n  c d\n\ne"


def test_wrapper_indents_wrapped_lines():
    out = wrap_all(["You open the heavy door and step into the dark."], 20, indent="  ", column=2)
    assert out == "You open the heavy\n  door and step into\n  the dark."


def test_wrapper_hangs_under_a_second_column():
    out = wrap_all(["  /undo     Take back the last turn you played."], 30, hang=True)
    assert out == "  /undo     Take back the last\n            turn you played."


def test_wrapper_breaks_a_word_longer_than_the_line():
    assert (
        wrap_all(["see " + "x" * 25], 10) == "see\n" + "x" * 10 + "\n" + "x" * 10 + "\n" + "x" * 5
    )


def test_wrapper_counts_wide_characters_as_two_cells():
    out = wrap_all(["竜 竜 竜 竜 竜 竜"], 10)
    assert out.split("\n") == ["竜 竜 竜", "竜 竜 竜"]


words = st.text(alphabet="abcdefghij", min_size=1, max_size=14)
texts = st.lists(st.tuples(words, st.sampled_from([" ", "  ", "\n", " \n"])), max_size=40)


@given(texts, st.integers(min_value=12, max_value=60), st.data())
def test_wrapper_streaming_is_the_same_as_all_at_once(parts, width, data):
    text = "".join(w + sep for w, sep in parts)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=10)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
    whole = wrap_all([text], width)
    assert wrap_all(pieces, width) == whole
    assert "".join(whole.split()) == "".join(text.split())  # nothing lost or added
    if all(len(w) <= width for w, _ in parts):
        assert whole.split() == text.split()  # words are only broken when they must be
    assert all(len(line) <= width for line in whole.split("\n"))
