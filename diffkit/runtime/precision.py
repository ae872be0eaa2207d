"""Mixed precision: which precision a backbone runs in, for training and for sampling.

``"auto"`` means bf16 autocast on CUDA and fp32 elsewhere; ``"fp32"`` turns autocast off;
``"bf16"`` asks for it and needs a CUDA device. Only the *network* runs in bf16: autocast runs
its matmuls, convolutions and attention on bf16 tensor cores, while the schedule, the loss, the
optimizer and the sampler keep their fp32/fp64 arithmetic — a sampler steps with the network's
output cast back to float32 (:class:`BF16Network`), so σ-steps that differ by 1e-4 are not
rounded away in bf16's 8-bit mantissa.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from diffkit.errors import ConfigError, check_choice

PRECISIONS = ("auto", "fp32", "bf16")


def bf16_enabled(precision: str, device: torch.device | str) -> bool:
    """Whether ``precision`` means bf16 autocast on ``device`` (``"bf16"`` off CUDA is an error)."""
    check_choice("precision", precision, PRECISIONS)
    on_cuda = torch.device(device).type == "cuda"
    if precision == "bf16" and not on_cuda:
        raise ConfigError(f"precision='bf16' needs a CUDA device, got {device}; on the CPU diffkit runs fp32")
    return on_cuda and precision in ("auto", "bf16")


def autocast(precision: str, device: torch.device | str) -> Any:
    """The autocast context of ``precision`` on ``device`` (a disabled one for fp32)."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_enabled(precision, device))


class BF16Network(nn.Module):
    """``network(x, …)`` under bf16 autocast, its output returned in x's dtype (float32).

    The wrapper a sampler sees instead of the backbone: the network is fast, the arithmetic
    around it stays in full precision. The wrapped module is the same object (no copy).
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=torch.bfloat16):
            out = self.network(x, *args, **kwargs)
        return out.to(x.dtype) if out.is_floating_point() else out
