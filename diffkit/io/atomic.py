"""Crash-safe file writing: a temporary file, fsync, then an atomic rename.

Used by everything diffkit writes that a reader may open later (checkpoints, component and
pipeline folders, PNG grids, GIFs, cached classifiers), so a kill at any moment leaves the old
file or the new one, never half of one.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from diffkit.errors import OutputError

TMP_SUFFIX = ".tmp"
"""Temporary files are ``.<final name>.<random>.tmp`` next to their target."""


def write_atomic(files: list[tuple[Path, Callable[[Path], Any]]]) -> None:
    """Replace each ``path`` by what ``write(tmp)`` writes, with no half-written file ever visible.

    Every file is first written to a temporary name next to its target and fsynced; only when
    all are written are they renamed over their targets, one after the other, and the folder
    fsynced. An exception (or a kill) while writing leaves every target as it was; the
    temporary files are removed on an exception (after a kill they stay, named
    ``.<name>.<random>.tmp``, and loaders ignore them).

    Raises:
        OutputError: a target that cannot be written (its folder is read-only or missing, a
            NUL byte in its name, …), naming the target and the reason; nothing is left behind.
    """
    for path, _ in files:
        check_path(path, "file")
    staged: list[tuple[Path, Path]] = []
    target = files[0][0] if files else None
    try:
        for path, write in files:
            target = path
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")
            staged.append((tmp, path))
            write(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)  # the data is on disk before a rename makes it visible
            finally:
                os.close(fd)
        for tmp, path in staged:
            target = path
            os.replace(tmp, path)  # atomic: readers see the old or the new file
    except BaseException as exc:
        for tmp, _ in staged:
            try:
                tmp.unlink(missing_ok=True)
            except OSError:  # an unwritable folder: the temporary was never created
                pass
        if isinstance(exc, OSError) and not isinstance(exc, OutputError):
            raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
        raise
    for folder in {path.parent for _, path in staged}:
        fsync_dir(folder)  # the renames themselves are durable


def check_path(path: Path, what: str) -> None:
    """Refuse a path the operating system cannot hold (a NUL byte) before anything is written."""
    if "\0" in str(path):
        raise OutputError(f"the {what} name {str(path)!r} holds a NUL byte; pass a name without one")


def make_folder(folder: Path, what: str = "folder") -> None:
    """``mkdir -p folder``; a path that cannot be made a folder is an :class:`OutputError`
    naming it and why (a parent that is a file, a read-only or virtual file system, …)."""
    check_path(folder, what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file, not a folder" if blocker is not None else (exc.strerror or str(exc))
        raise OutputError(f"cannot create the {what} {folder}: {reason}") from exc


def fsync_dir(folder: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
