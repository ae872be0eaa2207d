"""Ancestral samplers in σ form: Euler ancestral and DPM-Solver++(2S) ancestral (k-diffusion).

An ancestral step σ → σ' splits σ' into a deterministic part and fresh noise
(DDIM eq. 16 in σ form, :func:`~diffkit.samplers.common.ancestral_sigmas`):

    σ_up   = min(σ', η · σ' · √(σ² − σ'²) / σ)        (clamped: σ_down is never √ of a negative)
    σ_down = √(σ'² − σ_up²)
    y'     = ODE step σ → σ_down  +  s_noise · σ_up · z,     z ~ N(0, I)

Euler ancestral takes an Euler step of dy/dσ = (y − D)/σ to σ_down; DPM-Solver++(2S)
ancestral takes a second-order single-step exponential-integrator step (Lu et al. 2022,
"DPM-Solver++", Alg. 1 with r = 1/2) to σ_down. Both become D itself when σ_down = 0 (the
last step into σ = 0, or η large enough that σ_up reaches σ').
"""

from __future__ import annotations

import math
from typing import Any

import torch

from diffkit.samplers.common import (
    ancestral_loop,
    ancestral_sigmas,
    check_eta_s_noise,
    default_noise_sampler,
    denoise,
    float32_state,
    report,
    sigma_levels,
)
from diffkit.samplers.contract import Callback, Denoiser, Generator, NoiseSampler


def check_ancestral(eta: float, s_noise: float) -> tuple[float, float]:
    """The options of :func:`euler_ancestral` and :func:`dpmpp_2s_ancestral`: η and s_noise, finite ≥ 0."""
    return check_eta_s_noise(eta, s_noise)


@float32_state
def euler_ancestral(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Any = None, generator: Generator = None,
    callback: Callback | None = None, eta: float = 1.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """Ancestral sampling with Euler steps (k-diffusion ``sample_euler_ancestral``).

    Per step: an Euler step of dy/dσ = (y − D)/σ from σ to σ_down, then s_noise·σ_up·z.
    With η = 0 this is Euler (= DDIM η = 0); with η = 1 it equals DDIM η = 1 when s_noise = 1.

    Args:
        eta: η ≥ 0 of σ_up (DDIM eq. 16): 0 is the deterministic ODE solver, 1 is DDPM-like noise.
        s_noise: multiplies the added noise σ_up·z (not σ_down): < 1 leaves the result a little
            less noisy.
        noise_sampler: ``(sigma, sigma_next) -> N(0, I) like x``; defaults to ``generator``.
            Called once per step that adds noise (never on the last step into σ = 0).
    """
    eta, s_noise = check_ancestral(eta, s_noise)

    def rule(sigma: float, sigma_next: float) -> tuple[float, float]:
        # Euler to σ_down: y + (σ_down − σ)(y − D)/σ = D + (σ_down/σ)(y − D); at σ_down = 0 exactly D
        sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, eta)
        return sigma_down / sigma, s_noise * sigma_up

    return ancestral_loop(
        denoiser, x, sigmas, rule, cond=cond, generator=generator, callback=callback, noise_sampler=noise_sampler
    )


@float32_state
def dpmpp_2s_ancestral(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Any = None, generator: Generator = None,
    callback: Callback | None = None, eta: float = 1.0, s_noise: float = 1.0, noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2S) ancestral (k-diffusion ``sample_dpmpp_2s_ancestral``), two D per step.

    Per step σ → σ' with (σ_down, σ_up) as above and λ = −log σ, h = log(σ/σ_down):

        σ_mid = σ·e^{−h/2} = √(σ·σ_down)                 (the λ-midpoint, r = 1/2)
        u     = D + (σ_mid/σ)(y − D)                     (DPM-Solver++(1) to σ_mid)
        D_mid = D(u, σ_mid)
        y'    = D_mid + (σ_down/σ)(y − D_mid)  +  s_noise·σ_up·z

    (DPM-Solver++ Alg. 1: x_t = (σ_t/σ_s) x_s − α_t(e^{−h} − 1) D_mid, divided by α_t.)
    When σ_down = 0 (the last step, or η ≥ the clamp) the step is Euler to 0, i.e. y' = D.
    With η = 0 this is the deterministic, second-order DPM-Solver++(2S).

    Options as :func:`euler_ancestral`'s.
    """
    eta, s_noise = check_ancestral(eta, s_noise)
    levels = sigma_levels(sigmas)  # Python floats: coefficients in float64, no device sync per step
    noise = noise_sampler or default_noise_sampler(x, generator)
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        denoised = denoise(denoiser, x, sigma, cond)  # D(y, σ), [B, ...]
        report(callback, x, i, sigma, denoised)
        # σ_down² + σ_up² = σ'², with σ_up ≤ σ' (clamped), so σ_down is real
        sigma_down, sigma_up = ancestral_sigmas(sigma, sigma_next, eta)
        if sigma_down == 0:
            # Euler step to σ_down = 0: y + (0 − σ)(y − D)/σ = D
            x = denoised
        else:
            # DPM-Solver++(2S): first-order step to the λ-midpoint, then the full step with D_mid
            sigma_mid = math.sqrt(sigma * sigma_down)  # e^{−(λ + h/2)}, λ = −log σ
            u = torch.lerp(denoised, x, sigma_mid / sigma)  # D + (σ_mid/σ)(y − D), [B, ...]
            denoised_mid = denoise(denoiser, u, sigma_mid, cond)  # D_mid, [B, ...]
            x = torch.lerp(denoised_mid, x, sigma_down / sigma)  # D_mid + (σ_down/σ)(y − D_mid)
        if s_noise * sigma_up > 0:
            # ancestral noise: brings the noise level from σ_down back up to σ'
            x = x + (s_noise * sigma_up) * noise(sigma, sigma_next)
    return x
