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

TMP_SUFFIX = ".tmp"
"""Temporary files are ``.<final name>.<random>.tmp`` next to their target."""


def write_atomic(files: list[tuple[Path, Callable[[Path], Any]]]) -> None:
    """Replace each ``path`` by what ``write(tmp)`` writes, with no half-written file ever visible.

    Every file is first written to a temporary name next to its target and fsynced; only when
    all are written are they renamed over their targets, one after the other, and the folder
    fsynced. An exception (or a kill) while writing leaves every target as it was; the
    temporary files are removed on an exception (after a kill they stay, named
    ``.<name>.<random>.tmp``, and loaders ignore them).
    """
    staged: list[tuple[Path, Path]] = []
    try:
        for path, write in files:
            tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")
            staged.append((tmp, path))
            write(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)  # the data is on disk before a rename makes it visible
            finally:
                os.close(fd)
        for tmp, path in staged:
            os.replace(tmp, path)  # atomic: readers see the old or the new file
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for folder in {path.parent for _, path in staged}:
        fsync_dir(folder)  # the renames themselves are durable


def fsync_dir(folder: Path) -> None:
    if os.name != "posix":  # directories cannot be opened for fsync on Windows
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
