"""An exclusive lock on a run folder for the lifetime of the run that writes it.

Two processes training into one folder would each rotate and clean up the other's
checkpoints. The first to start holds ``<folder>/run.lock`` with an OS lock (``flock`` on
POSIX, ``msvcrt.locking`` on Windows); the second gets :class:`~diffkit.errors.RunInUseError`
naming the holder (pid, host, start time, command), read from the lock file itself.

The OS drops the lock when the holder's process ends in any way (SIGKILL included), so a
lock is never left stale; the file stays behind and is simply taken by the next run. Within
one process the lock is re-entrant: ``train_recipe`` holds it around the whole run and the
:class:`~diffkit.training.Trainer` it creates takes it again without blocking itself.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

from diffkit.errors import RunFolderError, RunInUseError

LOCK_FILE = "run.lock"

# resolved lock path → (open file descriptor, depth) for the locks this process holds
_HELD: dict[Path, list[int]] = {}


def _try_lock(fd: int) -> bool:
    """Take the exclusive OS lock on ``fd`` without waiting; False when another process has it."""
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder_record() -> str:
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv)[:500],
    }
    return json.dumps(record) + "\n"


def _describe_holder(path: Path) -> str:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        return (
            f"process {int(record['pid'])} on {record['host']} (since {record['since']}: "
            f"{str(record['command'])[:200]})"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "another process (its record in the lock file is unreadable)"


def _open_lock_file(path: Path) -> int:
    try:
        # no O_TRUNC: the holder's record must survive a failed attempt by someone else
        return os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except OSError as exc:
        if path.is_symlink():
            raise RunFolderError(f"the lock file {path} is a symbolic link; refusing to follow it (remove it)") from exc
        raise RunFolderError(
            f"cannot create the lock file {path} ({exc.strerror or exc}); the run folder must be a writable folder"
        ) from exc


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike[str]) -> Iterator[Path]:
    """Hold the exclusive lock of run folder ``folder`` (which must exist) inside the block.

    Raises :class:`~diffkit.errors.RunInUseError` at once, naming the holder, when another
    process holds it.
    """
    path = _lock_path(folder)
    held = _HELD.get(path)
    if held is not None:  # re-entered by this process
        held[1] += 1
        try:
            yield path
        finally:
            held[1] -= 1
        return
    fd = _open_lock_file(path)
    try:
        if not _try_lock(fd):
            raise RunInUseError(
                f"the run folder {path.parent} is in use by {_describe_holder(path)}; wait for it to finish, "
                "stop it, or train into another --out"
            )
        os.ftruncate(fd, 0)
        os.write(fd, _holder_record().encode("utf-8"))
        _HELD[path] = [fd, 1]
        try:
            yield path
        finally:
            del _HELD[path]
    finally:
        os.close(fd)  # closing the descriptor releases the OS lock


def holds_lock(folder: str | os.PathLike[str]) -> bool:
    """True when this process holds the lock of ``folder``."""
    return _lock_path(folder) in _HELD


def _lock_path(folder: str | os.PathLike[str]) -> Path:
    """The lock file of ``folder``: the folder resolved, the file itself not (a symlink named
    ``run.lock`` is refused by ``O_NOFOLLOW``, never followed to someone's file)."""
    return Path(folder).resolve() / LOCK_FILE
