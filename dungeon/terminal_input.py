"""Terminal input for ``dungeon play``: command completion, input history, the loading
status line and quiet type-ahead while a turn runs. The input loop itself is in dungeon.ui.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from prompt_toolkit.completion import Completer, Completion
from prompt_toolkit.history import FileHistory, History, InMemoryHistory

from dungeon.cleanup import sanitize
from dungeon.commands import REGISTRY, Registry, UnknownCommand
from dungeon.paths import data_dir
from dungeon.session import Session
from dungeon.terminal_output import SPINNER


class CommandCompleter(Completer):
    """Tab completion of ``/commands`` (names and aliases) and of their first argument."""

    def __init__(
        self, registry: Registry = REGISTRY, session: Callable[[], Session | None] = lambda: None
    ):
        self.registry = registry
        self.session = session

    def get_completions(self, document, complete_event):
        try:
            yield from self._completions(document.text_before_cursor)
        except Exception:
            return  # completion is a convenience: a bug in it must never break typing

    def _completions(self, text: str) -> Iterator[Completion]:
        if not text.startswith("/") or text.startswith("//") or "\n" in text:
            return
        head, space, rest = text[1:].partition(" ")
        if not space:
            low = head.lower()
            seen = set()
            for name, c in self.registry.commands.items():
                if name.startswith(low):
                    seen.add(name)
                    yield Completion("/" + name, -len(text), display_meta=c.help)
            for alias, target in self.registry.aliases.items():
                if alias.startswith(low) and target not in seen:
                    yield Completion("/" + alias, -len(text), display_meta=f"= /{target}")
            return
        try:
            command = self.registry.find(head)
        except UnknownCommand:
            return
        if command.arguments is None or " " in rest:
            return  # only the first argument is completed
        for option in command.arguments(self.session()):
            if option.lower().startswith(rest.lower()):
                yield Completion(option, -len(rest))


class _SafeFileHistory(FileHistory):
    """A FileHistory that keeps going (in memory) when the file cannot be written."""

    def store_string(self, string: str) -> None:
        try:
            super().store_string(string)
        except OSError:
            pass


def input_history() -> History:
    path = data_dir() / "history"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return _SafeFileHistory(str(path))
    except OSError:
        return InMemoryHistory()


class LoadingStatus:
    """One status line on stderr while the model loads; a spinner where stderr is a terminal.

    The instance is also the ``progress`` callback of ``build_generator``: it takes whatever
    it is given (a message, perhaps more) and never raises, and the spinner runs whether or
    not the loader ever calls it.
    """

    def __init__(self, message: str, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.message = message
        try:
            self.tty = self.stream.isatty()
        except Exception:
            self.tty = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __call__(self, *args, **kwargs) -> None:
        try:
            text = " ".join(sanitize(" ".join(str(a) for a in args[:1])).split())[:200]
            if not text:
                return
            with self._lock:
                self.message = text
            if not self.tty:
                self._put(text + "\n")
        except Exception:
            pass

    def __enter__(self) -> LoadingStatus:
        if self.tty:
            self._thread = threading.Thread(target=self._spin, name="loading", daemon=True)
            self._thread.start()
        else:
            self._put(self.message + "\n")
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
            self._put("\r\x1b[K")

    def _spin(self) -> None:
        frame = 0
        while not self._stop.wait(0.1):
            with self._lock:
                message = self.message
            self._put(f"\r\x1b[K{SPINNER[frame % len(SPINNER)]} {message}")
            frame += 1

    def _put(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except Exception:
            pass


@contextmanager
def keys_not_echoed(enabled: bool) -> Iterator[None]:
    """While a turn runs, keys typed ahead are kept for the next prompt but not echoed into
    the story (nor is ^C). Ctrl-C still interrupts: only ECHO is turned off."""
    if not enabled:
        yield
        return
    try:
        import termios

        fd = sys.stdin.fileno()
        old = termios.tcgetattr(fd)
        new = termios.tcgetattr(fd)
        new[3] &= ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSANOW, new)
    except Exception:
        yield
        return
    try:
        yield
    finally:
        try:
            termios.tcsetattr(fd, termios.TCSANOW, old)
        except Exception:
            pass
