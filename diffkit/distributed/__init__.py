"""Training on several processes under ``torchrun``: the environment, DDP/FSDP2, sharded state.

    torchrun --nproc_per_node=4 -m diffkit train --recipe digits            # DDP
    torchrun --nproc_per_node=8 -m diffkit train --recipe shapes --fsdp     # FSDP2
    torchrun --nproc_per_node=2 --max-restarts=3 -m diffkit train ...       # survives a crash

See :mod:`diffkit.distributed.context` (the torchrun variables), :mod:`.parallel` (DDP / FSDP2),
:mod:`.sharded_state` (``torch.distributed.checkpoint``) and :mod:`.faults` (fault injection).
"""

from diffkit.distributed.context import (
    DistributedContext,
    DistributedError,
    check_divisible,
    context_from_environment,
    init_distributed,
    launched_by_torchrun,
    shutdown_distributed,
)
from diffkit.distributed.parallel import DataParallel, TrainingForward

__all__ = [  # the torchrun environment; the process group and its checks; the model wrappers
    "DistributedContext", "context_from_environment", "launched_by_torchrun",
    "init_distributed", "shutdown_distributed", "DistributedError", "check_divisible",
    "DataParallel", "TrainingForward",
]
