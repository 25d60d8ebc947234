"""The piped front end of ``dungeon play``: used when stdin is not a terminal.

One action or command per line in, plain text out, so ``printf 'look around\\n/save test\\n' |
dungeon play --scenario fantasy --seed 7`` works in scripts and gives the same output for the
same seed and input. Start-up (options -> generator -> story -> session) is dungeon.startup's.
"""

from __future__ import annotations

import sys
from typing import TextIO

from dungeon import saves
from dungeon.cleanup import sanitize
from dungeon.commands import dispatch
from dungeon.config import PlayOptions
from dungeon.scenarios import find_scenario
from dungeon.session import Session
from dungeon.startup import (
    DEFAULT_SCENARIO,
    StartError,
    build_generator,
    open_session,
    scenario_start,
    start_from_options,
    user_scenario_dirs,
)


class PlainOutput:
    """Plain text: story and player lines to stdout, system messages too, errors to stderr."""

    def __init__(self, stdout: TextIO | None = None, stderr: TextIO | None = None):
        self.stdout = stdout or sys.stdout
        self.stderr = stderr or sys.stderr
        self._open = False

    def story(self, text: str) -> None:
        self.end_story()
        print(sanitize(text), file=self.stdout, flush=True)

    def story_piece(self, text: str) -> None:
        self.stdout.write(sanitize(text))
        self.stdout.flush()
        self._open = True

    def end_story(self) -> None:
        if self._open:
            self.stdout.write("\n")
            self.stdout.flush()
            self._open = False

    def player(self, text: str) -> None:
        self.end_story()
        print(f"\n> {sanitize(text)}", file=self.stdout, flush=True)

    def system(self, text: str) -> None:
        self.end_story()
        print(f"[{sanitize(text)}]", file=self.stdout, flush=True)

    def error(self, text: str) -> None:
        self.end_story()
        print(f"error: {sanitize(text)}", file=self.stderr, flush=True)


def run_piped(
    opts: PlayOptions, stdin: TextIO | None = None, out: PlainOutput | None = None
) -> int:
    """Play from a pipe: one action or command per line, plain text out."""
    stdin = stdin or sys.stdin
    out = out or PlainOutput()
    try:
        start = start_from_options(opts, default_scenario=DEFAULT_SCENARIO, fresh_slot=False)
    except (StartError, saves.SaveError, ValueError) as err:
        out.error(str(err))
        return 2
    assert start is not None  # a default scenario always gives a start
    generator = build_generator(opts)
    session = open_session(generator, start, opts, out, restart=_restart(opts))
    if not session.game.story.turns:
        out.story(session.game.story.premise)
    for line in stdin:
        dispatch(session, line.rstrip("\n"))
        if session.quit:
            break
    session.autosave()
    return 0


def _restart(opts: PlayOptions):
    """``/new [SCENARIO]`` in a pipe: the named (or the options') scenario, in the autosave."""

    def restart(session: Session, name: str) -> None:
        chosen = find_scenario(name or opts.scenario or DEFAULT_SCENARIO, user_scenario_dirs())
        start = scenario_start(chosen, opts.seed, fresh_slot=False)
        session.replace_story(start.story, start.sampling)
        session.slot = start.slot
        session.out.story(session.game.story.premise)

    return restart
