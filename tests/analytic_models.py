"""Tiny exact models for tests: data x0 ~ N(μ, s²) independently per element.

The exact denoiser is D(y, σ) = μ + s²/(s² + σ²)·(y − μ) (the posterior mean), and the
exact ε-, x0- and v-predicting networks on VP inputs follow from it.
"""

from __future__ import annotations

import numpy as np
import torch

MU, S = 0.3, 0.7


def denoiser_torch(y: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
    s2 = (sigma.to(y.dtype) ** 2).reshape(-1, *([1] * (y.ndim - 1)))
    return MU + S**2 / (S**2 + s2) * (y - MU)


def denoiser_numpy(y: np.ndarray, sigma: np.ndarray, cond=None) -> np.ndarray:
    s2 = (sigma**2).reshape(-1, *([1] * (y.ndim - 1)))
    return MU + S**2 / (S**2 + s2) * (y - MU)


class ExactVPModel(torch.nn.Module):
    """The exact ε/x0/v network for ``schedule`` (integer or fractional t)."""

    def __init__(self, schedule, prediction: str) -> None:
        super().__init__()
        self.schedule, self.prediction = schedule, prediction

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        sigma = self.schedule.t_to_sigma(t.to(torch.float64)).to(x_t.dtype)
        shape = (-1, *([1] * (x_t.ndim - 1)))
        abar = (1 / (1 + sigma**2)).reshape(shape)
        y = x_t / abar.sqrt()
        x0 = denoiser_torch(y, sigma)
        eps = (x_t - abar.sqrt() * x0) / (1 - abar).sqrt()
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return x0
        return abar.sqrt() * eps - (1 - abar).sqrt() * x0
