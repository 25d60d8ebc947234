"""Play options: command-line flags over the user's TOML config file over built-in defaults.

The config file is ``<user config dir>/config.toml`` (``dungeon play --help`` prints where),
for example::

    model = "smollm2-135m"
    temperature = 0.7
    top_p = 0.9
    max_new_tokens = 60
    color = true

It is read by the command line entry point only, never at import time. A model may recommend
sampling settings (its dungeon.json's ``"sampling"``): they sit between the defaults and the
config file, so they fill only the settings the user did not choose (``sampling_in_effect``).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

from dungeon.builtin_model import BUILTIN_MODEL
from dungeon.game import MAX_CANDIDATES
from dungeon.generator import SamplingSettings
from dungeon.paths import config_dir
from dungeon.picker import PICKERS

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger(__name__)

DEFAULT_MODEL = BUILTIN_MODEL
"""The model ``dungeon play`` uses when none is given: the built-in offline base."""


class ConfigError(ValueError):
    pass


@dataclass
class PlayOptions:
    """Everything ``dungeon play`` needs to start."""

    model: str = DEFAULT_MODEL
    """A model: the built-in 'smollm2-135m', a local folder, a hub id, or 'fake' (no model)."""
    adapter: str | None = None
    """A LoRA adapter folder, 'none' for the raw base; unset uses the shipped adapter if any."""
    device: str = "auto"
    dtype: str = "auto"
    quantize: str = "auto"
    """Weight-only quantized decode on the CPU: auto, int4, int8 or none (dungeon.quantize)."""
    threads: int | None = None
    allow_pickle: bool = False
    """Load pickle-only weights (only for models you trust)."""
    tokenizer: str | None = None
    """For a model on a server (``--model http://host:port/v1``): a local tokenizer for its
    model (a folder, 'smollm2-135m', 'gpt2', or 'estimate'); unset: the server's own."""
    scenario: str | None = None
    premise_file: Path | None = None
    load: str | None = None
    seed: int | None = None
    color: bool = True
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    """The sampling settings; ``startup.build_generator`` fills the ones the user did not
    choose with the model's recommendation (see ``sampling_in_effect``)."""
    sampling_chosen: frozenset[str] = frozenset()
    """The sampling keys the user chose in the config file or a flag, even where the value is
    the default: a model's recommended settings fill only the others. (A key whose value
    differs from SamplingSettings' default counts as chosen anyway.)"""
    context_budget: int = 1024
    candidates: int = 1
    """Responses written per turn in one batch (flip between them; retry shows the next)."""
    picker: str = "adherence"
    """Which of several candidates is shown: 'adherence' (the model's own pick, falling back to
    'story' where the backend cannot score), 'story' or 'first' (as written); dungeon.picker.
    With one candidate there is nothing to pick."""
    state: bool = True
    """Put the world's state (inventory, condition, people, places) into the model's context."""


SAMPLING_KEYS = {f.name for f in fields(SamplingSettings)}
TOP_KEYS = {
    "model",
    "adapter",
    "device",
    "dtype",
    "quantize",
    "threads",
    "color",
    "context_budget",
    "candidates",
    "picker",
    "state",
    "scenario",
    "allow_pickle",
    "tokenizer",
}


FLAG_KEYS = SAMPLING_KEYS | {f.name for f in fields(PlayOptions)} - {
    "sampling",
    "sampling_chosen",
    "premise_file",
}
"""Every option a command line may set, by its argparse ``dest``."""


def option_flags(args) -> dict:
    """The options an argparse namespace sets (None where its parser has no such flag), for
    ``merge``: each front end's parser decides which flags it offers, this reads them all."""
    return {k: getattr(args, k, None) for k in sorted(FLAG_KEYS)}


def config_file() -> Path:
    return config_dir() / "config.toml"


def read_config(path: Path | None = None) -> dict:
    """The config file as a dict ({} when there is none); errors name the file and the key."""
    path = path or config_file()
    if not path.exists():
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: cannot read the config ({err})") from None
    unknown = sorted(set(data) - SAMPLING_KEYS - TOP_KEYS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(SAMPLING_KEYS | TOP_KEYS))}"
        )
    return data


def merge(config: dict, flags: dict) -> PlayOptions:
    """Flags (None = not given) over config over defaults, validated."""
    merged = {**config, **{k: v for k, v in flags.items() if v is not None}}
    sampling = {k: merged.pop(k) for k in list(merged) if k in SAMPLING_KEYS}
    try:
        settings = SamplingSettings().updated(sampling)
    except (TypeError, ValueError) as err:
        raise ConfigError(str(err)) from None
    known = {f.name for f in fields(PlayOptions)} - {"sampling_chosen"}
    opts = PlayOptions(
        **{k: v for k, v in merged.items() if k in known},
        sampling=settings,
        sampling_chosen=frozenset(sampling),
    )
    if opts.premise_file is not None:
        opts.premise_file = Path(opts.premise_file)
    if opts.quantize not in ("auto", "int4", "int8", "none"):
        raise ConfigError(f"quantize must be auto, int4, int8 or none, got {opts.quantize!r}")
    if opts.picker not in PICKERS:
        raise ConfigError(f"no picker named {opts.picker!r}; choose one of: {', '.join(PICKERS)}")
    if not isinstance(opts.candidates, int) or not 1 <= opts.candidates <= MAX_CANDIDATES:
        raise ConfigError(
            f"candidates must be between 1 and {MAX_CANDIDATES}, got {opts.candidates}"
        )
    if not isinstance(opts.state, bool):
        raise ConfigError(f"state must be true or false, got {opts.state!r}")
    return opts


def sampling_in_effect(opts: PlayOptions, recommended: dict | None) -> SamplingSettings:
    """The sampling a game plays with, lowest first: SamplingSettings' defaults, the model's
    recommendation (``recommended``, already checked), the user's chosen keys (config file,
    flags). A save's own settings go on top later (``startup.make_game``).

    Where the recommendation and the user's choices do not fit together (a recommended
    ``max_new_tokens`` below the user's ``min_new_tokens``), the user's settings win alone.
    """
    if not recommended:
        return opts.sampling
    default = SamplingSettings()
    mine = opts.sampling.to_dict()
    chosen = set(opts.sampling_chosen) | {k for k, v in mine.items() if v != getattr(default, k)}
    try:
        return default.updated(recommended).updated({k: mine[k] for k in chosen})
    except (TypeError, ValueError) as err:
        log.warning("the model's recommended sampling does not fit your settings (%s)", err)
        return opts.sampling
