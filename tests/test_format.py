"""The story format: render and parse, and errors that name file:line."""

import pytest

from dungeon.format import (
    StoryFormatError,
    parse_model_text,
    parse_story_file,
    read_story_file,
    render_story,
    render_story_file,
    turn_prefix,
)

GOOD = """title: The Cellar
genre: fantasy
tags: exploration, quiet
---
You wake in a cellar that smells of apples.
A ladder leans against the wall.

> You climb the ladder.
The rungs creak, but they hold. At the top, a
trapdoor resists your shoulder.

> You say "Hello?"
Nobody answers.
"""


def test_parse_story_file_reads_header_premise_and_turns():
    story = parse_story_file(GOOD, "cellar.txt")
    assert story.title == "The Cellar"
    assert story.genre == "fantasy"
    assert story.tags == ["exploration", "quiet"]
    # Hard-wrapped lines are joined: the model sees one line per paragraph.
    assert (
        story.premise
        == "You wake in a cellar that smells of apples. A ladder leans against the wall."
    )
    assert story.turns == [
        (
            "You climb the ladder.",
            "The rungs creak, but they hold. At the top, a trapdoor resists your shoulder.",
        ),
        ('You say "Hello?"', "Nobody answers."),
    ]


def test_model_text_is_the_ai_dungeon_layout():
    story = parse_story_file(GOOD)
    assert story.model_text() == (
        "You wake in a cellar that smells of apples. A ladder leans against the wall."
        "\n\n> You climb the ladder.\nThe rungs creak, but they hold. At the top, a trapdoor"
        ' resists your shoulder.\n\n> You say "Hello?"\nNobody answers.'
    )


def test_render_parse_round_trip():
    story = parse_story_file(GOOD)
    again = parse_story_file(render_story_file(story))
    assert again.turns == story.turns and again.premise == story.premise
    assert parse_model_text(story.model_text()) == (story.premise, story.turns)


def test_turn_prefixes():
    assert turn_prefix("You go north.", "do") == "\n\n> You go north.\n"
    assert turn_prefix('You say "Hi."', "say") == '\n\n> You say "Hi."\n'
    assert turn_prefix("The sky darkens.", "story") == "\n\nThe sky darkens. "
    assert turn_prefix("", "continue") == " "
    assert (
        render_story("P.", [("You wait.", "do", "Time passes.")])
        == "P.\n\n> You wait.\nTime passes."
    )


def test_errors_name_file_and_line_and_are_all_reported():
    bad = (
        "title: X\ngenre: y\n---\nPremise.\n\n> You wait.\n\n>no space here\nText.\n\n> You sit.\n"
    )
    with pytest.raises(StoryFormatError) as err:
        parse_story_file(bad, "bad.txt")
    problems = err.value.problems
    assert "bad.txt:1: the header has no 'tags:' field" in problems
    assert any(p.startswith("bad.txt:7:") and "right after the player line" in p for p in problems)
    assert any(p.startswith("bad.txt:8:") and "'> '" in p for p in problems)
    assert any(p.startswith("bad.txt:11:") and "no response" in p for p in problems)


def test_missing_separator_and_empty_premise():
    with pytest.raises(StoryFormatError, match="no '---' line"):
        parse_story_file("title: X\nPremise\n", "a.txt")
    with pytest.raises(StoryFormatError, match="premise is empty"):
        parse_story_file("title: X\ngenre: g\ntags: t\n---\n\n> You wait.\nOk.\n", "a.txt")


def test_blank_line_inside_a_response_is_an_error():
    text = "title: X\ngenre: g\ntags: t\n---\nP.\n\n> You wait.\nOne.\n\nTwo.\n"
    with pytest.raises(
        StoryFormatError, match=r"a\.txt:9: a response must not contain a blank line"
    ):
        parse_story_file(text, "a.txt")


def test_player_line_must_follow_a_blank_line():
    text = "title: X\ngenre: g\ntags: t\n---\nP.\n> You wait.\nOk.\n"
    with pytest.raises(StoryFormatError, match=r"a\.txt:6: a player line must follow a blank line"):
        parse_story_file(text, "a.txt")


def test_non_utf8_file_names_the_line(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes(b"title: X\ngenre: g\ntags: t\n---\nCaf\xe9 au lait.\n")
    with pytest.raises(
        StoryFormatError, match=r"latin\.txt:5: not UTF-8 text \(byte 0xe9 at offset 33\)"
    ):
        read_story_file(path)


def test_crlf_and_bom_are_accepted(tmp_path):
    path = tmp_path / "win.txt"
    path.write_bytes(("\ufeff" + GOOD.replace("\n", "\r\n")).encode())
    assert read_story_file(path).turns == parse_story_file(GOOD).turns
