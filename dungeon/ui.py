"""The interactive terminal game, ``dungeon play``, on prompt_toolkit: start menu to last save.

This is the only module that touches the terminal. ``run_interactive(opts)`` shows the start
menu (or starts what --scenario, --premise or --load ask for), loads the model with a status
line on stderr, then reads actions and ``/commands`` until Ctrl-D or /quit:

- story text streams as it is written, wrapped to the terminal width (``dungeon.wrap``);
- a bottom toolbar shows the model, the turn, the context tokens and the temperature;
- input has history (in the user data folder), Tab completion of commands and their
  arguments, Alt-Enter for a new line and Ctrl-X Ctrl-E for $EDITOR;
- the Session autosaves every turn; Ctrl-C cancels a turn (the story stays as it was) or
  clears the line at the prompt; a bug in one turn is shown in one line and its traceback
  goes to ``data_dir()/dungeon.log``, and the game goes on.

Tests drive it with prompt_toolkit's pipe input and a dummy output::

    with create_pipe_input() as inp:
        inp.send_text("look around\\r/quit\\r")
        run_interactive(PlayOptions(model="fake", scenario="fantasy"), input=inp,
                        output=DummyOutput())
"""

from __future__ import annotations

import os
import random
import re
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from prompt_toolkit import PromptSession, print_formatted_text
from prompt_toolkit.completion import Completer, Completion, WordCompleter
from prompt_toolkit.formatted_text import FormattedText
from prompt_toolkit.history import FileHistory, History, InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.output import ColorDepth, Output, create_output
from prompt_toolkit.styles import Style

from dungeon import saves
from dungeon.cleanup import sanitize
from dungeon.commands import REGISTRY, Registry, UnknownCommand, dispatch, parse_input
from dungeon.config import PlayOptions
from dungeon.generator import Generator
from dungeon.paths import data_dir
from dungeon.play import (
    MAX_PREMISE_BYTES,
    StartError,
    build_generator,
    last_save,
    make_game,
    model_info,
    start_story,
    user_scenario_dirs,
)
from dungeon.scenarios import (
    Scenario,
    ScenarioError,
    builtin_scenarios,
    find_scenario,
    load_scenario_file,
)
from dungeon.session import Session, check_slot, saves_dir
from dungeon.story import Story
from dungeon.wrap import WordWrapper

HINT = (
    "Type what you do, or /help for the commands. Alt-Enter (or Esc Enter): new line, "
    "Tab: complete, Ctrl-C: cancel, Ctrl-D: save and quit."
)
SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
SPINNER_ASCII = "-\\|/"
MAX_INPUT_FAILURES = 3


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


def log_path() -> Path:
    return data_dir() / "dungeon.log"


def log_error(what: str) -> Path:
    """Append the exception being handled to the log file; returns its path."""
    path = log_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > 1_000_000:
            path.replace(path.with_suffix(".log.1"))
        with path.open("a", encoding="utf-8") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {what}\n{traceback.format_exc()}\n")
    except OSError:
        pass  # the log is a help, not a reason to stop the game
    return path


def turns(n: int) -> str:
    return f"{n} turn" if n == 1 else f"{n} turns"


def one_line(err: BaseException, limit: int = 200) -> str:
    text = " ".join(sanitize(str(err)).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------
# Output


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


# ---------------------------------------------------------------------------------------------
# Input helpers


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
def _keys_not_echoed(enabled: bool) -> Iterator[None]:
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


# ---------------------------------------------------------------------------------------------
# Starting a story


@dataclass
class Start:
    """What the game starts with: a story, its saved sampling settings and its save slot."""

    story: Story
    sampling: dict
    slot: str
    continued: bool = False


def new_slot(base: str) -> str:
    """A fresh save slot for a new story, so that starting one never overwrites another."""
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", base).strip("-._")[:40] or "story"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name, n = f"{base}-{stamp}", 2
    while (saves_dir() / f"{name}.json").exists():
        name, n = f"{base}-{stamp}-{n}", n + 1
    return check_slot(name)


def available_scenarios() -> tuple[dict[str, Scenario], list[str]]:
    """Built-in and user scenarios by name, and the problems of any that cannot be read."""
    problems: list[str] = []
    try:
        found = dict(builtin_scenarios())
    except (OSError, ValueError) as err:
        found = {}
        problems.append(f"cannot read the built-in scenarios: {one_line(err)}")
    for folder in user_scenario_dirs():
        for path in sorted(Path(folder).glob("*.json")):
            try:
                sc = load_scenario_file(path)
            except ScenarioError as err:
                problems.append(one_line(err))
                continue
            found[sc.name] = sc
    return found, problems


@dataclass
class _Choice:
    key: str
    name: str
    label: str
    start: Callable[[], Start | None]


# ---------------------------------------------------------------------------------------------
# The game


class TerminalGame:
    """The start menu and the input loop over one Session."""

    def __init__(
        self, opts: PlayOptions, *, input: Input | None = None, output: Output | None = None
    ):
        self.opts = opts
        color = opts.color and not os.environ.get("NO_COLOR")
        self.output = output or create_output()
        self.input = input
        self.out = TerminalOutput(self.output, color=color)
        self.session: Session | None = None
        self._status: list[tuple[str, str]] = []
        common = dict(
            input=input,
            output=self.output,
            style=self.out.style,
            color_depth=self.out.color_depth,
            erase_when_done=True,
            include_default_pygments_style=False,
        )
        keys = KeyBindings()

        @keys.add("escape", "enter")
        def _newline(event) -> None:
            event.current_buffer.insert_text("\n")

        self.prompt: PromptSession[str] = PromptSession(
            history=input_history(),
            completer=CommandCompleter(REGISTRY, lambda: self.session),
            complete_while_typing=True,
            key_bindings=keys,
            enable_open_in_editor=True,
            bottom_toolbar=self._toolbar,
            prompt_continuation="  ",
            **common,
        )
        self.editor: PromptSession[str] = PromptSession(
            multiline=True,
            history=InMemoryHistory(),
            enable_open_in_editor=True,
            bottom_toolbar=" Alt-Enter (or Esc Enter): done · Ctrl-C: cancel · "
            "Ctrl-X Ctrl-E: $EDITOR ",
            prompt_continuation="",
            **common,
        )
        self.menu: PromptSession[str] = PromptSession(history=InMemoryHistory(), **common)

    # --- top level ------------------------------------------------------------------------
    def run(self) -> int:
        try:
            start = self.choose_start()
        except (StartError, saves.SaveError, ValueError) as err:
            self.out.error(one_line(err, 400))
            return 2
        except KeyboardInterrupt:
            return 130
        if start is None:
            return 0
        generator = self.load_model()
        if generator is None:
            return 1
        try:
            game = make_game(generator, start.story, self.opts, start.sampling)
        except ValueError as err:
            self.out.error(one_line(err, 400))
            return 2
        self.session = Session(
            game,
            self.out,
            model_info(generator, self.opts),
            slot=start.slot,
            edit=self.edit,
            restart=self.restart,
        )
        self.show_opening(continued=start.continued)
        code = self.loop()
        try:
            path = self.session.save()
        except (saves.SaveError, OSError, ValueError) as err:
            self.out.error(f"could not save the game: {one_line(err)}")
            return 1
        self.out.system(f"Saved as {self.session.slot} ({path}). Goodbye.")
        return code

    def choose_start(self) -> Start | None:
        """What the flags ask for, or the start menu when they ask for nothing."""
        opts = self.opts
        if not (opts.load or opts.premise_file or opts.scenario):
            return self.start_menu(allow_continue=True)
        story, sampling = start_story(opts)
        if opts.load:
            return Start(story, sampling, check_slot(opts.load), continued=True)
        base = Path(opts.premise_file).stem if opts.premise_file else Path(opts.scenario or "").stem
        return Start(story, sampling, new_slot(base))

    def load_model(self) -> Generator | None:
        status = LoadingStatus(f"Loading the model {self.opts.model}…")
        try:
            with status:
                return build_generator(self.opts, progress=status)
        except KeyboardInterrupt:
            self.out.error("Cancelled while loading the model.")
        except Exception as err:
            log = log_error(f"loading the model {self.opts.model}")
            self.out.error(f"Cannot load the model {self.opts.model}: {one_line(err, 400)}")
            self.out.system(f"(details in {log})")
        return None

    def show_opening(self, continued: bool) -> None:
        session = self.session
        assert session is not None
        story = session.game.story
        if story.title:
            self.out.heading(story.title)
        if continued:
            self.out.system(f"Continuing {session.slot}: {turns(len(story.turns))} so far.")
        if len(story.turns) <= 2:
            self.out.story(story.premise)
        for turn in story.turns[-2:]:
            if turn.action:
                self.out.player(turn.action)
            self.out.story(turn.response)
        self.out.system(HINT)

    # --- the loop -------------------------------------------------------------------------
    def loop(self) -> int:
        """Read and run lines until /quit or Ctrl-D. Returns the exit status."""
        session = self.session
        assert session is not None
        failures = 0
        while not session.quit:
            try:
                line = self.read_line()
                failures = 0
            except KeyboardInterrupt:
                continue  # Ctrl-C at the prompt clears the line
            except EOFError:
                break
            except Exception as err:
                failures += 1
                log = log_error("reading input")
                self.out.error(
                    f"Something went wrong reading the input: {one_line(err)} (details in {log})"
                )
                if failures >= MAX_INPUT_FAILURES:
                    self.out.error("The input keeps failing; saving and leaving.")
                    return 1
                continue
            try:
                self.run_line(line)
            except KeyboardInterrupt:
                continue  # a second Ctrl-C while the first one was being handled
        return 0

    def read_line(self) -> str:
        self._status = self._status_line()
        self.out.before_prompt()
        return self.prompt.prompt([("class:prompt", "> ")])

    def run_line(self, line: str) -> None:
        """Run one line of input; whatever happens, the game goes on."""
        session = self.session
        assert session is not None
        if parse_input(line).kind == "command":
            self.out.echo(line)
        try:
            with self.out.thinking(), _keys_not_echoed(self.input is None and sys.stdin.isatty()):
                dispatch(session, line)
        except KeyboardInterrupt:
            self.out.end_story()
            self.out.system("(interrupted)")
        except Exception as err:
            self.out.end_story()
            log = log_error(f"running {line!r}")
            self.out.error(
                f"Something went wrong: {type(err).__name__}: {one_line(err)} "
                f"(the story is safe; details in {log})"
            )

    # --- Session hooks --------------------------------------------------------------------
    def edit(self, title: str, text: str) -> str | None:
        """Multi-line editing of ``text``; None when cancelled (Session.edit).

        The editor breaks long lines anywhere, so a one-paragraph text is shown wrapped at
        words, and the line breaks in the result are read as spaces (blank lines are kept).
        """
        soft = "\n" not in text
        if soft and text:
            w = WordWrapper(self.out.width() - 1)
            text = w.feed(text) + w.finish()
        with self.out.paused():
            self.out.system(f"{title} (Alt-Enter or Esc Enter when done, Ctrl-C to cancel):")
            self.out.before_prompt(gap=False)
            try:
                result = self.editor.prompt("", default=text)
            except (KeyboardInterrupt, EOFError):
                return None
        if soft:
            paragraphs = re.split(r"\n[ \t]*\n", result)
            result = "\n\n".join(" ".join(p.split()) for p in paragraphs if p.strip())
        return result

    def restart(self, session: Session, name: str) -> None:
        """/new [SCENARIO]: a new story in a fresh save slot (Session.restart)."""
        with self.out.paused():
            if name:
                sc = find_scenario(name, user_scenario_dirs())
                start: Start | None = self._start_scenario(sc)
            else:
                start = self.start_menu(allow_continue=False)
        if start is None:
            self.out.system("(no new story; carrying on with this one)")
            return
        session.replace_story(start.story, start.sampling)
        session.slot = start.slot
        self.show_opening(continued=False)

    # --- the start menu -------------------------------------------------------------------
    def start_menu(self, allow_continue: bool) -> Start | None:
        """Continue the last game, pick a scenario, or write a premise; None when cancelled."""
        choices: list[_Choice] = []
        if allow_continue:
            choices += self._continue_choice()
        scenarios, problems = available_scenarios()
        for problem in problems:
            self.out.error(problem)
        for sc in scenarios.values():
            label = f"{sc.title}: {sc.description}" if sc.title else sc.description
            choices.append(_Choice("", sc.name, label, lambda sc=sc: self._start_scenario(sc)))
        for i, c in enumerate(choices, start=1):
            c.key = str(i)
        choices.append(_Choice("c", "custom", "Write your own opening", self._start_custom))
        default = choices[0]
        completer = WordCompleter([c.name for c in choices], ignore_case=True)
        while True:
            self._show_menu(choices)
            self.out.before_prompt()
            try:
                answer = self.menu.prompt(
                    [("class:prompt", f"Your choice [{default.key}]: ")], completer=completer
                )
            except (KeyboardInterrupt, EOFError):
                return None
            choice = default if not answer.strip() else self._match(answer, choices)
            if choice is None:
                self.out.error(
                    f"{answer.strip()!r} is not on the list: type a number, a name or c."
                )
                continue
            start = choice.start()
            if start is not None:
                return start

    def _continue_choice(self) -> list[_Choice]:
        name = last_save()
        if name is None:
            return []
        try:
            data = saves.load(saves_dir() / f"{name}.json")
        except (saves.SaveError, OSError, ValueError) as err:
            self.out.error(f"The last save cannot be continued: {one_line(err)}")
            return []
        title = data.story.title or name
        saved = time.strftime(
            "%Y-%m-%d %H:%M", time.localtime((saves_dir() / f"{name}.json").stat().st_mtime)
        )
        label = f"{title} ({turns(len(data.story.turns))}, saved {saved} as {name})"
        return [
            _Choice("", "continue", label, lambda: Start(data.story, data.sampling, name, True))
        ]

    def _show_menu(self, choices: list[_Choice]) -> None:
        name_width = max(len(c.name) for c in choices)
        column = 2 + 2 + 2 + name_width + 2
        lines: list[tuple[str, str]] = [("class:title", "How would you like to begin?\n")]
        for c in choices:
            w = WordWrapper(self.out.width(), indent=" " * column, column=column)
            lines += [
                ("", "  "),
                ("class:menu.key", f"{c.key:>2}"),
                ("", "  "),
                ("class:menu.name", f"{c.name:<{name_width}}"),
                ("", "  "),
                ("", w.feed(c.label) + w.finish() + "\n"),
            ]
        self.out.fragments(lines)

    @staticmethod
    def _match(answer: str, choices: list[_Choice]) -> _Choice | None:
        answer = answer.strip().lower()
        for c in choices:
            if answer in (c.key, c.name.lower()):
                return c
        starts = [c for c in choices if c.name.lower().startswith(answer)]
        return starts[0] if len(starts) == 1 else None

    def _seed(self) -> int:
        return (
            self.opts.seed if self.opts.seed is not None else random.SystemRandom().randrange(2**31)
        )

    def _start_scenario(self, sc: Scenario) -> Start:
        return Start(sc.start(self._seed()), {}, new_slot(sc.name))

    def _start_custom(self) -> Start | None:
        text = self.edit(
            "Write the opening of your story: who you are, where you are, what is at stake",
            "",
        )
        premise = sanitize(text or "").strip()
        if not premise:
            return None
        if len(premise.encode("utf-8")) > MAX_PREMISE_BYTES:
            self.out.error("That premise is too long (at most 100 KB).")
            return None
        return Start(Story(premise=premise, seed=self._seed()), {}, new_slot("custom"))

    # --- the toolbar ----------------------------------------------------------------------
    def _toolbar(self) -> list[tuple[str, str]]:
        return self._status

    def _status_line(self) -> list[tuple[str, str]]:
        """Model, turn, context tokens and temperature; computed once per prompt."""
        session = self.session
        if session is None:
            return []
        try:
            game = session.game
            info = session.model_info
            model = str(info.get("name") or info.get("model") or "?")
            try:
                ctx = game.context_preview()
            except Exception:
                ctx = game.last_context
            context = f"{ctx.tokens}/{ctx.budget}" if ctx is not None else "?"
            turn, temp = len(game.story.turns), f"{game.sampling.temperature:g}"
            model = sanitize(model)
            dim = "class:bottom-toolbar.dim"
            width = self.out.width()
            full = [model, f"turn {turn}", f"context {context} tokens", f"temp {temp}"]
            hint = "   /help  Ctrl-D quit "
            if sum(len(p) + 3 for p in full) + len(hint) > width:  # a narrow terminal
                hint = ""
                if sum(len(p) + 3 for p in full) > width:
                    model = model if len(model) <= 20 else "…" + model[-19:]
                    full = [model, f"turn {turn}", f"ctx {context}", f"temp {temp}"]
            out: list[tuple[str, str]] = [("", " ")]
            for i, part in enumerate(full):
                if i:
                    out.append((dim, " │ "))
                out.append(("", part))
            if hint:
                out.append((dim, hint))
            return out
        except Exception:
            return [("", " dungeon ")]


def run_interactive(
    opts: PlayOptions, *, input: Input | None = None, output: Output | None = None
) -> int:
    """Play in the terminal (or on the given prompt_toolkit input and output, for tests)."""
    return TerminalGame(opts, input=input, output=output).run()
