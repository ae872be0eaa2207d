"""The few collective operations the trainer needs; each is a no-op in a single process."""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def active() -> bool:
    """A process group with more than one rank is joined."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def mean_across_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over all ranks (a copy; the input is unchanged).

    Summed then divided: gloo has no AVG reduction.
    """
    if not active():
        return value.detach().clone()
    total = value.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / dist.get_world_size()


def broadcast_from_main(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (any picklable object)."""
    if not active():
        return obj
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait until every rank has arrived here."""
    if active():
        dist.barrier()
