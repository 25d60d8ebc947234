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
import re
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prompt_toolkit import PromptSession
from prompt_toolkit.application import run_in_terminal
from prompt_toolkit.completion import WordCompleter
from prompt_toolkit.history import InMemoryHistory
from prompt_toolkit.input import Input
from prompt_toolkit.key_binding import KeyBindings
from prompt_toolkit.output import Output, create_output

from dungeon import saves
from dungeon.cleanup import sanitize
from dungeon.commands import REGISTRY, dispatch, parse_input
from dungeon.config import PlayOptions
from dungeon.generator import Generator
from dungeon.paths import data_dir
from dungeon.scenarios import Scenario, find_scenario
from dungeon.session import Session, new_slot, slot_path
from dungeon.startup import (
    Start,
    StartError,
    available_scenarios,
    build_generator,
    fresh_seed,
    last_save,
    load_start,
    open_session,
    premise_story,
    scenario_start,
    start_from_options,
    user_scenario_dirs,
)
from dungeon.terminal_input import CommandCompleter, LoadingStatus, input_history, keys_not_echoed
from dungeon.terminal_output import TerminalOutput
from dungeon.wrap import WordWrapper

HINT = (
    "Type what you do, or /help for the commands. Alt-Enter (or Esc Enter): new line, "
    "Tab: complete, Ctrl-C: cancel, Ctrl-D: save and quit."
)
MAX_INPUT_FAILURES = 3


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
# The start menu


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

        @keys.add("escape", "right")
        def _next(event) -> None:
            self._flip_from_prompt(event, +1)

        @keys.add("escape", "left")
        def _previous(event) -> None:
            self._flip_from_prompt(event, -1)

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
            self.session = open_session(
                generator, start, self.opts, self.out, edit=self.edit, restart=self.restart
            )
        except ValueError as err:
            self.out.error(one_line(err, 400))
            return 2
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
        start = start_from_options(self.opts)
        return start if start is not None else self.start_menu(allow_continue=True)

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
        session.show_recent()
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
            with self.out.thinking(), keys_not_echoed(self.input is None and sys.stdin.isatty()):
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

    # --- candidates -----------------------------------------------------------------------
    def flip(self, step: int) -> None:
        """Show the next (or previous) response of the last turn; it becomes the story's."""
        session = self.session
        if session is None or not session.game.story.turns:
            return
        turn = session.game.story.turns[-1]
        if len(turn.candidates) < 2:
            self.out.system("(the last turn has one response; /retry writes another)")
            return
        turn = session.game.choose((turn.chosen + step) % len(turn.candidates))
        self.out.system(f"Response {turn.chosen + 1} of {len(turn.candidates)}:")
        self.out.story(turn.response)

    def _flip_from_prompt(self, event, step: int) -> None:
        """Alt-Left/Right at the prompt: flip above it, keep what is typed, refresh the bar."""

        def show() -> None:
            try:
                self.flip(step)
            except Exception as err:  # a key press must never end the game
                self.out.error(f"Cannot flip: {one_line(err)}")
            self._status = self._status_line()

        run_in_terminal(show)

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
            start = load_start(name)
            saved = time.localtime(slot_path(name).stat().st_mtime)
        except (saves.SaveError, OSError, ValueError) as err:
            self.out.error(f"The last save cannot be continued: {one_line(err)}")
            return []
        story = start.story
        when = time.strftime("%Y-%m-%d %H:%M", saved)
        label = f"{story.title or name} ({turns(len(story.turns))}, saved {when} as {name})"
        return [_Choice("", "continue", label, lambda: start)]

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

    def _start_scenario(self, sc: Scenario) -> Start:
        return scenario_start(sc, self.opts.seed)

    def _start_custom(self) -> Start | None:
        text = self.edit(
            "Write the opening of your story: who you are, where you are, what is at stake",
            "",
        )
        if not sanitize(text or "").strip():
            return None
        try:
            story = premise_story(text or "", fresh_seed(self.opts.seed), where="That premise")
        except StartError as err:
            self.out.error(one_line(err))
            return None
        return Start(story, {}, new_slot("custom"))

    # --- the toolbar ----------------------------------------------------------------------
    def _toolbar(self) -> list[tuple[str, str]]:
        return self._status

    def _status_line(self) -> list[tuple[str, str]]:
        """Model, turn, context tokens, temperature and what you carry; once per prompt."""
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
            last = game.story.turns[-1] if game.story.turns else None
            model = sanitize(model)
            dim = "class:bottom-toolbar.dim"
            width = self.out.width()
            flips = last is not None and len(last.candidates) > 1
            which = f"{last.chosen + 1}/{len(last.candidates)}" if flips else ""
            full = [model, f"turn {turn}", f"context {context} tokens", f"temp {temp}"]
            carrying = len(game.story.state.inventory)
            full += [f"carrying {carrying}"] if carrying else []
            if flips:
                new = f", {len(last.ready)} new" if last.ready else ""
                full.append(f"response {which}{new} Alt-←/→")
            hint = "   /help  Ctrl-D quit "
            if sum(len(p) + 3 for p in full) + len(hint) > width:  # a narrow terminal
                hint = ""
                if sum(len(p) + 3 for p in full) > width:
                    model = model if len(model) <= 20 else "…" + model[-19:]
                    full = [model, f"turn {turn}", f"ctx {context}", f"temp {temp}"]
                    full += [f"inv {carrying}"] if carrying else []
                    full += [f"resp {which}"] if flips else []
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
