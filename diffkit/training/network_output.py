"""What every training loss does around the network call: move tensors, call, check the output.

Shared by the VP objective (:mod:`diffkit.training.objectives`) and the flow-matching one
(:mod:`diffkit.training.flow_objective`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from diffkit.errors import ShapeError


def onto(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; host→GPU copies are asynchronous (never a device→host copy)."""
    return tensor.to(device, non_blocking=tensor.device.type == "cpu" and device.type == "cuda")


def call_network(
    model: Callable[..., torch.Tensor], x_t: torch.Tensor, t: torch.Tensor, cond: Any, *, learned_variance: bool = False
) -> torch.Tensor:
    """``model(x_t, t[, cond])`` checked to be [B, C, ...] like x_t ([B, 2C, ...] with a learned
    variance), in float32 at least (bf16/fp16 outputs of autocast are upcast for the loss)."""
    out = model(x_t, t) if cond is None else model(x_t, t, cond)
    batch, channels = x_t.shape[0], x_t.shape[1]
    expected = (batch, 2 * channels if learned_variance else channels, *x_t.shape[2:])
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ShapeError(
            f"the network returned shape {got} for input {tuple(x_t.shape)}; expected {expected}"
            + (" (the prediction, then C variance channels)" if learned_variance else "")
        )
    return out.float() if out.dtype in (torch.float16, torch.bfloat16) else out
