"""Exponential moving average of weights (Polyak averaging; used for sampling, as in DDPM/ADM/DiT).

    θ_ema ← d·θ_ema + (1 − d)·θ,   d = min(decay, (1 + n)/(10 + n)) after n updates

The warm-up (the second term, as in TensorFlow's ExponentialMovingAverage with num_updates)
lets the average follow the fast early changes instead of remembering the random init.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from diffkit.errors import ConfigError
from diffkit.validators import is_real


class EMA:
    """An EMA copy of ``model`` (same structure, no gradients, in eval mode).

    Parameters that are frozen when the EMA is made (``requires_grad=False``: a pipeline's
    autoencoder and text encoders) never change, so their average is themselves: the copy
    shares them with ``model`` instead of holding a second set (for a Stable Diffusion
    fine-tune the VAE and CLIP text encoder, 0.83 GB in float32; for Flux its T5-XXL, 19 GB).
    Consequently moving or casting :attr:`module` in place (``.to()``, ``.half()``) moves those
    shared parameters in ``model`` too: take a ``copy.deepcopy`` to use it elsewhere while
    ``model`` is still training. Unfreezing a shared parameter later is refused at the next
    :meth:`update`.

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
        # deepcopy returns an object found in its memo as it is: the frozen parameters are shared
        frozen: dict[int, Any] = {id(p): p for p in model.parameters() if not p.requires_grad}
        self.module = copy.deepcopy(model, memo=frozen).eval().requires_grad_(False)

    def current_decay(self) -> float:
        """The d of the next update."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One averaging step towards ``model``'s current weights; buffers are copied."""
        weight = 1 - self.current_decay()
        averaged = list(self.module.named_parameters())
        current = list(model.parameters())
        if len(averaged) != len(current):
            raise ConfigError("the EMA was made from a module with a different structure")
        # frozen parameters (an autoencoder inside a pipeline) do not change: skip them
        # FSDP-sharded weights (DTensors) are averaged shard by shard: both sides share one layout
        floating = []
        for (name, a), c in zip(averaged, current):
            if a is c and c.requires_grad:
                raise ConfigError(
                    f"parameter {name!r} was frozen when the EMA was made, so the EMA shares it instead of "
                    "averaging it, and it now requires gradients; choose what trains before making the EMA"
                )
            if a is not c and c.requires_grad and a.is_floating_point():
                floating.append((_local(a), _local(c.detach())))
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
