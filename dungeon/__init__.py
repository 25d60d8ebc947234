"""dungeon: a text-adventure engine on a fine-tuned language model.

Importing the package is cheap: no model, no config file, no logging set-up. The model
backend lives in dungeon.models and is imported only when asked for.
"""

from dungeon.actions import Action, make_action
from dungeon.context import Context, ContextOverflowError, ContextSettings, build_context
from dungeon.game import Game, GameSettings, NothingToDo
from dungeon.generator import FakeGenerator, Generator, SamplingSettings
from dungeon.story import Candidate, Story, Turn, WorldEntry

__version__ = "0.1.0"
__all__ = [
    "Action",
    "Candidate",
    "Context",
    "ContextOverflowError",
    "ContextSettings",
    "FakeGenerator",
    "Game",
    "GameSettings",
    "Generator",
    "NothingToDo",
    "SamplingSettings",
    "Story",
    "Turn",
    "WorldEntry",
    "build_context",
    "make_action",
]
