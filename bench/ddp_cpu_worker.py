"""One configuration of the CPU data-parallel benchmark (:mod:`bench.ddp_cpu`), on every rank.

Started once per configuration, either directly (one process) or by
``python -m torch.distributed.run --standalone --nproc_per_node=N -m bench.ddp_cpu_worker``
(N processes, gloo). Every rank builds, from the same seed, the digits recipe's diffusers
``UNet2DModel`` and the diffkit pipeline holding the same weights (:func:`bench.training.build_models`),
then trains both, alternately, in this process:

* diffkit: the real :class:`~diffkit.training.Trainer` on the rank's
  :func:`~diffkit.distributed.init_distributed` context — what ``diffkit train`` builds under
  ``torchrun`` (DDP over gloo; ``batch_size`` is the global micro-batch, each rank trains its
  slice) — stepped through :meth:`Trainer.train_step`;
* diffusers: :class:`DistributedDiffusersLoop`, the diffusers training loop of
  :mod:`bench.training` as a diffusers user makes it data-parallel: a ``DistributedSampler``
  gives each rank ``batch_size / N`` examples per step and the ``UNet2DModel`` is wrapped in
  ``DistributedDataParallel`` (with one process: the same sampler, no wrapper).

After ``--warmup`` untimed steps of each loop, ``--steps`` optimizer steps of each are timed
in ``--repeats`` blocks of about ``steps / repeats`` steps (:func:`block_sizes`), the two
libraries alternating block by block (the order swapped every repeat). A block is timed between two
barriers, so its time is that of the slowest rank. Rank 0 prints one :data:`BLOCK_FORMAT` line
per block, which :func:`bench.ddp_cpu.parse_block_line` reads.

    python -m bench.ddp_cpu_worker --threads 2 --steps 150 --repeats 3 --batch-size 128 [--warmup 10]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from bench.training import RECIPE, DiffusersLoop, build_models
from diffkit.distributed import DistributedContext, check_divisible, init_distributed, shutdown_distributed
from diffkit.distributed.collectives import barrier
from diffkit.recipes import build_data, get_recipe
from diffkit.recipes.base import RecipeDict
from diffkit.training import TrainConfig, Trainer

LIBRARIES = ("diffkit", "diffusers")
BLOCK_FORMAT = (
    "ddp_cpu block: library={library} repeat={repeat} processes={processes} threads={threads} "
    "steps={steps} batch={batch} seconds={seconds:.4f} images/s={images_per_second:.2f} loss={loss:.4f}"
)
"""Rank 0's line per timed block (``images/s`` counts the global batch: all ranks together)."""


class DistributedDiffusersLoop(DiffusersLoop):
    """:class:`bench.training.DiffusersLoop` split over ``world_size`` ranks, as diffusers users do it.

    ``config.batch_size`` is the global batch; this rank draws ``batch_size / world_size``
    examples per step from a ``DistributedSampler`` (shuffled, reshuffled every epoch with
    ``set_epoch``, the tail dropped so every rank gets as many batches), and with more than one
    rank the model is wrapped in ``DistributedDataParallel``, which averages the gradients
    during ``backward``. The optimizer, LR schedule, clipping and EMA act on the same parameters.
    """

    def __init__(
        self,
        model: Any,
        images: torch.Tensor,
        labels: torch.Tensor,
        config: TrainConfig,
        *,
        rank: int,
        world_size: int,
        num_train_timesteps: int,
        null_label: int,
        drop_prob: float,
    ) -> None:
        per_rank = check_divisible(config.batch_size, world_size)
        super().__init__(
            model, images, labels, attrs.evolve(config, batch_size=per_rank),
            num_train_timesteps=num_train_timesteps, null_label=null_label, drop_prob=drop_prob,
        )
        dataset = self.loader.dataset
        self.sampler = DistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=config.seed, drop_last=True
        )
        self.loader = DataLoader(dataset, batch_size=per_rank, sampler=self.sampler, drop_last=True)
        self.epoch = 0
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(model)

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return next(self.batches)
        except StopIteration:  # a new epoch: every rank reshuffles with the same seed + epoch
            self.sampler.set_epoch(self.epoch)
            self.epoch += 1
            self.batches = iter(self.loader)
            return next(self.batches)


def benchmark_recipe(batch_size: int, total_steps: int, seed: int) -> RecipeDict:
    """The digits recipe with this batch and length, no checkpoints and no preview grids."""
    overrides = [
        f"train.batch_size={batch_size}", f"train.steps={total_steps}", f"train.seed={seed}",
        "train.save_every=0", "train.sample_every=0",
    ]
    return get_recipe(RECIPE, overrides)


def build_loops(
    recipe: RecipeDict, context: DistributedContext, seed: int
) -> dict[str, Callable[[], torch.Tensor]]:
    """``{"diffkit": Trainer.train_step, "diffusers": DistributedDiffusersLoop.step}`` on this rank."""
    config = TrainConfig(**recipe["train"])
    theirs, pipeline = build_models(recipe, seed)  # the same weights on both sides and on every rank
    data = build_data(recipe)
    trainer = Trainer(pipeline, data, config, progress=False, device="cpu", distributed=context)
    conditioner = pipeline.conditioner.config
    loop = DistributedDiffusersLoop(
        theirs, data.images, data.labels, config, rank=context.rank, world_size=context.world_size,
        num_train_timesteps=pipeline.schedule.num_train_timesteps,
        null_label=conditioner.num_classes, drop_prob=conditioner.drop_prob,
    )
    return {"diffkit": trainer.train_step, "diffusers": loop.step}


def block_sizes(steps: int, repeats: int) -> list[int]:
    """``steps`` split into ``repeats`` blocks as even as possible (the larger ones first)."""
    if repeats < 1 or steps < repeats:
        raise ValueError(f"cannot split {steps} steps into {repeats} blocks of at least one step")
    size, extra = divmod(steps, repeats)
    return [size + (1 if i < extra else 0) for i in range(repeats)]


def timed_block(step: Callable[[], torch.Tensor], steps: int) -> tuple[float, float]:
    """(seconds between two barriers around ``steps`` calls of ``step``, this rank's mean loss)."""
    barrier()
    start = time.perf_counter()
    losses = [step() for _ in range(steps)]
    barrier()
    seconds = time.perf_counter() - start
    return seconds, torch.stack(losses).mean().item()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, required=True, help="torch intra-op threads of each process")
    parser.add_argument("--steps", type=int, default=150, help="timed optimizer steps of each library, all blocks")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks of each library (alternating)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps of each library first")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch (split over the processes)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    check_block_arguments(parser, args, ("threads", "steps", "repeats", "batch_size"))
    return args


def check_block_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, positive: Sequence[str]) -> None:
    """The checks the driver and the worker share: counts ≥ 1, warm-up ≥ 0, a step per block."""
    for name in positive:
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be ≥ 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be ≥ 0, got {args.warmup}")
    if args.steps < args.repeats:
        parser.error(f"--steps ({args.steps}) must be ≥ --repeats ({args.repeats}): each block needs a step")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    context = init_distributed()  # gloo under torchrun; a single-process context otherwise
    try:
        check_divisible(args.batch_size, context.world_size)
        recipe = benchmark_recipe(args.batch_size, args.warmup + args.steps, args.seed)
        loops = build_loops(recipe, context, args.seed)
        if context.is_main:
            print(
                f"ddp_cpu worker: {context.describe()}, world size {context.world_size}, "
                f"{torch.get_num_threads()} thread(s) per process, global batch {args.batch_size}",
                flush=True,
            )
        for step in loops.values():
            for _ in range(args.warmup):
                step()
        for repeat, steps in enumerate(block_sizes(args.steps, args.repeats)):
            order = list(LIBRARIES) if repeat % 2 == 0 else list(reversed(LIBRARIES))
            for library in order:
                seconds, loss = timed_block(loops[library], steps)
                if context.is_main:
                    print(BLOCK_FORMAT.format(
                        library=library, repeat=repeat, processes=context.world_size, threads=torch.get_num_threads(),
                        steps=steps, batch=args.batch_size, seconds=seconds,
                        images_per_second=steps * args.batch_size / seconds if seconds > 0 else math.nan,
                        loss=loss,
                    ), flush=True)
    finally:
        if dist.is_initialized():
            shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
