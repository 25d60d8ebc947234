"""The model loader's exceptions, importable without torch (the CLI catches them by type).

The message of each says what to do next; ``dungeon`` prints it without a traceback.
"""

from __future__ import annotations


class ModelNotFoundError(LookupError):
    """The model, adapter or base named cannot be found; the message says what to use instead."""


class UnsafeModelError(ValueError):
    """The model would need pickle weights or its own Python code, which dungeon refuses."""
