"""The terminal renderer of ``dungeon play``: wrapped, coloured story text on prompt_toolkit.

``TerminalOutput`` implements ``dungeon.session.Output`` for a real terminal (or any
prompt_toolkit output, such as ``DummyOutput`` in tests): story text wrapped at words as it
streams, player lines, system messages and errors in their colours, and a small spinner on an
empty line while the model thinks. The input loop lives in ``dungeon.ui``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prompt_toolkit import print_formatted_text
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.output import ColorDepth, Output
from prompt_toolkit.styles import Style

from dungeon.cleanup import sanitize
from dungeon.wrap import WordWrapper

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
SPINNER_ASCII = "-\\|/"


def make_style(color: bool) -> Style:
    rules = {
        "story": "",
        "title": "bold",
        "player": "ansicyan bold",
        "echo": "ansibrightblack",
        "system": "ansiyellow",
        "error": "ansired bold",
        "thinking": "ansibrightblack",
        "prompt": "ansicyan bold",
        "menu.key": "ansicyan bold",
        "menu.name": "bold",
    }
    if color:  # without colours, prompt_toolkit's reverse-video toolbar stays readable
        rules["bottom-toolbar"] = "noreverse bg:#303030 #c8c8c8"
        rules["bottom-toolbar.dim"] = "#8a8a8a"
    return Style.from_dict(rules)


class TerminalOutput:
    """``dungeon.session.Output`` on a prompt_toolkit output: wrapped, coloured text.

    Story text from the Game is already sanitized and is shown as it is; everything else
    (system messages, errors, echoed commands) is sanitized here. While a line of input runs,
    ``thinking()`` shows a small spinner on an empty line until the first text arrives.
    """

    def __init__(self, output: Output, *, color: bool = True):
        self.output = output
        self.style = make_style(color)
        self.color_depth = None if color else ColorDepth.DEPTH_1_BIT
        self._lock = threading.RLock()
        self._stream: WordWrapper | None = None  # the story block being streamed
        self._stream_started = False
        self._trailing = 2  # newlines at the end of the output so far (2: after a blank line)
        self._last = ""  # kind of the last block, for spacing
        self._mark = False  # the thinking spinner is on the screen
        self._last_write = 0.0
        self._spinner: tuple[threading.Thread, threading.Event] | None = None
        try:
            utf8 = self.output.encoding().lower().replace("-", "") == "utf8"
        except Exception:
            utf8 = False
        self._frames = SPINNER if utf8 else SPINNER_ASCII

    # --- the Output protocol ----------------------------------------------------------------
    def story(self, text: str) -> None:
        with self._lock:
            self._begin("story", gap=True)
            w = WordWrapper(self.width())
            self._write("class:story", w.feed(text.strip()) + w.finish() + "\n")

    def story_piece(self, text: str) -> None:
        with self._lock:
            if self._stream is None:
                self._begin("story", gap=True)
                self._stream, self._stream_started = WordWrapper(self.width()), False
            if not self._stream_started:
                text = text.lstrip()
                if not text:
                    return
                self._stream_started = True
            self._write("class:story", self._stream.feed(text))

    def end_story(self) -> None:
        with self._lock:
            self._close_stream()

    def player(self, text: str) -> None:
        with self._lock:
            self._begin("player", gap=True)
            self._write("class:player", "> " + self._wrap(text, indent="  ", column=2) + "\n")

    def system(self, text: str) -> None:
        self._message("system", text)

    def error(self, text: str) -> None:
        self._message("error", text)

    # --- more for the terminal ----------------------------------------------------------
    def echo(self, line: str) -> None:
        """A command as the player typed it (the prompt line is erased when it is done)."""
        with self._lock:
            self._begin("echo", gap=True)
            text = " ".join(sanitize(line).split())
            self._write("class:echo", "> " + self._wrap(text, indent="  ", column=2) + "\n")

    def heading(self, text: str) -> None:
        with self._lock:
            self._begin("heading", gap=True)
            self._write("class:title", self._wrap(sanitize(text).strip()) + "\n")

    def fragments(self, fragments: list[tuple[str, str]], gap: bool = True) -> None:
        """Preformatted (style, text) pieces, sanitized; for the start menu."""
        with self._lock:
            self._begin("fragments", gap=gap)
            self._print([(style, sanitize(text)) for style, text in fragments])

    def before_prompt(self, gap: bool = True) -> None:
        """End any open line and (with ``gap``) leave a blank line above the prompt."""
        with self._lock:
            self._begin("prompt", gap=gap)

    def width(self) -> int:
        try:
            columns = self.output.get_size().columns
        except Exception:
            columns = 80
        return max(20, columns - 1)

    @contextmanager
    def thinking(self) -> Iterator[None]:
        """Show a spinner on an empty line while the body runs and prints nothing."""
        self._start_spinner()
        try:
            yield
        finally:
            self._stop_spinner()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """Stop the spinner for a while (to read input in the middle of a command)."""
        running = self._spinner is not None
        self._stop_spinner()
        try:
            yield
        finally:
            if running:
                self._start_spinner()

    # --- inside ---------------------------------------------------------------------------
    def _message(self, kind: str, text: str) -> None:
        with self._lock:
            self._begin(kind, gap=self._last not in ("echo", "system", "error", "fragments"))
            self._write(f"class:{kind}", self._wrap(sanitize(text).rstrip(), hang=True) + "\n")

    def _wrap(self, text: str, indent: str = "", column: int = 0, hang: bool = False) -> str:
        w = WordWrapper(self.width(), indent=indent, column=column, hang=hang)
        return w.feed(text) + w.finish()

    def _begin(self, kind: str, gap: bool) -> None:
        self._close_stream()
        want = 2 if gap else 1
        if self._trailing < want:
            self._write("", "\n" * (want - self._trailing))
        self._last = kind

    def _close_stream(self) -> None:
        if self._stream is not None:
            rest, self._stream = self._stream.finish(), None
            self._write("class:story", rest + "\n")

    def _write(self, style: str, text: str) -> None:
        if text:
            self._print([(style, text)])

    def _print(self, fragments: list[tuple[str, str]]) -> None:
        text = "".join(t for _, t in fragments)
        if not text:
            return
        with self._lock:
            self._clear_mark()
            self._raw_print(fragments)
            self._last_write = time.monotonic()
            body = text.rstrip("\n")
            ends = len(text) - len(body)
            self._trailing = min(2, ends if body else self._trailing + ends)

    def _raw_print(self, fragments: list[tuple[str, str]]) -> None:
        print_formatted_text(
            FormattedText(fragments),
            end="",
            style=self.style,
            output=self.output,
            color_depth=self.color_depth,
            include_default_pygments_style=False,
        )

    def _clear_mark(self) -> None:
        if self._mark:
            self._mark = False
            self.output.write("\r")
            self.output.erase_end_of_line()
            self.output.flush()

    def _start_spinner(self) -> None:
        if self._spinner is not None:
            return
        stop = threading.Event()
        thread = threading.Thread(target=self._spin, args=(stop,), name="thinking", daemon=True)
        self._spinner = (thread, stop)
        thread.start()

    def _stop_spinner(self) -> None:
        if self._spinner is None:
            return
        thread, stop = self._spinner
        self._spinner = None
        stop.set()
        thread.join(timeout=1.0)
        with self._lock:
            self._clear_mark()

    def _spin(self, stop: threading.Event) -> None:
        frame = 0
        while not stop.wait(0.08):
            with self._lock:
                quiet_for = time.monotonic() - self._last_write
                if stop.is_set() or self._stream is not None or self._trailing == 0:
                    continue  # only on an empty line: never inside the story text
                if quiet_for < 0.15:
                    continue
                try:
                    self.output.write("\r")
                    self._raw_print([("class:thinking", self._frames[frame % len(self._frames)])])
                except Exception:
                    return  # a spinner is not worth a crash
                self._mark = True
                frame += 1
