"""Ancestral DDPM sampling (Ho et al. 2020, Alg. 2) in σ form, any timestep spacing.

A jump t → t' between two spaced timesteps has β = 1 − ᾱ_t/ᾱ_t'. The posterior
q(x_t' | x_t, x̂0) (DDPM eq. 6–7), divided by √ᾱ_t' into σ form (σ² = (1−ᾱ)/ᾱ), is

    mean  y' = D + (σ'²/σ²) · (y − D)
    var   "small" (β̃):  σ_up² = σ'² (σ² − σ'²)/σ²            (= DDIM η = 1)
          "large" (β):   σ_up² = (σ² − σ'²)(1 + σ'²)/(1 + σ²)

and the last step into σ' = 0 adds no noise (Alg. 2: z = 0 at t = 1).
"""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch

from diffkit.errors import check_choice
from diffkit.samplers.common import Callback, Denoiser, Generator, NoiseSampler, ancestral_loop

VARIANCES = ("small", "large")


@attrs.frozen(kw_only=True)
class DDPMOptions:
    """Options of :func:`ddpm`."""

    variance: str = attrs.field(default="small", validator=lambda _i, _a, v: check_choice("DDPM variance", v, VARIANCES))
    """``"small"``: posterior variance β̃ (DDPM's σ² = β̃); ``"large"``: σ² = β."""


def posterior_noise(sigma: float, sigma_next: float, variance: str) -> float:
    """σ_up, the standard deviation (in σ form) of the noise added by one DDPM step."""
    if sigma_next == 0:
        return 0.0
    if variance == "small":
        return sigma_next * math.sqrt(sigma**2 - sigma_next**2) / sigma
    return math.sqrt((sigma**2 - sigma_next**2) * (1 + sigma_next**2) / (1 + sigma**2))


def ddpm(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Any = None,
    generator: Generator = None,
    callback: Callback | None = None,
    variance: str = "small",
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020) with fixed variance β̃ ("small") or β ("large").

    Args:
        denoiser: ``denoiser(x, sigma[B], cond) -> x0 estimate``.
        x: the starting point in σ form, ``noise * sigmas[0]``, shape [B, ...].
        sigmas: decreasing σ levels ending at 0 (any device; read once as float64).
        variance: ``"small"`` or ``"large"``.
        noise_sampler: ``(sigma, sigma_next) -> N(0, I) like x``; defaults to ``generator``.
    """
    check_choice("DDPM variance", variance, VARIANCES)

    def rule(sigma: float, sigma_next: float) -> tuple[float, float]:
        # posterior mean y' = D + (σ'²/σ²)(y − D), plus noise of the chosen variance
        return sigma_next**2 / sigma**2, posterior_noise(sigma, sigma_next, variance)

    return ancestral_loop(
        denoiser, x, sigmas, rule, cond=cond, generator=generator, callback=callback, noise_sampler=noise_sampler
    )
