"""Word wrapping for streamed text: pieces in, wrapped text out, as early as it is safe.

The terminal front end feeds the model's text to a ``WordWrapper`` token by token. A word is
held back only until it is complete (the next space or newline shows where it ends), because
only then is it known whether it still fits on the line. Pure: no terminal, no I/O::

    w = WordWrapper(width=20)
    out = w.feed("The torchlight flick") + w.feed("ers across the walls.") + w.finish()
"""

from __future__ import annotations

from prompt_toolkit.utils import get_cwidth


class WordWrapper:
    """Wraps a stream of text at word boundaries to ``width`` terminal cells.

    ``feed`` returns the text that can be shown now (with line breaks added); ``finish``
    returns the rest. Explicit newlines are kept, and spaces at the start of an explicit line
    (indentation) too; spaces where a line was wrapped are dropped. Wrapped lines start with
    ``indent``. A word longer than a line is broken. Wide characters count as two cells.

    With ``hang``, a wrapped line lines up under the text that follows the line's indentation
    or its last run of two or more spaces (so two-column lists such as a help text stay
    aligned), as long as that is in the first two thirds of the line.
    """

    def __init__(self, width: int, *, indent: str = "", column: int = 0, hang: bool = False):
        self.indent = indent
        self.width = max(width, get_cwidth(indent) + 8)
        self.column = column
        """Cells used on the current line, counting what the caller wrote before the stream."""
        self.hang = hang
        self._cont = indent  # what a wrapped line starts with
        self._word = ""
        self._word_cells = 0
        self._spaces = 0
        self._wrapped_line = False  # the current line began at a wrap, not at a newline

    def feed(self, text: str) -> str:
        out: list[str] = []
        for ch in text:
            if ch == "\n":
                out.append(self._flush_word())
                out.append("\n")
                self.column, self._spaces, self._wrapped_line = 0, 0, False
                self._cont = self.indent
            elif ch.isspace():
                out.append(self._flush_word())
                self._spaces += 1
            else:
                self._word += ch
                self._word_cells += get_cwidth(ch)
                if self._word_cells > self.width - get_cwidth(self._cont):
                    out.append(self._break_long_word())
        return "".join(out)

    def finish(self) -> str:
        """The held-back word; trailing spaces are dropped. The wrapper can be fed again."""
        out = self._flush_word()
        self._spaces = 0
        return out

    # --- inside ---------------------------------------------------------------------------
    def _new_line(self) -> str:
        self.column = get_cwidth(self._cont)
        self._spaces, self._wrapped_line = 0, True
        return "\n" + self._cont

    def _at_line_start(self) -> bool:
        return self.column == 0 or (self._wrapped_line and self.column == get_cwidth(self._cont))

    def _flush_word(self) -> str:
        if not self._word:
            return ""
        out = ""
        spaces = 0 if (self._wrapped_line and self._at_line_start()) else self._spaces
        if not self._at_line_start() and self.column + spaces + self._word_cells > self.width:
            out, spaces = self._new_line(), 0
        out += " " * spaces + self._word
        self.column += spaces + self._word_cells
        column_before_word = self.column - self._word_cells
        gap = spaces >= 2 or (spaces and column_before_word == spaces)
        if (
            self.hang
            and not self._wrapped_line
            and gap
            and column_before_word <= self.width * 2 // 3
        ):
            self._cont = " " * column_before_word
        self._word, self._word_cells, self._spaces = "", 0, 0
        return out

    def _break_long_word(self) -> str:
        """Emit the front of a word wider than a line, one full line at a time."""
        out = self._new_line() if not self._at_line_start() else ""
        self._spaces = 0
        room = self.width - self.column
        while self._word_cells > room:
            cells, cut = 0, 0
            for i, ch in enumerate(self._word):
                w = get_cwidth(ch)
                if cells + w > room:
                    break
                cells, cut = cells + w, i + 1
            cut = max(cut, 1)  # a character wider than the room still has to go somewhere
            piece, self._word = self._word[:cut], self._word[cut:]
            self._word_cells -= sum(get_cwidth(c) for c in piece)
            out += piece + self._new_line()
            room = self.width - self.column
        return out
