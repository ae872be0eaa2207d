"""The training loop: AdamW, LR warm-up, clipping, accumulation, EMA, checkpoints, resume — on
one process or on every rank of a ``torchrun`` job (DDP or FSDP2, :mod:`diffkit.distributed`).

Determinism: the batch order is a function of (seed, position in the example stream)
(:func:`~diffkit.training.data.batch_indices`); the noise levels, ε, the conditioner's CFG drops
and dropout are drawn from generators reseeded every step with ``step_seed(seed, rank, step)``
(:mod:`diffkit.training.rng`). A checkpoint therefore needs only the step and the stream
position, and ``resume=True`` continues bit for bit: on the CPU the weights after N steps are
identical whether or not the run was interrupted (tests check it, with one process and with two).

Distributed: every rank reads the same global micro-batch of ``batch_size`` examples and
trains on its contiguous slice of ``batch_size / world_size`` (disjoint slices that together
cover the batch, so an epoch still visits every example once), with its own noise stream. The
gradients are averaged across ranks, so one optimizer step is the step one process would take
on the whole batch. Only rank 0 writes checkpoints, logs and pictures; an FSDP run writes its
sharded state from every rank with ``torch.distributed.checkpoint``.

Precision and speed: fp32 on the CPU. On CUDA the backbone runs under bf16 autocast by default
while the schedule, loss and optimizer stay fp32 (``precision="fp32"`` turns autocast off),
AdamW is fused, noise is drawn by a CUDA generator (Philox: the same seed gives other numbers
than on the CPU, and the same numbers on any CUDA GPU), and a step never waits for the GPU: the
loss is read back only every ``log_every`` steps.
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch

from diffkit.distributed.collectives import barrier, broadcast_from_main, mean_across_ranks
from diffkit.distributed.context import DistributedContext, check_divisible
from diffkit.distributed.faults import die, fault_step
from diffkit.distributed.parallel import DataParallel
from diffkit.distributed.sharded_state import gather_full_state, load_sharded, save_sharded
from diffkit.errors import CheckpointError, ConfigError, NonFiniteError
from diffkit.io.weights import load_state_dict_checked
from diffkit.runtime.accel import compile_module, use_channels_last
from diffkit.runtime.precision import autocast
from diffkit.sampling.draw import available_memory
from diffkit.training.checkpoints import (
    CHECKPOINT_DIR,
    SHARDED_DIR,
    abandon_checkpoint,
    checkpoint_step,
    commit_checkpoint,
    list_checkpoints,
    load_checkpoint,
    newest_intact_checkpoint,
    save_checkpoint,
    stage_checkpoint,
)
from diffkit.training.config import LR_SCHEDULES, PRECISIONS, TrainConfig
from diffkit.training.data import InMemoryData, as_training_data, batch_indices, rank_slice
from diffkit.training.ema import EMA
from diffkit.training.rng import step_seed
from diffkit.training.run_lock import run_lock

__all__ = ["LR_SCHEDULES", "PRECISIONS", "PreviewHook", "TrainConfig", "TrainResult", "Trainer", "check_batch_memory"]


@attrs.frozen
class TrainResult:
    """What :meth:`Trainer.train` returns."""

    steps: int
    final_loss: float
    seconds: float
    images_per_second: float
    """Examples per second over all ranks."""
    checkpoint: Path | None
    already_complete: bool = False
    """True when a resumed run had nothing left to do (it was complete at ``steps``)."""


PreviewHook = Callable[[int, Any], None]
"""``hook(step, ema_pipeline)``: called on rank 0 every ``sample_every`` steps and at the end."""


class Trainer:
    """Trains a :class:`~diffkit.Pipeline` on in-memory data.

    Args:
        pipeline: the pipeline to train (its backbone and conditioner are optimized).
        data: training data (see :func:`~diffkit.training.data.as_training_data`).
        config: a :class:`TrainConfig`.
        out_dir: where checkpoints go (``out_dir/checkpoints``); None keeps nothing on disk.
        meta: extra JSON-ready information stored in every checkpoint (e.g. the recipe).
        progress: show a progress bar with the loss and it/s (rank 0 only).
        preview: a :data:`PreviewHook`.
        device: where to train (default: CUDA when available); with ``distributed`` its device.
        encoded: the data are already in the backbone's space (pre-encoded latents).
        distributed: this rank's :class:`~diffkit.distributed.DistributedContext`
            (:func:`~diffkit.distributed.init_distributed`); None for one process.
        fsdp: shard weights, gradients and optimizer state over the ranks (FSDP2) instead of
            replicating them (DDP).
        compile: compile the backbone with ``torch.compile`` (falls back to eager, with a
            warning, where compilation is unavailable).
        run: the identity of the run (``{"run_id": …, …}``, JSON-ready), recorded in every
            checkpoint's ``meta.json``. Resuming then takes only this run's checkpoints and
            rotation removes only this run's; without it, checkpoints carry no run id and
            resume takes the newest intact one whoever wrote it.

    Training stops with :class:`~diffkit.errors.NonFiniteError` when the loss or the weights
    become NaN or infinite (checked whenever the loss is logged and before every checkpoint,
    so a non-finite state is never saved); the newest checkpoint then holds the last good
    weights. ``out_dir`` is locked (:mod:`~diffkit.training.run_lock`) while training.
    """

    def __init__(
        self,
        pipeline: Any,
        data: Any,
        config: TrainConfig,
        *,
        out_dir: str | os.PathLike[str] | None = None,
        meta: dict[str, Any] | None = None,
        progress: bool = True,
        preview: PreviewHook | None = None,
        device: torch.device | str | None = None,
        encoded: bool = False,
        distributed: DistributedContext | None = None,
        fsdp: bool = False,
        compile: bool = False,
        run: dict[str, Any] | None = None,
    ) -> None:
        self.config = config
        self.run = dict(run) if run is not None else None
        if self.run is not None and not isinstance(self.run.get("run_id"), str):
            raise ConfigError(f"run must be a record with a string run_id, got {run!r}")
        self.context = _context(distributed, device)
        self.device = self.context.device
        self.rank_batch = check_divisible(config.batch_size, self.context.world_size)
        self.data: InMemoryData = as_training_data(data)
        check_batch_memory(tuple(self.data.images.shape[1:]), self.rank_batch, self.device, self.data.images.dtype)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.meta = dict(meta or {})
        self.progress = progress and self.context.is_main
        self.preview = preview
        self.encoded = encoded
        self.pipeline = pipeline.to(self.device)
        if not any(p.requires_grad for p in self.pipeline.parameters()):
            raise ConfigError("the pipeline has no trainable parameters")
        self.channels_last = _prefer_channels_last(self.pipeline, self.device)
        self.ema = EMA(self.pipeline, config.ema_decay)
        # FSDP splits the EMA too; rank 0 keeps an unsharded CPU copy to gather it into
        self._export = copy.deepcopy(self.ema.module).cpu() if fsdp and self.context.is_main else None
        if compile:

            compile_module(self.pipeline.backbone)
        self.parallel = DataParallel(self.pipeline, self.context, fsdp=fsdp)
        self.parallel.shard_like(self.ema.module)  # under FSDP the EMA is split like the weights
        trainable = [p for p in self.pipeline.parameters() if p.requires_grad]  # DTensors after FSDP
        self.optimizer = torch.optim.AdamW(
            trainable, lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay,
            fused=self.device.type == "cuda",
        )
        self.step = 0
        self.cursor = 0  # examples of the global stream consumed (all ranks together)
        self.generator = torch.Generator(device=self.device)  # reseeded every step
        self.last_loss = math.nan
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)  # any non-finite loss so far
        self._last_checked_step = 0  # the newest step known to be finite
        self._fault_step = fault_step(self.context)

    # -- sizes -----------------------------------------------------------------------------

    @property
    def global_batch(self) -> int:
        """Examples per optimizer step over all ranks: per-rank batch × world size × accumulation."""
        return self.rank_batch * self.context.world_size * self.config.accumulation

    def describe_batch(self) -> str:
        world, accumulation = self.context.world_size, self.config.accumulation
        return (
            f"global batch {self.global_batch} = {self.rank_batch} per rank × {world} "
            f"rank{'s' if world > 1 else ''} × {accumulation} accumulation"
        )

    # -- checkpoints -----------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / CHECKPOINT_DIR

    def _state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "step": self.step,
            "cursor": self.cursor,
            "ema_updates": self.ema.updates,
            "last_loss": self.last_loss,
        }
        if not self.parallel.sharded:
            state["optimizer"] = self.optimizer.state_dict()
        return state

    def _meta(self) -> dict[str, Any]:
        meta = {
            "train_config": self.config.to_dict(),
            "world_size": self.context.world_size,
            "sharded": self.parallel.sharded,
            **self.meta,
        }
        if self.run is not None:
            meta["run"] = self.run
        return meta

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (every rank calls it; rank 0 writes).

        Returns the folder on rank 0, None on the others.
        """
        if self.checkpoint_dir is None:
            raise ConfigError("this trainer has no out_dir to save checkpoints in")
        self.check_finite()  # a non-finite state is never written
        if self.parallel.sharded:
            return self._save_sharded()
        folder = None
        if self.context.is_main:
            folder = save_checkpoint(
                self.checkpoint_dir, self.step,
                model=self.pipeline.state_dict(), ema=self.ema.state_dict(), state=self._state(),
                meta=self._meta(), keep_last=self.config.keep_last,
            )
        barrier()
        return folder

    def _save_sharded(self) -> Path | None:

        assert self.checkpoint_dir is not None
        staging = stage_checkpoint(self.checkpoint_dir, self.step) if self.context.is_main else None
        staging = broadcast_from_main(staging)  # one folder, written by every rank
        try:
            save_sharded(staging / SHARDED_DIR, model=self.parallel.forward_module, ema=self.ema.module,
                         optimizer=self.optimizer)
        except BaseException:
            if self.context.is_main:
                abandon_checkpoint(staging)
            raise
        barrier()  # every rank's slices are on disk before rank 0 makes the checkpoint visible
        folder = None
        if self.context.is_main:
            folder = commit_checkpoint(
                staging, self.step, state=self._state(), meta=self._meta(), keep_last=self.config.keep_last,
            )
        barrier()
        return folder

    def restore(self, folder: str | os.PathLike[str] | None = None) -> Path:
        """Load a checkpoint into this trainer (all ranks).

        Default: the newest intact checkpoint of this run in ``out_dir``; damaged ones and
        other runs' are skipped with a warning naming each (see
        :func:`~diffkit.training.checkpoints.newest_intact_checkpoint`).
        """
        if folder is None:
            if self.checkpoint_dir is None:
                raise CheckpointError("cannot resume: this trainer has no out_dir")
            run_id = None if self.run is None else self.run["run_id"]
            warn = None if self.context.is_main else (lambda message: None)
            folder, _ = newest_intact_checkpoint(
                self.checkpoint_dir, run_id=run_id, any_run=self.run is None, warn=warn
            )
        folder = Path(folder)
        step = checkpoint_step(folder)
        if step > self.config.steps:
            raise CheckpointError(
                f"the checkpoint {folder} is at step {step}, beyond this run's train.steps={self.config.steps}; "
                f"train to at least {step} steps (--steps {step} or more)"
            )
        loaded = load_checkpoint(folder)
        sharded = "sharded" in loaded
        if sharded != self.parallel.sharded:
            how = "with --fsdp (sharded)" if sharded else "without --fsdp (replicated)"
            raise CheckpointError(
                f"the checkpoint {folder} was written by a run {how}; resume it the same way "
                f"(this run is {'sharded' if self.parallel.sharded else 'not sharded'})"
            )
        if sharded:

            load_sharded(loaded["sharded"], model=self.parallel.forward_module, ema=self.ema.module,
                         optimizer=self.optimizer)
        else:

            what = f"the checkpoint {folder}"
            load_state_dict_checked(self.pipeline, loaded["model"], what=what)
            load_state_dict_checked(self.ema.module, loaded["ema"], what=what)
        state = loaded["state"]
        try:
            if not sharded:
                self.optimizer.load_state_dict(state["optimizer"])
            self.step, self.cursor = int(state["step"]), int(state["cursor"])
            self.ema.updates = int(state["ema_updates"])
            self.last_loss = float(state["last_loss"])
        except (KeyError, ValueError, TypeError, RuntimeError) as exc:
            raise CheckpointError(f"the training state in {folder} does not fit this run: {exc}") from exc
        if self.step != step:
            raise CheckpointError(f"the training state in {folder} says step {self.step}, the folder step {step}")
        self._last_checked_step = self.step
        written_by = loaded["meta"].get("world_size", 1)
        written_by = written_by if isinstance(written_by, int) and not isinstance(written_by, bool) else 1
        if written_by != self.context.world_size and self.context.is_main:
            print(
                f"resuming {folder.name}, written by {written_by} process(es), on {self.context.world_size}: "
                "the data order continues exactly; the per-rank noise streams are those of the new layout",
                file=sys.stderr,
            )
        return folder

    # -- the non-finite guard ---------------------------------------------------------------

    def check_finite(self) -> None:
        """Raise :class:`~diffkit.errors.NonFiniteError` when a loss since the last check, or a
        weight now, is NaN or infinite (one host read; every rank agrees on the answer)."""
        local = [getattr(p, "_local_tensor", p) for p in self.pipeline.parameters() if p.requires_grad]
        weights_ok = torch.stack([torch.isfinite(p).all() for p in local]).all() if local else torch.tensor(True)
        bad = (self._nonfinite | ~weights_ok.to(self.device)).float()
        if float(mean_across_ranks(bad)) > 0:
            self._raise_nonfinite("the loss or the weights")
        self._last_checked_step = self.step

    def _raise_nonfinite(self, what: str) -> None:
        found = list_checkpoints(self.checkpoint_dir) if self.checkpoint_dir is not None else []
        kept = f"the newest checkpoint, {found[-1]}, holds earlier weights" if found else "no checkpoint was written"
        raise NonFiniteError(
            f"training diverged: {what} became NaN or infinite between step {self._last_checked_step} and "
            f"step {self.step}; training stopped and nothing was saved for it ({kept}). Lower train.lr, "
            "keep train.grad_clip > 0, or check the data for NaN/inf"
        )

    # -- the loop --------------------------------------------------------------------------

    def _autocast(self) -> Any:
        return autocast(self.config.precision, self.device)

    def _reseed(self) -> None:
        """This step's random streams: noise/timesteps/CFG drops and dropout (see rng.py)."""
        seed = step_seed(self.config.seed, self.context.rank, self.step)
        self.generator.manual_seed(seed)
        torch.manual_seed(seed)

    def _micro_batch(self) -> tuple[torch.Tensor, Any]:
        """This rank's slice of the next global micro-batch: (inputs on the device, conditioning inputs)."""
        config = self.config
        indices = batch_indices(len(self.data), config.seed, self.cursor, config.batch_size)
        self.cursor += config.batch_size
        images, cond = self.data.batch(rank_slice(indices, self.context.rank, self.context.world_size))
        images = images.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        # conditioning inputs stay on the host: the conditioner checks them there and moves them
        return images, cond

    def train_step(self) -> torch.Tensor:
        """One optimizer step (``accumulation`` micro-batches); returns this rank's mean loss (a tensor)."""
        config = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = config.learning_rate(self.step)
        self._reseed()
        self.pipeline.train()
        total = torch.zeros((), device=self.device)
        for micro in range(config.accumulation):
            images, cond = self._micro_batch()
            with self.parallel.accumulating(sync=micro == config.accumulation - 1):
                with self._autocast():
                    loss = self.parallel.loss(images, cond, generator=self.generator, encoded=self.encoded)
                (loss / config.accumulation).backward()
            total += loss.detach()
        self._nonfinite |= ~torch.isfinite(total)  # read only when logging or saving (no sync here)
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], config.grad_clip
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.pipeline)
        self.step += 1
        return total / config.accumulation  # a tensor: read it only when logging (no sync per step)

    def ema_pipeline(self) -> Any:
        """The EMA weights as a plain pipeline for sampling and saving.

        Every rank must call it (an FSDP run gathers the shards); under FSDP only rank 0 gets
        the pipeline, the others None.
        """
        if not self.parallel.sharded:
            return self.ema.module

        full = gather_full_state(self.ema.module, main=self.context.is_main)
        if full is None:
            return None
        assert self._export is not None
        self._export.load_state_dict(full)  # the EMA pipeline's own keys (it is not the FSDP root)
        return self._export.to(self.device).eval()

    def _preview(self) -> None:
        pipeline = self.ema_pipeline()
        if self.context.is_main and self.preview is not None:
            self.preview(self.step, pipeline)
        barrier()

    def train(self, *, resume: bool = False) -> TrainResult:
        """Run until ``config.steps``; with ``resume`` continue from the newest intact checkpoint."""
        if self.out_dir is not None and self.context.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            with run_lock(self.out_dir):
                return self._train(resume=resume)
        return self._train(resume=resume)

    def _train(self, *, resume: bool) -> TrainResult:
        if resume:
            folder = self.restore()
            if self.context.is_main:
                print(f"resumed from {folder} (step {self.step})", file=sys.stderr, flush=True)
        config = self.config
        if self.context.is_main:
            print(f"training on {self.context.describe()}: {self.describe_batch()}", file=sys.stderr, flush=True)
        bar = _progress_bar(config.steps, self.step, self.progress)
        start, start_step = time.perf_counter(), self.step
        last = None
        try:
            while self.step < config.steps:
                last = self.train_step()
                if self.step % config.log_every == 0 or self.step == config.steps:
                    self.last_loss = float(mean_across_ranks(last))
                    if not math.isfinite(self.last_loss):
                        self._raise_nonfinite(f"the loss ({self.last_loss})")
                    if bar is not None:
                        bar.set_postfix(loss=f"{self.last_loss:.4f}", lr=f"{config.learning_rate(self.step - 1):.2e}")
                if bar is not None:
                    bar.update(1)
                if self.checkpoint_dir is not None and config.save_every and self.step % config.save_every == 0:
                    self.save()
                if self.step == self._fault_step:
                    die()
                if self.preview is not None and config.sample_every and self.step % config.sample_every == 0:
                    self._preview()
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - start
        checkpoint = None
        if self.checkpoint_dir is not None:
            saved_in_loop = last is not None and config.save_every and self.step % config.save_every == 0
            if not saved_in_loop and last is not None:  # (resumed at the last step: its checkpoint is there)
                self.save()
            found = list_checkpoints(self.checkpoint_dir)
            checkpoint = found[-1] if found else None
        if self.checkpoint_dir is None:
            self.check_finite()  # (a save has just checked it otherwise)
        previewed_in_loop = last is not None and config.sample_every and self.step % config.sample_every == 0
        if self.preview is not None and not previewed_in_loop:
            self._preview()
        images = (self.step - start_step) * self.global_batch
        return TrainResult(
            steps=self.step,
            final_loss=self.last_loss,
            seconds=seconds,
            images_per_second=images / seconds if seconds > 0 else math.nan,
            checkpoint=checkpoint,
        )


def _context(distributed: DistributedContext | None, device: torch.device | str | None) -> DistributedContext:
    if distributed is None:
        chosen = torch.device(device) if device is not None else default_device()
        return DistributedContext(device=chosen)
    if device is not None and torch.device(device) != distributed.device:
        raise ConfigError(
            f"device={device} differs from the distributed context's device {distributed.device}; pass one of them"
        )
    return distributed


def check_batch_memory(
    example_shape: tuple[int, ...], rank_batch: int, device: torch.device, dtype: torch.dtype = torch.float32
) -> None:
    """Refuse a micro-batch whose inputs alone cannot fit in ``device``'s memory (a floor:
    activations come on top); nothing is checked where the free memory cannot be told."""

    needed = rank_batch * math.prod(example_shape) * torch.empty((), dtype=dtype, device="meta").element_size()
    available = available_memory(device)
    if available is not None and needed > available:
        raise ConfigError(
            f"train.batch_size gives {rank_batch} examples of shape {example_shape} per rank; their inputs alone need "
            f"{needed / 1e9:.3g} GB on {device}, {available / 1e9:.3g} GB is available. Use a smaller "
            "train.batch_size (and train.accumulation to keep the effective batch)"
        )


def _prefer_channels_last(pipeline: Any, device: torch.device) -> bool:
    """On CUDA, convolutional backbones run channels-last (tensor-core friendly NHWC)."""
    if device.type != "cuda":
        return False

    return use_channels_last(pipeline.backbone)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # redraw every 5 s when the output is a log file rather than a terminal
    interval = 0.1 if sys.stderr.isatty() else 5.0
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, mininterval=interval)
