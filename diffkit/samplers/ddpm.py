"""Ancestral DDPM sampling (Ho et al. 2020, Alg. 2) in σ form, any timestep spacing.

A jump t → t' between two spaced timesteps has β = 1 − ᾱ_t/ᾱ_t'. The posterior
q(x_t' | x_t, x̂0) (DDPM eq. 6–7), divided by √ᾱ_t' into σ form (σ² = (1−ᾱ)/ᾱ), is

    mean  y' = D + (σ'²/σ²) · (y − D)
    var   "small" (β̃):  σ_up² = σ'² (σ² − σ'²)/σ²            (= DDIM η = 1)
          "large" (β):   σ_up² = (σ² − σ'²)(1 + σ'²)/(1 + σ²)
          "learned":     σ_up² = Σ·(1 + σ'²),  Σ = exp(frac·log β + (1 − frac)·log β̃)
                         (Nichol & Dhariwal 2021, eq. 15; frac per element, from the network)

(the VP noise √Σ·z becomes √Σ·z/√ᾱ' = √(Σ(1+σ'²))·z in σ form). Since (1 + σ'²) factors out of
the log-interpolation, the learned σ_up is the same interpolation between the two fixed ones:
log σ_up = frac·log σ_up,large + (1 − frac)·log σ_up,small.

The last step into σ' = 0 adds no noise (Alg. 2: z = 0 at t = 1). That is also the only step
where β̃ = 0 (β̃ > 0 whenever σ' > 0), so log β̃ is never taken at 0.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from diffkit.errors import ConfigError, ShapeError, check_choice
from diffkit.samplers.common import (
    ancestral_loop,
    default_noise_sampler,
    float32_state,
    report,
    sigma_batch,
    sigma_levels,
)
from diffkit.samplers.contract import Callback, Denoiser, Generator, NoiseSampler

VARIANCES = ("small", "large", "learned")


def check_variance(variance: str) -> str:
    """:func:`ddpm`'s ``variance``: one of :data:`VARIANCES`."""
    return check_choice("DDPM variance", variance, VARIANCES)


def posterior_noise(sigma: float, sigma_next: float, variance: str) -> float:
    """σ_up, the standard deviation (in σ form) of the noise added by one fixed-variance DDPM step."""
    if sigma_next == 0:
        return 0.0
    if variance == "small":
        return sigma_next * math.sqrt(sigma**2 - sigma_next**2) / sigma
    return math.sqrt((sigma**2 - sigma_next**2) * (1 + sigma_next**2) / (1 + sigma**2))


@float32_state
def ddpm(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    cond: Any = None, generator: Generator = None, callback: Callback | None = None,
    variance: str = "small", noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """Ancestral DDPM sampling (Ho et al. 2020) with variance β̃ ("small"), β ("large") or learned.

    Args:
        denoiser: ``denoiser(x, sigma[B], cond) -> x0 estimate``; for ``"learned"`` it must
            also have ``forward_with_variance(x, sigma[B], cond) -> (x0, frac)`` (e.g. a
            ``VPDenoiser(..., learned_variance=True)`` or a ``CFGDenoiser`` around one).
        x: the starting point in σ form, ``noise * sigmas[0]``, shape [B, ...].
        sigmas: decreasing σ levels ending at 0 (any device; read once as float64).
        variance: ``"small"``: the posterior variance β̃ (DDPM's σ² = β̃); ``"large"``: σ² = β;
            ``"learned"``: improved DDPM's log-interpolation (Nichol & Dhariwal 2021, eq. 15),
            weighted by the denoiser's ``forward_with_variance``.
        noise_sampler: ``(sigma, sigma_next) -> N(0, I) like x``; defaults to ``generator``.
    """
    check_variance(variance)
    if variance == "learned":
        return _ddpm_learned(
            denoiser, x, sigmas, cond=cond, generator=generator, callback=callback, noise_sampler=noise_sampler
        )

    def rule(sigma: float, sigma_next: float) -> tuple[float, float]:
        # posterior mean y' = D + (σ'²/σ²)(y − D), plus noise of the chosen variance
        return sigma_next**2 / sigma**2, posterior_noise(sigma, sigma_next, variance)

    return ancestral_loop(
        denoiser, x, sigmas, rule, cond=cond, generator=generator, callback=callback, noise_sampler=noise_sampler
    )


def log_noise_bounds(sigma: float, sigma_next: float) -> tuple[float, float]:
    """(log σ_up,small, log σ_up,large) of a step σ → σ' > 0, in float64, without under/overflow.

    small: σ_up² = σ'²(σ − σ')(σ + σ')/σ²;  large: σ_up² = (σ − σ')(σ + σ')(1 + σ'²)/(1 + σ²).
    """
    log_gap = 0.5 * (math.log(sigma - sigma_next) + math.log(sigma + sigma_next))  # ½ log(σ² − σ'²)
    log_small = math.log(sigma_next) - math.log(sigma) + log_gap
    log_large = log_gap + 0.5 * (math.log1p(sigma_next**2) - math.log1p(sigma**2))
    return log_small, log_large


def denoise_with_variance(
    denoiser: Denoiser, x: torch.Tensor, sigma: float, cond: Any
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, frac) = denoiser.forward_with_variance(x, σ[B], cond), both checked to be shaped like x."""
    denoised, frac = denoiser.forward_with_variance(x, sigma_batch(x, sigma), cond)  # type: ignore[attr-defined]
    if denoised.shape != x.shape or frac.shape != x.shape:
        raise ShapeError(
            f"forward_with_variance returned shapes {tuple(denoised.shape)} and {tuple(frac.shape)} for input "
            f"{tuple(x.shape)}; it must return (x0, frac), both shaped like its input"
        )
    return denoised.to(x.dtype), frac


def _ddpm_learned(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    cond: Any,
    generator: Generator,
    callback: Callback | None,
    noise_sampler: NoiseSampler | None,
) -> torch.Tensor:
    """DDPM with the learned variance of improved DDPM (Nichol & Dhariwal 2021, eq. 15), in σ form."""
    if not callable(getattr(denoiser, "forward_with_variance", None)):
        raise ConfigError(
            f'variance="learned" needs a denoiser with forward_with_variance(x, sigma, cond) -> (x0, frac); '
            f"{type(denoiser).__name__} has none (use VPDenoiser(..., learned_variance=True) with a network that "
            'outputs 2C channels, or variance="small"/"large")'
        )
    levels = sigma_levels(sigmas)
    noise = noise_sampler or default_noise_sampler(x, generator)
    work = torch.promote_types(x.dtype, torch.float32)  # exp/log-interpolation in at least float32
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        denoised, frac = denoise_with_variance(denoiser, x, sigma, cond)  # [B, ...] each
        report(callback, x, i, sigma, denoised)
        # posterior mean y' = D + (σ'²/σ²)(y − D)
        x = torch.lerp(denoised, x, sigma_next**2 / sigma**2)
        if sigma_next > 0:  # the step into σ' = 0 adds no noise (and has β̃ = 0)
            log_small, log_large = log_noise_bounds(sigma, sigma_next)
            # log σ_up = frac·log σ_up,large + (1 − frac)·log σ_up,small, per element
            sigma_up = torch.exp(log_small + frac.to(work) * (log_large - log_small))
            x = x.add_((sigma_up * noise(sigma, sigma_next).to(work)).to(x.dtype))
    return x
