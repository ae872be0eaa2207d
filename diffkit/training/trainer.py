"""The training loop: AdamW, LR warm-up, clipping, accumulation, EMA, checkpoints, resume.

Determinism: everything random is drawn from generators seeded by ``TrainConfig.seed`` —
the batch order (:func:`~diffkit.training.data.batch_indices`), the noise levels, ε and the
conditioner's CFG drops (one CPU ``torch.Generator``), and dropout (torch's global RNG,
seeded at the start). All of their states go into each checkpoint, so ``resume=True``
continues bit for bit: on the CPU the weights after N steps are identical whether or not the
run was interrupted (a test checks it).

Precision: fp32 on the CPU; on CUDA the backbone runs under bf16 autocast by default while
the schedule, loss and optimizer stay fp32 (``precision="fp32"`` turns autocast off).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import attrs
import torch

from diffkit.errors import CheckpointError, ConfigError
from diffkit.training.checkpoints import (
    CHECKPOINT_DIR,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from diffkit.training.data import InMemoryData, as_training_data, batch_indices
from diffkit.training.ema import EMA

PRECISIONS = ("auto", "fp32", "bf16")
LR_SCHEDULES = ("constant", "cosine")


def _int_at_least(minimum: int) -> Callable[[Any, attrs.Attribute, Any], None]:
    def validate(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{attribute.name} must be an integer ≥ {minimum}, got {value!r}")

    return validate


def _number_in(low: float, high: float, *, high_open: bool = False) -> Callable[[Any, attrs.Attribute, Any], None]:
    def validate(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        ok = ok and low <= value and (value < high if high_open else value <= high)
        if not ok:
            bracket = ")" if high_open else "]"
            raise ConfigError(f"{attribute.name} must be a number in [{low}, {high}{bracket}, got {value!r}")

    return validate


def _one_of(valid: tuple[str, ...]) -> Callable[[Any, attrs.Attribute, Any], None]:
    def validate(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        from diffkit.errors import check_choice

        check_choice(attribute.name, value, valid)

    return validate


@attrs.frozen(kw_only=True)
class TrainConfig:
    """Optimisation and bookkeeping settings of a training run.

    The global batch is ``batch_size × accumulation`` (× the world size when distributed).
    """

    steps: int = attrs.field(default=2000, validator=_int_at_least(1))
    """Optimizer steps."""
    batch_size: int = attrs.field(default=128, validator=_int_at_least(1))
    """Examples per micro-batch."""
    accumulation: int = attrs.field(default=1, validator=_int_at_least(1))
    """Micro-batches whose gradients are summed into one optimizer step."""
    lr: float = attrs.field(default=1e-3, validator=_number_in(0, 1))
    """Peak learning rate of AdamW."""
    lr_schedule: str = attrs.field(default="cosine", validator=_one_of(LR_SCHEDULES))
    """After warm-up: constant, or cosine decay to ``min_lr_ratio``·lr at the last step."""
    min_lr_ratio: float = attrs.field(default=0.1, validator=_number_in(0, 1))
    warmup_steps: int = attrs.field(default=100, validator=_int_at_least(0))
    """Linear warm-up from 0 to ``lr``."""
    weight_decay: float = attrs.field(default=0.0, validator=_number_in(0, 1))
    adam_betas: tuple[float, float] = attrs.field(default=(0.9, 0.999), converter=tuple)
    grad_clip: float = attrs.field(default=1.0, validator=_number_in(0, math.inf, high_open=True))
    """Clip the global gradient norm to this value (0 = off)."""
    ema_decay: float = attrs.field(default=0.999, validator=_number_in(0, 1, high_open=True))
    seed: int = attrs.field(default=0, validator=_int_at_least(0))
    save_every: int = attrs.field(default=500, validator=_int_at_least(0))
    """Checkpoint every N steps (0 = only at the end)."""
    keep_last: int = attrs.field(default=2, validator=_int_at_least(1))
    """Checkpoints kept; older ones are deleted once a newer one is complete."""
    sample_every: int = attrs.field(default=0, validator=_int_at_least(0))
    """Call the preview hook (a sample grid) every N steps (0 = only at the end)."""
    log_every: int = attrs.field(default=25, validator=_int_at_least(1))
    precision: str = attrs.field(default="auto", validator=_one_of(PRECISIONS))
    """``auto``: bf16 autocast on CUDA, fp32 on the CPU."""

    def __attrs_post_init__(self) -> None:
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise ConfigError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")

    def to_dict(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["adam_betas"] = list(self.adam_betas)
        return data

    def learning_rate(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.lr_schedule == "constant":
            return self.lr
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        floor = self.lr * self.min_lr_ratio
        return floor + (self.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@attrs.frozen
class TrainResult:
    """What :meth:`Trainer.train` returns."""

    steps: int
    final_loss: float
    seconds: float
    images_per_second: float
    checkpoint: Path | None


PreviewHook = Callable[[int, Any], None]
"""``hook(step, ema_pipeline)``: called every ``sample_every`` steps and at the end."""


class Trainer:
    """Trains a :class:`~diffkit.Pipeline` on in-memory data.

    Args:
        pipeline: the pipeline to train (its backbone and conditioner are optimized).
        data: training data (see :func:`~diffkit.training.data.as_training_data`).
        config: a :class:`TrainConfig`.
        out_dir: where checkpoints go (``out_dir/checkpoints``); None keeps nothing on disk.
        meta: extra JSON-ready information stored in every checkpoint (e.g. the recipe).
        progress: show a progress bar with the loss and it/s.
        preview: a :data:`PreviewHook`.
        device: where to train (default: CUDA when available).
        encoded: the data are already in the backbone's space (pre-encoded latents).
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
    ) -> None:
        self.config = config
        self.device = torch.device(device) if device is not None else _default_device()
        self.pipeline = pipeline.to(self.device)
        self.data: InMemoryData = as_training_data(data)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.meta = dict(meta or {})
        self.progress = progress
        self.preview = preview
        self.encoded = encoded
        trainable = [p for p in self.pipeline.parameters() if p.requires_grad]
        if not trainable:
            raise ConfigError("the pipeline has no trainable parameters")
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            trainable, lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay, fused=fused
        )
        self.ema = EMA(self.pipeline, config.ema_decay)
        self.step = 0
        self.cursor = 0  # examples consumed from the batch stream
        self.generator = torch.Generator().manual_seed(config.seed)
        self.last_loss = math.nan

    # -- checkpoints ---------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path | None:
        return None if self.out_dir is None else self.out_dir / CHECKPOINT_DIR

    def save(self) -> Path:
        """Write a checkpoint of the current step (see :mod:`diffkit.training.checkpoints`)."""
        if self.checkpoint_dir is None:
            raise ConfigError("this trainer has no out_dir to save checkpoints in")
        state = {
            "step": self.step,
            "cursor": self.cursor,
            "ema_updates": self.ema.updates,
            "last_loss": self.last_loss,
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return save_checkpoint(
            self.checkpoint_dir, self.step,
            model=self.pipeline.state_dict(), ema=self.ema.state_dict(), state=state,
            meta={"train_config": self.config.to_dict(), **self.meta}, keep_last=self.config.keep_last,
        )

    def restore(self, folder: str | os.PathLike[str] | None = None) -> Path:
        """Load a checkpoint (default: the latest in ``out_dir``) into this trainer."""
        if folder is None:
            if self.checkpoint_dir is None:
                raise CheckpointError("cannot resume: this trainer has no out_dir")
            folder = latest_checkpoint(self.checkpoint_dir)
        folder = Path(folder)
        loaded = load_checkpoint(folder)
        from diffkit.checkpoints import load_state_dict_checked

        what = f"the checkpoint {folder}"
        load_state_dict_checked(self.pipeline, loaded["model"], what=what)
        load_state_dict_checked(self.ema.module, loaded["ema"], what=what)
        state = loaded["state"]
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.step, self.cursor = int(state["step"]), int(state["cursor"])
            self.ema.updates = int(state["ema_updates"])
            self.last_loss = float(state["last_loss"])
            self.generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            if "cuda_rng" in state and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda_rng"])
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"the training state in {folder} does not fit this run: {exc}") from exc
        return folder

    # -- the loop --------------------------------------------------------------------------

    def _autocast(self) -> Any:
        use_bf16 = self.device.type == "cuda" and self.config.precision in ("auto", "bf16")
        if self.config.precision == "bf16" and self.device.type != "cuda":
            raise ConfigError("precision='bf16' needs a CUDA device; on the CPU training runs in fp32")
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16)

    def train_step(self) -> torch.Tensor:
        """One optimizer step (``accumulation`` micro-batches); returns the mean loss (a tensor)."""
        config = self.config
        for group in self.optimizer.param_groups:
            group["lr"] = config.learning_rate(self.step)
        self.pipeline.train()
        total = torch.zeros((), device=self.device)
        for _ in range(config.accumulation):
            indices = batch_indices(len(self.data), config.seed, self.cursor, config.batch_size)
            self.cursor += config.batch_size
            images, cond = self.data.batch(indices)
            images = images.to(self.device, non_blocking=True)
            if isinstance(cond, torch.Tensor):
                cond = cond.to(self.device, non_blocking=True)
            with self._autocast():
                loss, _ = self.pipeline.loss(images, cond, generator=self.generator, encoded=self.encoded)
            (loss / config.accumulation).backward()
            total += loss.detach()
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], config.grad_clip
            )
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.update(self.pipeline)
        self.step += 1
        return total / config.accumulation  # a tensor: read it only when logging (no sync per step)

    def train(self, *, resume: bool = False) -> TrainResult:
        """Run until ``config.steps``; with ``resume`` continue from the latest checkpoint."""
        if resume:
            self.restore()
        else:
            torch.manual_seed(self.config.seed)  # dropout and other global-RNG draws
        config = self.config
        bar = _progress_bar(config.steps, self.step, self.progress)
        start, start_step = time.perf_counter(), self.step
        last = None
        try:
            while self.step < config.steps:
                last = self.train_step()
                if self.step % config.log_every == 0 or self.step == config.steps:
                    self.last_loss = float(last)
                    if bar is not None:
                        bar.set_postfix(loss=f"{self.last_loss:.4f}", lr=f"{config.learning_rate(self.step - 1):.2e}")
                if bar is not None:
                    bar.update(1)
                if self.checkpoint_dir is not None and config.save_every and self.step % config.save_every == 0:
                    self.save()
                if self.preview is not None and config.sample_every and self.step % config.sample_every == 0:
                    self.preview(self.step, self.ema.module)
        finally:
            if bar is not None:
                bar.close()
        seconds = time.perf_counter() - start
        if last is not None:
            self.last_loss = float(last)
        checkpoint = None
        if self.checkpoint_dir is not None:
            saved_in_loop = last is not None and config.save_every and self.step % config.save_every == 0
            checkpoint = latest_checkpoint(self.checkpoint_dir) if saved_in_loop else self.save()
        previewed_in_loop = last is not None and config.sample_every and self.step % config.sample_every == 0
        if self.preview is not None and not previewed_in_loop:
            self.preview(self.step, self.ema.module)
        steps_run = self.step - start_step
        images = steps_run * config.batch_size * config.accumulation
        return TrainResult(
            steps=self.step,
            final_loss=self.last_loss,
            seconds=seconds,
            images_per_second=images / seconds if seconds > 0 else math.nan,
            checkpoint=checkpoint,
        )


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _progress_bar(total: int, initial: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    import sys

    # redraw every 5 s when the output is a log file rather than a terminal
    interval = 0.1 if sys.stderr.isatty() else 5.0
    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True, mininterval=interval)
