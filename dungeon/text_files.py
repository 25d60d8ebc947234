"""Reading a user's text file: one UTF-8 decoder with one error message for every reader.

Premises, story files and corpora all say the same thing about bytes that are not UTF-8: the
file, the line, the byte and its offset, and what to do about it.
"""

from __future__ import annotations


class NotUTF8Error(ValueError):
    """A file that is not UTF-8 text; the message names the line and byte offset."""

    def __init__(self, where: str, line: int, offset: int, byte: int, fix: str):
        self.where, self.line, self.offset, self.byte = where, line, offset, byte
        super().__init__(
            f"{where}:{line}: not UTF-8 text (byte 0x{byte:02x} at offset {offset}); {fix}"
        )


def decode_utf8(data: bytes, where: str, fix: str = "save it as UTF-8") -> str:
    """``data`` as text, or NotUTF8Error naming the first bad byte's line and offset."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise NotUTF8Error(where, line, err.start, data[err.start], fix) from None
