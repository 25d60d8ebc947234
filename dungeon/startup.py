"""Start-up shared by every front end: options -> generator -> story -> session.

The terminal game (``dungeon.ui``), the piped game (``dungeon.piped``) and any other front end
(an HTTP server, a game that embeds dungeon) start the same way::

    start = start_from_options(opts)            # --load, --premise, --scenario (None: ask)
    generator = build_generator(opts)           # the model, with the shipped adapter
    session = open_session(generator, start, opts, out)

Nothing here touches a terminal; errors a player can fix are ``StartError`` (or the
``ScenarioError`` / ``SaveError`` of the part that failed) with a message that says what to do.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dungeon import saves
from dungeon.builtin_model import BUILTIN_MODEL
from dungeon.cleanup import sanitize
from dungeon.config import PlayOptions, sampling_in_effect
from dungeon.context import ContextSettings
from dungeon.game import Game, GameSettings
from dungeon.generator import FakeGenerator, Generator, GuidedGenerator
from dungeon.paths import config_dir
from dungeon.picker import named_picker
from dungeon.scenarios import Scenario, find_scenario, scenario_catalogue
from dungeon.session import AUTOSAVE, Output, Session, check_slot, list_saves, new_slot, slot_path
from dungeon.story import Story
from dungeon.text_files import NotUTF8Error, decode_utf8

log = logging.getLogger(__name__)

MAX_PREMISE_BYTES = 100_000
DEFAULT_SCENARIO = "fantasy"


class StartError(ValueError):
    """The game cannot start as asked; the message says what to do."""


def fresh_seed(seed: int | None = None) -> int:
    """``seed`` when one was asked for, else a new random one (each new story differs)."""
    return seed if seed is not None else random.SystemRandom().randrange(2**31)


# --- the model ----------------------------------------------------------------------------


def shipped_adapter(model: str) -> str | None:
    """The adventure adapter shipped in the package, for the built-in base it was trained on."""
    from importlib import resources

    folder = resources.files("dungeon") / "adapters" / "adventure"
    if model == BUILTIN_MODEL and (folder / "adapter_config.json").is_file():
        return str(folder)
    return None


def build_generator(opts: PlayOptions, progress: Callable[..., None] | None = None) -> Generator:
    """The generator the options ask for. ``fake`` needs no model (for demos and tests).

    The model's recommended sampling (its dungeon.json's ``"sampling"``) fills the sampling
    keys the user did not choose: ``opts.sampling`` is updated to the settings in effect, so
    every front end (and a save's settings on top, in ``make_game``) starts from them.
    """
    if opts.model == "fake":
        return FakeGenerator(settings=opts.sampling)
    from dungeon import models  # heavy: torch and transformers

    adapter = opts.adapter
    if adapter is not None and adapter.lower() == "none":
        adapter = None
    elif adapter is None:
        adapter = shipped_adapter(opts.model)
    threads = opts.threads if opts.threads is not None else models.default_threads()
    generator = models.load_generator(
        opts.model,
        adapter=adapter,
        device=opts.device,
        dtype=opts.dtype,
        threads=threads,
        settings=opts.sampling,
        allow_pickle=opts.allow_pickle,
        quantize=opts.quantize,
        progress=progress,
        **({"tokenizer": opts.tokenizer} if opts.tokenizer else {}),
    )
    recommended = getattr(generator, "recommended_sampling", None)
    if recommended:
        opts.sampling = generator.settings = sampling_in_effect(opts, recommended)
    if opts.sampling.guidance and not isinstance(generator, GuidedGenerator):
        log.warning("action guidance needs a local model (not a server's); it is off")
    return generator


def model_info(generator: Generator, opts: PlayOptions) -> dict:
    """What a save records about the model that wrote it."""
    return {
        "name": getattr(generator, "name", opts.model),
        "model": opts.model,
        "adapter": opts.adapter,
    }


# --- the story ----------------------------------------------------------------------------


@dataclass
class Start:
    """What a game starts with: a story, its saved sampling settings and its save slot."""

    story: Story
    sampling: dict
    slot: str
    continued: bool = False
    """True when this is a saved game taken up again."""


def user_scenario_dirs() -> list[Path]:
    return [config_dir() / "scenarios"]


def available_scenarios() -> tuple[dict[str, Scenario], list[str]]:
    """Built-in and user scenarios by name, and the problems of any that cannot be read."""
    return scenario_catalogue(user_scenario_dirs())


def premise_story(text: str, seed: int, where: str = "the premise") -> Story:
    """A new story from a premise the player wrote; empty or oversized text is refused."""
    premise = sanitize(text).strip()
    if not premise:
        raise StartError(f"{where} is empty: write a few sentences that open the story")
    size = len(premise.encode("utf-8"))
    if size > MAX_PREMISE_BYTES:
        raise StartError(f"{where}: {size:,} bytes is too long for a premise (at most 100 KB)")
    return Story(premise=premise, seed=seed)


def read_premise(path: Path, seed: int = 0) -> Story:
    """A new story from a premise file (UTF-8 text, at most 100 KB)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise StartError(f"{path}: cannot read the premise ({err.strerror or err})") from None
    if len(data) > MAX_PREMISE_BYTES:
        raise StartError(f"{path}: {len(data):,} bytes is too long for a premise (at most 100 KB)")
    try:
        text = decode_utf8(data, str(path), "save the premise as UTF-8")
    except NotUTF8Error as err:
        raise StartError(str(err)) from None
    return premise_story(text, seed, where=f"{path}: the premise file")


def load_start(name: str) -> Start:
    """A saved game taken up again, in its own slot."""
    data = saves.load(slot_path(name))
    return Start(data.story, data.sampling, check_slot(name), continued=True)


def scenario_start(scenario: Scenario, seed: int | None, fresh_slot: bool = True) -> Start:
    """A new story from a scenario; in a slot of its own unless ``fresh_slot`` is False."""
    slot = new_slot(scenario.name) if fresh_slot else AUTOSAVE
    return Start(scenario.start(fresh_seed(seed)), {}, slot)


def start_from_options(
    opts: PlayOptions, *, default_scenario: str | None = None, fresh_slot: bool = True
) -> Start | None:
    """The story ``--load``, ``--premise`` or ``--scenario`` ask for.

    With none of them: ``default_scenario`` when given, else None (the front end asks the
    player). New stories get a fresh save slot, or the autosave slot when ``fresh_slot`` is
    False (the piped game, where scripts expect one known file).
    """
    if opts.load:
        return load_start(opts.load)
    if opts.premise_file:
        slot = new_slot(Path(opts.premise_file).stem) if fresh_slot else AUTOSAVE
        return Start(read_premise(opts.premise_file, fresh_seed(opts.seed)), {}, slot)
    name = opts.scenario or default_scenario
    if name is None:
        return None
    return scenario_start(find_scenario(name, user_scenario_dirs()), opts.seed, fresh_slot)


def last_save() -> str | None:
    """The most recently saved slot, if any."""
    found = list_saves()
    return found[0][0] if found else None


# --- the session --------------------------------------------------------------------------


def make_game(generator: Generator, story: Story, opts: PlayOptions, sampling: dict) -> Game:
    """A Game with the options' context budget and sampling, a save's settings on top."""
    settings = GameSettings(
        context=ContextSettings(budget=opts.context_budget),
        candidates=opts.candidates,
        state=opts.state,
    )
    return Game(
        generator,
        story,
        settings,
        sampling=opts.sampling.updated(sampling),
        picker=named_picker(opts.picker, generator),
    )


def open_session(
    generator: Generator,
    start: Start,
    opts: PlayOptions,
    out: Output,
    **hooks,
) -> Session:
    """The Session a front end plays: the game, its output, its save slot and its hooks."""
    game = make_game(generator, start.story, opts, start.sampling)
    return Session(game, out, model_info(generator, opts), slot=start.slot, **hooks)
