"""``dungeon play``: what the terminal front end and the piped front end share.

Building the generator from options, starting a story (scenario, premise file, save) and the
plain-text front end used when stdin is not a terminal: one action or command per line in,
plain text out, so ``printf 'look around\\n/save test\\n' | dungeon play --scenario fantasy
--seed 7`` works in scripts and gives the same output for the same seed and input.
"""

from __future__ import annotations

import inspect
import logging
import random
import sys
from pathlib import Path
from typing import TextIO

from dungeon import saves
from dungeon.cleanup import sanitize
from dungeon.commands import dispatch
from dungeon.config import PlayOptions
from dungeon.context import ContextSettings
from dungeon.game import Game, GameSettings
from dungeon.generator import FakeGenerator, Generator
from dungeon.paths import config_dir, data_dir
from dungeon.scenarios import builtin_scenarios, find_scenario
from dungeon.session import AUTOSAVE, Session, check_slot, list_saves
from dungeon.story import Story

log = logging.getLogger(__name__)
MAX_PREMISE_BYTES = 100_000


class StartError(ValueError):
    """The game cannot start as asked; the message says what to do."""


def shipped_adapter(model: str) -> str | None:
    """The adventure adapter shipped in the package, for the built-in base it was trained on."""
    from importlib import resources

    from dungeon.config import DEFAULT_MODEL

    folder = resources.files("dungeon") / "adapters" / "adventure"
    if model == DEFAULT_MODEL and (folder / "adapter_config.json").is_file():
        return str(folder)
    return None


def build_generator(opts: PlayOptions, progress=None) -> Generator:
    """The generator the options ask for. ``fake`` needs no model (for demos and tests)."""
    if opts.model == "fake":
        return FakeGenerator(settings=opts.sampling)
    from dungeon import models  # heavy: torch and transformers

    adapter = opts.adapter
    if adapter is not None and adapter.lower() == "none":
        adapter = None
    elif adapter is None:
        adapter = shipped_adapter(opts.model)
    extra = {}
    if progress is not None and "progress" in inspect.signature(models.load_generator).parameters:
        extra["progress"] = progress  # the loader may or may not report its steps
    return models.load_generator(
        opts.model,
        adapter=adapter,
        device=opts.device,
        dtype=opts.dtype,
        threads=opts.threads,
        settings=opts.sampling,
        allow_pickle=opts.allow_pickle,
        **extra,
    )


def model_info(generator: Generator, opts: PlayOptions) -> dict:
    return {
        "name": getattr(generator, "name", opts.model),
        "model": opts.model,
        "adapter": opts.adapter,
    }


def user_scenario_dirs() -> list[Path]:
    return [config_dir() / "scenarios"]


def read_premise(path: Path) -> Story:
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise StartError(f"{path}: cannot read the premise ({err.strerror or err})") from None
    if len(data) > MAX_PREMISE_BYTES:
        raise StartError(f"{path}: {len(data):,} bytes is too long for a premise (at most 100 KB)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise StartError(f"{path}:{line}: not UTF-8 text; save the premise as UTF-8") from None
    premise = sanitize(text).strip()
    if not premise:
        raise StartError(f"{path}: the premise file is empty")
    return Story(premise=premise)


def start_story(opts: PlayOptions) -> tuple[Story, dict]:
    """The story the options ask for: --load, --premise or --scenario. Returns (story, sampling)."""
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(2**31)
    if opts.load:
        path = data_dir() / "saves" / f"{check_slot(opts.load)}.json"
        data = saves.load(path)
        return data.story, data.sampling
    if opts.premise_file:
        story = read_premise(opts.premise_file)
        story.seed = seed
        return story, {}
    name = opts.scenario or "fantasy"
    return find_scenario(name, user_scenario_dirs()).start(seed), {}


def make_game(generator: Generator, story: Story, opts: PlayOptions, sampling: dict) -> Game:
    settings = GameSettings(context=ContextSettings(budget=opts.context_budget))
    return Game(generator, story, settings, sampling=opts.sampling.updated(sampling))


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
        story, sampling = start_story(opts)
    except (StartError, saves.SaveError, ValueError) as err:
        out.error(str(err))
        return 2
    generator = build_generator(opts)
    game = make_game(generator, story, opts, sampling)
    session = Session(game, out, model_info(generator, opts))
    session.slot = check_slot(opts.load) if opts.load else AUTOSAVE

    def restart(s: Session, scenario: str) -> None:
        seed = random.SystemRandom().randrange(2**31) if opts.seed is None else opts.seed
        chosen = find_scenario(scenario or opts.scenario or "fantasy", user_scenario_dirs())
        s.replace_story(chosen.start(seed))
        s.slot = AUTOSAVE
        s.out.story(s.game.story.premise)

    session.restart = restart
    if not game.story.turns:
        out.story(game.story.premise)
    for line in stdin:
        dispatch(session, line.rstrip("\n"))
        if session.quit:
            break
    session.autosave()
    return 0


def last_save() -> str | None:
    found = list_saves()
    return found[0][0] if found else None


__all__ = [
    "PlainOutput",
    "StartError",
    "build_generator",
    "builtin_scenarios",
    "last_save",
    "make_game",
    "model_info",
    "read_premise",
    "run_piped",
    "start_story",
]
