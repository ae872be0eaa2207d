"""Euler's method on the probability-flow ODE, with EDM's optional churn (Karras et al. 2022, Alg. 2).

σ form (x = x0 + σ·ε, x of shape [B, ...]); the probability-flow ODE is

    dy/dσ = (y − D(y, σ))/σ                                   (Karras et al. 2022, eq. 3)

The Euler step ŷ + (σ' − σ̂)(ŷ − D)/σ̂ is written as D + (σ'/σ̂)(ŷ − D): the same number,
but exact at σ' = 0 (it returns D) and bit-identical to DDIM with η = 0, which is this
very method (Song et al. 2021, eq. 12 in σ form). Churn: :mod:`diffkit.samplers.churn`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from diffkit.samplers.churn import churned_loop
from diffkit.samplers.common import (
    Callback,
    Denoiser,
    Generator,
    NoiseSampler,
    float32_state,
)


def euler_step(
    x: torch.Tensor, denoised: torch.Tensor, sigma_hat: float, sigma_next: float,
    evaluate: Callable[[torch.Tensor, float], torch.Tensor],
) -> torch.Tensor:
    """y' = ŷ + (σ' − σ̂)·(ŷ − D)/σ̂ = D + (σ'/σ̂)·(ŷ − D), as a lerp exactly like DDIM's."""
    return torch.lerp(denoised, x, sigma_next / sigma_hat)


@float32_state
def euler(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Any = None,
    generator: Generator = None,
    callback: Callback | None = None,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = math.inf,
    s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """Euler's method on the probability-flow ODE with optional EDM churn (Karras et al. 2022, Alg. 2).

    Alg. 2 without the Heun correction; deterministic, and bit-identical to DDIM with η = 0,
    when s_churn = 0.

    Args:
        denoiser: ``denoiser(x, sigma[B], cond) -> x0 estimate``.
        x: the starting point in σ form, ``noise * sigmas[0]``, shape [B, ...].
        sigmas: decreasing σ levels ending at 0 (any device; read once as float64).
        s_churn, s_tmin, s_tmax, s_noise: EDM's churn (see :class:`~diffkit.samplers.churn.ChurnOptions`).
        noise_sampler: ``(sigma, sigma_hat) -> N(0, I) like x`` for the churn noise;
            defaults to ``generator``.
    """
    return churned_loop(
        denoiser, x, sigmas, euler_step, cond=cond, generator=generator, callback=callback,
        s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise, noise_sampler=noise_sampler,
    )
