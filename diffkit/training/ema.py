"""Exponential moving average of weights (Polyak averaging; used for sampling, as in DDPM/ADM/DiT).

    θ_ema ← d·θ_ema + (1 − d)·θ,   d = min(decay, (1 + n)/(10 + n)) after n updates

The warm-up (the second term, as in TensorFlow's ExponentialMovingAverage with num_updates)
lets the average follow the fast early changes instead of remembering the random init.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from diffkit.errors import ConfigError
from diffkit.validators import is_real


class EMA:
    """An EMA copy of ``model`` (same structure, no gradients, in eval mode).

    Args:
        model: the trained module.
        decay: d, in [0, 1); 0 copies the weights at every update.
        warmup: use the (1 + n)/(10 + n) warm-up.
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = True) -> None:
        if not is_real(decay) or not 0 <= decay < 1:
            raise ConfigError(f"EMA decay must be a number in [0, 1), got {decay!r}")
        self.decay = float(decay)
        self.warmup = warmup
        self.updates = 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The d of the next update."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One averaging step towards ``model``'s current weights; buffers are copied."""
        weight = 1 - self.current_decay()
        averaged = list(self.module.parameters())
        current = list(model.parameters())
        if len(averaged) != len(current):
            raise ConfigError("the EMA was made from a module with a different structure")
        # frozen parameters (an autoencoder inside a pipeline) do not change: skip them
        # FSDP-sharded weights (DTensors) are averaged shard by shard: both sides share one layout
        floating = [
            (_local(a), _local(c.detach()))
            for a, c in zip(averaged, current)
            if c.requires_grad and a.is_floating_point()
        ]
        if floating:
            torch._foreach_lerp_([a for a, _ in floating], [c.to(a.dtype) for a, c in floating], weight)
        for a, c in zip(self.module.buffers(), model.buffers()):
            a.copy_(c)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged module's state dict."""
        return self.module.state_dict()


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor; any other tensor itself."""
    to_local = getattr(tensor, "to_local", None)
    return to_local() if callable(to_local) else tensor
