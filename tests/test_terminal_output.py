"""The terminal renderer (dungeon.terminal_output) on its own: sanitized, coloured, wrapped."""

import io
import re

from conftest import RecordingOutput
from prompt_toolkit.data_structures import Size
from prompt_toolkit.output.vt100 import Vt100_Output

from dungeon.terminal_output import TerminalOutput


def test_system_text_is_sanitized():
    out = TerminalOutput(RecordingOutput())
    out.system("bad \x1b[31mred\x07 \x9b2J name")
    assert "\x1b" not in out.output.text and "\x07" not in out.output.text
    assert "\x9b" not in out.output.text and "2J" not in out.output.text
    assert "bad red" in out.output.text


def vt100(buf: io.StringIO) -> Vt100_Output:
    return Vt100_Output(buf, lambda: Size(rows=24, columns=80), term="xterm-256color")


def test_colours_are_used_and_can_be_turned_off():
    coloured, plain = io.StringIO(), io.StringIO()
    TerminalOutput(vt100(coloured), color=True).player("You look around.")
    TerminalOutput(vt100(plain), color=False).player("You look around.")
    colour = r"\x1b\[[0-9;]*[\[;]3[0-7][;m]"  # a foreground colour in an SGR sequence
    assert re.search(colour, coloured.getvalue())
    assert not re.search(colour, plain.getvalue())
    assert "You look around." in plain.getvalue()


def test_story_text_is_wrapped_to_the_terminal_width():
    buf = io.StringIO()
    out = TerminalOutput(Vt100_Output(buf, lambda: Size(24, 30), term="xterm"), color=False)
    for word in ("The torchlight flickers across the damp stone walls of the old keep. " * 3).split(
        " "
    ):
        out.story_piece(word + " ")
    out.end_story()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buf.getvalue()).replace("\r", "")
    lines = [line for line in text.split("\n") if line]
    assert len(lines) > 3 and all(len(line) <= 29 for line in lines)
