"""Two-stage solvers of the probability-flow ODE: Heun (EDM) and DPM-Solver-2 (k-diffusion).

σ form (x = x0 + σ·ε, x of shape [B, ...]), dy/dσ = d(y, σ) = (y − D(y, σ))/σ. Each step
σ → σ' first applies EDM's optional churn (σ̂ = σ(1 + γ), see :mod:`diffkit.samplers.euler`),
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
from typing import Any

import torch

from diffkit.samplers.common import (
    Callback,
    Denoiser,
    Generator,
    NoiseSampler,
    default_noise_sampler,
    denoise,
    report,
    sigma_levels,
    to_d,
)
from diffkit.samplers.euler import churn, churn_gamma, check_churn


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
        s_churn, s_tmin, s_tmax, s_noise: EDM's churn (see :class:`~diffkit.samplers.euler.ChurnOptions`).
        noise_sampler: ``(sigma, sigma_hat) -> N(0, I) like x`` for the churn noise;
            defaults to ``generator``.
    """
    s_churn, s_tmin, s_tmax, s_noise = check_churn(s_churn, s_tmin, s_tmax, s_noise)
    levels = sigma_levels(sigmas)  # σ_0 > … > σ_N = 0 as Python floats: no device sync per step
    steps = len(levels) - 1  # N, the γ denominator
    noise = noise_sampler or default_noise_sampler(x, generator)  # z ~ N(0, I), [B, ...]
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        x, sigma_hat = churn(x, sigma, churn_gamma(sigma, steps, s_churn, s_tmin, s_tmax), s_noise, noise)
        denoised = denoise(denoiser, x, sigma_hat, cond)  # D(ŷ, σ̂), [B, ...]
        if sigma_next == 0:
            # Euler into σ = 0: ŷ + (0 − σ̂)(ŷ − D)/σ̂ = D (the corrector would divide by σ' = 0)
            x = denoised
        else:
            # Heun: Euler predictor y₂ at σ', then the mean of the slopes at both ends
            d = to_d(x, sigma_hat, denoised)  # dy/dσ at (ŷ, σ̂), [B, ...]
            x_2 = torch.lerp(denoised, x, sigma_next / sigma_hat)  # D + (σ'/σ̂)(ŷ − D)
            d_2 = to_d(x_2, sigma_next, denoise(denoiser, x_2, sigma_next, cond))  # slope at (y₂, σ')
            x = x + (0.5 * (sigma_next - sigma_hat)) * (d + d_2)
        report(callback, x, i, sigma, denoised, sigma_hat)
    return x


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
        s_churn, s_tmin, s_tmax, s_noise: EDM's churn (see :class:`~diffkit.samplers.euler.ChurnOptions`).
        noise_sampler: ``(sigma, sigma_hat) -> N(0, I) like x`` for the churn noise;
            defaults to ``generator``.
    """
    s_churn, s_tmin, s_tmax, s_noise = check_churn(s_churn, s_tmin, s_tmax, s_noise)
    levels = sigma_levels(sigmas)  # σ_0 > … > σ_N = 0 as Python floats: no device sync per step
    steps = len(levels) - 1  # N, the γ denominator
    noise = noise_sampler or default_noise_sampler(x, generator)  # z ~ N(0, I), [B, ...]
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        x, sigma_hat = churn(x, sigma, churn_gamma(sigma, steps, s_churn, s_tmin, s_tmax), s_noise, noise)
        denoised = denoise(denoiser, x, sigma_hat, cond)  # D(ŷ, σ̂), [B, ...]
        if sigma_next == 0:
            # Euler into σ = 0 (log σ' = −∞: no midpoint): y' = D
            x = denoised
        else:
            # DPM-Solver-2: Euler to the log-σ midpoint σ_m, then the whole step with its slope
            sigma_mid = math.exp(0.5 * (math.log(sigma_hat) + math.log(sigma_next)))
            x_2 = torch.lerp(denoised, x, sigma_mid / sigma_hat)  # D + (σ_m/σ̂)(ŷ − D)
            d_2 = to_d(x_2, sigma_mid, denoise(denoiser, x_2, sigma_mid, cond))  # slope at (y₂, σ_m)
            x = x + (sigma_next - sigma_hat) * d_2
        report(callback, x, i, sigma, denoised, sigma_hat)
    return x
