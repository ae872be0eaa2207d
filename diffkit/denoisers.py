"""Parameterization adapters: a network trained on discrete VP timesteps → ``D(x, σ, cond)``.

A network predicts ε, x0 or v from the VP input x_t at timestep t. Samplers only ever see
the σ-form denoiser D(y, σ) ≈ E[x0 | y = x0 + σε], so they never branch on the
parameterization (k-diffusion's ``DiscreteEpsDDPMDenoiser`` idea). With ᾱ = 1/(1+σ²):

    c_in = √ᾱ = 1/√(1+σ²),   x_t = c_in · y,   t = schedule.sigma_to_t(σ)
    ε-prediction:  D = y − σ · ε̂
    x0-prediction: D = x̂0
    v-prediction:  D = √ᾱ x_t − √(1−ᾱ) v̂ = c_in² · y − σ c_in · v̂     (v = √ᾱ ε − √(1−ᾱ) x0,
                   Salimans & Ho 2022)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from diffkit.errors import ShapeError, check_choice
from diffkit.schedules.base import DiscreteSchedule

PREDICTIONS = ("eps", "x0", "v")


class VPDenoiser(nn.Module):
    """Wraps ``model(x_t, t[, cond])`` trained on ``schedule`` into ``D(x, σ, cond)``.

    Args:
        model: the network; called as ``model(x_t, t)`` or ``model(x_t, t, cond)`` when a
            conditioning record is given. ``t`` has shape [B].
        schedule: the training schedule (gives the σ ↔ t map).
        prediction: ``"eps"``, ``"x0"`` or ``"v"``.
        quantize: round t to the nearest integer timestep (for networks that only saw
            integers); otherwise t is fractional between table entries.
    """

    def __init__(
        self, model: nn.Module, schedule: DiscreteSchedule, prediction: str = "eps", *, quantize: bool = False
    ) -> None:
        super().__init__()
        self.model = model
        self.schedule = schedule
        self.prediction = check_choice("prediction type", prediction, PREDICTIONS)
        self.quantize = quantize

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """x: [B, ...] in σ form; sigma: [B]. Returns the x0 estimate, shaped like x."""
        if sigma.shape != (x.shape[0],):
            raise ShapeError(f"sigma must have shape [batch] = [{x.shape[0]}], got {tuple(sigma.shape)}")
        s = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))  # [B, 1, 1, 1]
        c_in = torch.rsqrt(1 + s * s)
        t = self.schedule.sigma_to_t(sigma)
        if self.quantize:
            t = t.round().long()
        x_t = x * c_in
        out = self.model(x_t, t) if cond is None else self.model(x_t, t, cond)
        if out.shape != x.shape:
            raise ShapeError(
                f"the model returned shape {tuple(out.shape)} for input {tuple(x.shape)}; a "
                f"{self.prediction!r}-prediction model must return a tensor shaped like its input"
            )
        if self.prediction == "eps":
            return x - s * out
        if self.prediction == "x0":
            return out
        return c_in * c_in * x - s * c_in * out
