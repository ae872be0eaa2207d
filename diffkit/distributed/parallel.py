"""Data-parallel training of a pipeline: DDP (replicated weights) or FSDP2 (sharded weights).

Both engines hook into a module's ``forward``, while a pipeline trains through
:meth:`~diffkit.Pipeline.loss`. :class:`TrainingForward` is the bridge: a module whose forward
*is* the loss, so that

* DDP (``DistributedDataParallel``) all-reduces (averages) the gradients during ``backward``,
  overlapped with it, and skips that for the first ``accumulation − 1`` micro-batches
  (``no_sync``);
* FSDP2 (``torch.distributed.fsdp.fully_shard``) keeps 1/N of every weight, gradient and
  optimizer state per rank, all-gathers a unit's weights just before its forward/backward and
  reduce-scatters its gradients after. Units: what the backbone's ``sharding_units()`` names
  (DiT's transformer blocks, a UNet's ResBlocks and attention blocks), then the whole pipeline
  as the root (embeddings, heads, the conditioner). A backbone without the method is sharded
  as one unit — correct, but its weights are all gathered at once.

Either way every rank computes the loss on its own shard of the global batch and the update is
the gradient of the global mean — the same step as one process taking the whole batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from diffkit.distributed.context import DistributedContext


class TrainingForward(nn.Module):
    """``forward(x0, cond, generator=…, encoded=…)`` = ``pipeline.loss(...)[0]`` (a scalar)."""

    def __init__(self, pipeline: nn.Module) -> None:
        super().__init__()
        self.pipeline = pipeline

    def forward(
        self, x0: torch.Tensor, cond: Any = None, *, generator: torch.Generator | None = None, encoded: bool = False
    ) -> torch.Tensor:
        loss, _ = self.pipeline.loss(x0, cond, generator=generator, encoded=encoded)
        return loss


def sharding_units(backbone: nn.Module) -> list[nn.Module]:
    """The modules FSDP shards one by one: ``backbone.sharding_units()`` (none: the root only)."""
    declared = getattr(backbone, "sharding_units", None)
    return list(declared()) if callable(declared) else []


class DataParallel:
    """How one rank's replica of a pipeline is trained: plain, DDP or FSDP2.

    Args:
        pipeline: the pipeline, already on ``context.device``.
        context: this rank's :class:`DistributedContext`.
        fsdp: shard with FSDP2 (also valid with one process, e.g. to test a sharded checkpoint).
    """

    def __init__(self, pipeline: nn.Module, context: DistributedContext, *, fsdp: bool = False) -> None:
        self.context = context
        self.fsdp = fsdp
        self.forward_module: nn.Module = TrainingForward(pipeline)
        if fsdp:
            self._mesh = _device_mesh(context)
            shard_for_training(self.forward_module, self._mesh)
        elif context.is_distributed:
            from torch.nn.parallel import DistributedDataParallel

            # device_ids=None: DDP leaves the inputs where they are (the trainer places them)
            self.forward_module = DistributedDataParallel(self.forward_module, device_ids=None)

    @property
    def sharded(self) -> bool:
        """Weights are DTensors split over the ranks (FSDP): state must be gathered to be read."""
        return self.fsdp

    def shard_like(self, module: nn.Module) -> nn.Module:
        """Shard another pipeline (the EMA copy) exactly as the trained one, in place; returns it.

        Without FSDP nothing changes (every rank keeps a full EMA copy).
        """
        if not self.fsdp:
            return module
        root = TrainingForward(module)
        shard_for_training(root, self._mesh)
        return module

    def loss(self, x0: torch.Tensor, cond: Any, *, generator: torch.Generator, encoded: bool) -> torch.Tensor:
        return self.forward_module(x0, cond, generator=generator, encoded=encoded)

    @contextlib.contextmanager
    def accumulating(self, sync: bool) -> Iterator[None]:
        """Within: a micro-batch whose gradients are only accumulated (``sync=False``) or reduced."""
        if sync:
            yield
            return
        if self.fsdp:
            self.forward_module.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                self.forward_module.set_requires_gradient_sync(True)
        elif hasattr(self.forward_module, "no_sync"):
            with self.forward_module.no_sync():
                yield
        else:
            yield


def _device_mesh(context: DistributedContext) -> Any:
    from torch.distributed.device_mesh import init_device_mesh

    if not dist.is_initialized():
        # FSDP needs a process group even for one process (a sharded checkpoint test, say)
        _init_single_process_group(context)
    return init_device_mesh(context.device.type, (dist.get_world_size(),))


def _init_single_process_group(context: DistributedContext) -> None:
    """A one-rank group with an in-memory store (no rendezvous needed)."""
    backend = context.backend or ("nccl" if context.device.type == "cuda" else "gloo")
    dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)


def shard_for_training(root: nn.Module, mesh: Any) -> None:
    """Apply FSDP2 to ``root`` (a :class:`TrainingForward`): its backbone's units, then the root."""
    from torch.distributed.fsdp import fully_shard

    for unit in sharding_units(root.pipeline.backbone):
        fully_shard(unit, mesh=mesh)
    fully_shard(root, mesh=mesh)
