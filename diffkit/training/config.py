"""``TrainConfig``: the optimisation and bookkeeping settings of a training run (plain data)."""

from __future__ import annotations

import math
from typing import Any

import attrs

from diffkit.errors import ConfigError
from diffkit.runtime.precision import PRECISIONS
from diffkit.validators import int_at_least, is_real, one_of, real_in

LR_SCHEDULES = ("constant", "cosine")








def _betas(value: Any) -> tuple[float, float]:
    """AdamW's (β1, β2): two finite numbers in [0, 1), from a list or tuple."""
    ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(is_real(b) and 0 <= b < 1 for b in value)
    if not ok:
        raise ConfigError(f"adam_betas must be two numbers in [0, 1), e.g. [0.9, 0.999]; got {value!r}")
    return (float(value[0]), float(value[1]))


@attrs.frozen(kw_only=True)
class TrainConfig:
    """Optimisation and bookkeeping settings of a training run.

    Batches are global: one optimizer step sees ``batch_size × accumulation`` examples
    whatever the number of processes. Under ``torchrun`` each of the N ranks takes
    ``batch_size / N`` of every micro-batch (N must divide it), so a recipe trains the same
    model on 1 or 8 GPUs, only faster.
    """

    steps: int = attrs.field(default=2000, validator=int_at_least(1))
    """Optimizer steps."""
    batch_size: int = attrs.field(default=128, validator=int_at_least(1))
    """Examples per micro-batch, over all ranks together."""
    accumulation: int = attrs.field(default=1, validator=int_at_least(1))
    """Micro-batches whose gradients are summed into one optimizer step."""
    lr: float = attrs.field(default=1e-3, validator=real_in(0, 1))
    """Peak learning rate of AdamW."""
    lr_schedule: str = attrs.field(default="cosine", validator=one_of(LR_SCHEDULES))
    """After warm-up: constant, or cosine decay to ``min_lr_ratio``·lr at the last step."""
    min_lr_ratio: float = attrs.field(default=0.1, validator=real_in(0, 1))
    warmup_steps: int = attrs.field(default=100, validator=int_at_least(0))
    """Linear warm-up from 0 to ``lr``."""
    weight_decay: float = attrs.field(default=0.0, validator=real_in(0, 1))
    adam_betas: tuple[float, float] = attrs.field(default=(0.9, 0.999), converter=_betas)
    grad_clip: float = attrs.field(default=1.0, validator=real_in(0))
    """Clip the global gradient norm to this value (0 = off)."""
    ema_decay: float = attrs.field(default=0.999, validator=real_in(0, 1, high_open=True))
    seed: int = attrs.field(default=0, validator=int_at_least(0, at_most=2**63 - 1))
    save_every: int = attrs.field(default=500, validator=int_at_least(0))
    """Checkpoint every N steps (0 = only at the end)."""
    keep_last: int = attrs.field(default=2, validator=int_at_least(1))
    """Checkpoints kept; older ones are deleted once a newer one is complete."""
    sample_every: int = attrs.field(default=0, validator=int_at_least(0))
    """Call the preview hook (a sample grid) every N steps (0 = only at the end)."""
    log_every: int = attrs.field(default=25, validator=int_at_least(1))
    precision: str = attrs.field(default="auto", validator=one_of(PRECISIONS))
    """``auto``: bf16 autocast on CUDA, fp32 on the CPU."""

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
