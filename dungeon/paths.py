"""Where dungeon keeps things on the user's machine (platformdirs), computed on demand.

Environment overrides, mainly for tests and CI: DUNGEON_CACHE_DIR, DUNGEON_DATA_DIR,
DUNGEON_CONFIG_DIR.
"""

from __future__ import annotations

import os
from pathlib import Path

APP = "dungeon"


def cache_dir() -> Path:
    """Converted models and tokenizers: safe to delete, rebuilt on demand."""
    env = os.environ.get("DUNGEON_CACHE_DIR")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir(APP))


def data_dir() -> Path:
    """Saves, input history and the error log: the player's own things."""
    env = os.environ.get("DUNGEON_DATA_DIR")
    if env:
        return Path(env)
    from platformdirs import user_data_dir

    return Path(user_data_dir(APP))


def config_dir() -> Path:
    env = os.environ.get("DUNGEON_CONFIG_DIR")
    if env:
        return Path(env)
    from platformdirs import user_config_dir

    return Path(user_config_dir(APP))


def gpt2_tokenizer_dir() -> Path:
    """The GPT-2 BPE tokenizer made by scripts/fetch_gpt2_tokenizer.py."""
    return cache_dir() / "gpt2-tokenizer"
