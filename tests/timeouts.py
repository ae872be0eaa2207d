"""A time bound for tests that must prove a call never hangs (a FIFO, a forged header, …)."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def time_bound(seconds: int) -> Iterator[None]:
    """Raise :class:`TimeoutError` in the block (instead of hanging the suite) after ``seconds``.

    SIGALRM-based: main thread, POSIX only, which is where the suite runs.
    """

    def hung(signum: int, frame: Any) -> None:
        raise TimeoutError(f"did not finish within {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
