"""DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models") in σ form.

DDIM eq. 12 with the eq. 16 noise scale, divided through by √ᾱ_prev (y = x_t/√ᾱ_t,
σ² = (1−ᾱ)/ᾱ), becomes an ancestral step from σ to σ' = σ_next:

    σ_up   = min(σ', η · σ' · √(σ² − σ'²) / σ)        (eq. 16 times √(1+σ'²))
    σ_down = √(σ'² − σ_up²)
    y'     = D + σ_down · (y − D)/σ + σ_up · z,    z ~ N(0, I)

With η = 0 this is exactly Euler's method on dy/dσ = (y − D(y, σ))/σ; with η = 1 and
consecutive timesteps it is DDPM with the posterior variance β̃.
"""

from __future__ import annotations

from typing import Any

import torch

from diffkit.samplers.common import ancestral_loop, ancestral_sigmas, check_eta, float32_state
from diffkit.samplers.contract import Callback, Denoiser, Generator, NoiseSampler


@float32_state
def ddim(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    cond: Any = None, generator: Generator = None, callback: Callback | None = None,
    eta: float = 0.0, noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DDIM sampling (Song et al. 2021) with noise scale η; deterministic when η = 0.

    Args:
        eta: η ≥ 0 of DDIM eq. 16: 0 is deterministic (the probability-flow ODE), 1 is DDPM-like.
        noise_sampler: ``(sigma, sigma_next) -> N(0, I) like x``; defaults to ``generator``.
    """
    eta = check_eta(eta)

    def rule(sigma: float, sigma_next: float) -> tuple[float, float]:
        # y' = D + σ_down·ε̂ + σ_up·z with ε̂ = (y − D)/σ; at σ_next = 0 this is exactly D
        sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, eta)
        return sigma_down / sigma, sigma_up

    return ancestral_loop(
        denoiser, x, sigmas, rule, cond=cond, generator=generator, callback=callback, noise_sampler=noise_sampler
    )
