"""Two-stage solvers of the probability-flow ODE: Heun (EDM) and DPM-Solver-2 (k-diffusion).

σ form (x = x0 + σ·ε, x of shape [B, ...]), dy/dσ = d(y, σ) = (y − D(y, σ))/σ. Each step
σ → σ' first applies EDM's optional churn (σ̂ = σ(1 + γ), see :mod:`diffkit.samplers.churn`),
then, with d = d(ŷ, σ̂) and h = σ' − σ̂:

    heun  (Karras et al. 2022, Alg. 2, lines 7–11)
        y₂ = ŷ + h·d                    Euler predictor at σ'
        y' = ŷ + h·(d + d(y₂, σ'))/2    trapezoidal corrector

    dpm2  (k-diffusion's DPM-Solver-2; Lu et al. 2022, Alg. 1 with r₁ = ½, written in σ)
        σ_m = exp((log σ̂ + log σ')/2)   midpoint in log σ (= in λ = −log σ)
        y₂ = ŷ + (σ_m − σ̂)·d            Euler to the midpoint
        y' = ŷ + h·d(y₂, σ_m)           full step with the midpoint slope

Both are second order and take two denoiser calls per step, except the last step into
σ' = 0: d(·, 0) and log 0 are undefined there, so it is one Euler step, y' = D(ŷ, σ̂).
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
    to_d,
)

Evaluate = Callable[[torch.Tensor, float], torch.Tensor]  # (y, σ) -> D(y, σ)


def heun_step(x: torch.Tensor, denoised: torch.Tensor, sigma_hat: float, sigma_next: float, evaluate: Evaluate) -> torch.Tensor:
    """One Heun step (ŷ, σ̂) → σ' given D(ŷ, σ̂); Euler into σ' = 0."""
    if sigma_next == 0:
        # Euler into σ = 0: ŷ + (0 − σ̂)(ŷ − D)/σ̂ = D (the corrector would divide by σ' = 0)
        return denoised
    # Heun: Euler predictor y₂ at σ', then the mean of the slopes at both ends
    d = to_d(x, sigma_hat, denoised)  # dy/dσ at (ŷ, σ̂), [B, ...]
    x_2 = torch.lerp(denoised, x, sigma_next / sigma_hat)  # D + (σ'/σ̂)(ŷ − D)
    d_2 = to_d(x_2, sigma_next, evaluate(x_2, sigma_next))  # slope at (y₂, σ')
    return x + (0.5 * (sigma_next - sigma_hat)) * (d + d_2)


def dpm2_step(x: torch.Tensor, denoised: torch.Tensor, sigma_hat: float, sigma_next: float, evaluate: Evaluate) -> torch.Tensor:
    """One DPM-Solver-2 step (ŷ, σ̂) → σ' given D(ŷ, σ̂); Euler into σ' = 0."""
    if sigma_next == 0:
        # Euler into σ = 0 (log σ' = −∞: no midpoint): y' = D
        return denoised
    # DPM-Solver-2: Euler to the log-σ midpoint σ_m, then the whole step with its slope
    sigma_mid = math.exp(0.5 * (math.log(sigma_hat) + math.log(sigma_next)))
    x_2 = torch.lerp(denoised, x, sigma_mid / sigma_hat)  # D + (σ_m/σ̂)(ŷ − D)
    d_2 = to_d(x_2, sigma_mid, evaluate(x_2, sigma_mid))  # slope at (y₂, σ_m)
    return x + (sigma_next - sigma_hat) * d_2


@float32_state
def heun(
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
    """Heun's 2nd-order method on the probability-flow ODE with optional churn (Karras et al. 2022, Alg. 2).

    Euler for the last step into σ = 0. Deterministic when s_churn = 0.

    Args:
        denoiser: ``denoiser(x, sigma[B], cond) -> x0 estimate``.
        x: the starting point in σ form, ``noise * sigmas[0]``, shape [B, ...].
        sigmas: decreasing σ levels ending at 0 (any device; read once as float64).
        s_churn, s_tmin, s_tmax, s_noise: EDM's churn (see :class:`~diffkit.samplers.churn.ChurnOptions`).
        noise_sampler: ``(sigma, sigma_hat) -> N(0, I) like x`` for the churn noise;
            defaults to ``generator``.
    """
    return churned_loop(
        denoiser, x, sigmas, heun_step, cond=cond, generator=generator, callback=callback,
        s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise, noise_sampler=noise_sampler,
    )


@float32_state
def dpm2(
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
    """DPM-Solver-2 with the midpoint in log σ, as in k-diffusion (Lu et al. 2022), with optional churn.

    Euler for the last step into σ = 0. Deterministic when s_churn = 0.

    Args:
        denoiser: ``denoiser(x, sigma[B], cond) -> x0 estimate``.
        x: the starting point in σ form, ``noise * sigmas[0]``, shape [B, ...].
        sigmas: decreasing σ levels ending at 0 (any device; read once as float64).
        s_churn, s_tmin, s_tmax, s_noise: EDM's churn (see :class:`~diffkit.samplers.churn.ChurnOptions`).
        noise_sampler: ``(sigma, sigma_hat) -> N(0, I) like x`` for the churn noise;
            defaults to ``generator``.
    """
    return churned_loop(
        denoiser, x, sigmas, dpm2_step, cond=cond, generator=generator, callback=callback,
        s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=s_noise, noise_sampler=noise_sampler,
    )
