"""An injected worker death, to test that a ``torchrun --max-restarts`` job recovers.

``DIFFKIT_FAULT_AT=RANK:STEP`` makes rank RANK exit abruptly (``os._exit``: no cleanup, no
flushing, like a killed process or a lost node) right after it finishes optimizer step STEP —
on the job's first attempt only (``TORCHELASTIC_RESTART_COUNT=0``), so the restarted job runs
through. torchrun then stops the other ranks and starts them all again; the trainer resumes
from the newest complete checkpoint. A testing aid: unset, it costs one dictionary lookup.
"""

from __future__ import annotations

import os

from diffkit.distributed.context import DistributedContext
from diffkit.errors import ConfigError

FAULT_VARIABLE = "DIFFKIT_FAULT_AT"
FAULT_EXIT_CODE = 75


def fault_step(context: DistributedContext) -> int | None:
    """The step after which this rank must die, or None (unset, another rank, or a restart)."""
    text = os.environ.get(FAULT_VARIABLE)
    if not text or context.restart_count > 0:
        return None
    rank, sep, step = text.partition(":")
    try:
        if not sep:
            raise ValueError
        rank_value, step_value = int(rank), int(step)
    except ValueError:
        raise ConfigError(f"{FAULT_VARIABLE} must look like RANK:STEP (e.g. 1:7), got {text!r}") from None
    return step_value if rank_value == context.rank else None


def die() -> None:
    """Exit at once, skipping every handler (what a crash looks like to torchrun)."""
    os._exit(FAULT_EXIT_CODE)
