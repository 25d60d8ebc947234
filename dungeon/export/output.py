"""Writing an export so that a failure never leaves half a model behind.

An export is written to a temporary name beside the target (``OUT.partial-<pid>``) and renamed
into place only when complete; an existing target is replaced only with ``force``, and only at
that last rename. Before writing, the free space at the target is compared with the size the
export will have; running out anyway (another process filled the disk) removes the temporary
file and says so in one line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from dungeon.export.source import ExportError

# Room left over after the estimate: metadata, the tokenizer, the card, the file system's own.
SPACE_MARGIN_BYTES = 32 * 2**20


def check_target(target: Path, *, force: bool, kind: str) -> None:
    """Refuse an existing target without ``force``, and a target of the wrong kind."""
    if target.exists() or target.is_symlink():
        if not force:
            raise ExportError(f"{target} already exists; pass --force to replace it")
        is_dir = target.is_dir() and not target.is_symlink()
        if kind == "folder" and not is_dir:
            raise ExportError(f"{target} exists and is not a folder; remove it first")
        if kind == "file" and is_dir:
            raise ExportError(f"{target} is a folder; give a file name such as model.gguf")
    parent = target.parent
    if parent.exists() and not parent.is_dir():
        raise ExportError(f"{parent} is not a folder")


def check_space(target: Path, needed: int) -> None:
    """Raise ExportError when the disk that will hold ``target`` has less than ``needed`` bytes."""
    where = target.parent
    while not where.exists():
        where = where.parent
    free = shutil.disk_usage(where).free
    if free < needed + SPACE_MARGIN_BYTES:
        raise ExportError(
            f"not enough disk space for {target}: it needs about {_mb(needed)} and "
            f"{where} has {_mb(free)} free"
        )


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB"


def _partial_name(target: Path) -> Path:
    return target.with_name(f"{target.name}.partial-{os.getpid()}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def _no_space_as_export_error(target: Path) -> Iterator[None]:
    try:
        yield
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ExportError(
                f"the disk filled up while writing {target}; nothing was written"
            ) from None
        raise


@contextlib.contextmanager
def atomic_output(target: Path, *, force: bool, folder: bool) -> Iterator[Path]:
    """Yield a temporary path (a new empty folder when ``folder``) to write the export to.

    When the block ends without an error the temporary path replaces ``target`` (an existing
    one only with ``force``, checked again here); on any error, or Ctrl-C, it is deleted and the
    target is left as it was.
    """
    target = Path(target)
    check_target(target, force=force, kind="folder" if folder else "file")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial_name(target)
    _remove(partial)
    try:
        with _no_space_as_export_error(target):
            if folder:
                partial.mkdir()
            yield partial
            check_target(target, force=force, kind="folder" if folder else "file")
            if folder and target.exists():
                old = target.with_name(f"{target.name}.old-{os.getpid()}")
                target.rename(old)
                partial.rename(target)
                _remove(old)
            else:
                os.replace(partial, target)
    finally:
        _remove(partial)
