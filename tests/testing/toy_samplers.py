"""Small samplers written for the kit's own tests: correct ones and deliberately broken ones.

All work in σ form (x = x0 + σ·ε) with the sampler contract of ``diffkit.hookspecs``.
"""

from __future__ import annotations

import math
from typing import Any

import torch


def _noise_like(x: torch.Tensor, generator: Any) -> torch.Tensor:
    """N(0, I) like x from one generator, or row k from generator k when given a list."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(x.shape, generator=generator, dtype=x.dtype)
    return torch.stack([torch.randn(x.shape[1:], generator=g, dtype=x.dtype) for g in generator])


def euler(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, step_scale: float = 1.0):
    """Euler on dy/dσ = (y − D)/σ; ``step_scale`` ≠ 1 makes every step that much too long (a bug)."""
    levels = sigmas.tolist()
    ones = x.new_ones(x.shape[0])
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        denoised = denoiser(x, sigma * ones, cond)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        d = (x - denoised) / sigma  # dy/dσ
        x = x + step_scale * (sigma_next - sigma) * d
    return x


def euler_long_steps(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    """Euler whose steps are 3% too long: x + 1.03·(σ' − σ)·d."""
    return euler(denoiser, x, sigmas, cond=cond, generator=generator, callback=callback, step_scale=1.03)


def euler_clipped_start(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    """Euler that clips the grid to σ ≤ 4096 (a VP table's zero-terminal-SNR end), as a sampler written
    for VP tables might: right on σ grids from 80, but it never starts at t = 1 on a flow model."""
    return euler(denoiser, x, sigmas.clamp(max=4096.0), cond=cond, generator=generator, callback=callback)


def euler_ancestral(
    denoiser, x, sigmas, *, cond=None, generator=None, callback=None, noise_sampler=None, noise_scale: float = 1.0
):
    """Ancestral Euler: a deterministic step to σ_down, then fresh noise of std σ_up (σ_down² + σ_up² = σ'²).

    σ_up = σ'·√(σ² − σ'²)/σ (the DDPM posterior std in σ form). ``noise_scale`` ≠ 1 is a bug.
    """
    levels = sigmas.tolist()
    ones = x.new_ones(x.shape[0])
    draw = noise_sampler or (lambda s, s_next: _noise_like(x, generator))
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        denoised = denoiser(x, sigma * ones, cond)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        sigma_up = sigma_next * math.sqrt(sigma**2 - sigma_next**2) / sigma
        sigma_down = math.sqrt(sigma_next**2 - sigma_up**2)
        x = x + (sigma_down - sigma) * (x - denoised) / sigma
        if sigma_up > 0:
            x = x + noise_scale * sigma_up * draw(sigma, sigma_next)
    return x


def euler_ancestral_loud(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, noise_sampler=None):
    """Ancestral Euler whose noise is 10% too strong."""
    return euler_ancestral(denoiser, x, sigmas, cond=cond, generator=generator, callback=callback,
                           noise_sampler=noise_sampler, noise_scale=1.1)


def euler_global_rng(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    """Ancestral Euler that ignores ``generator`` and draws from torch's global RNG (a bug)."""
    return euler_ancestral(denoiser, x, sigmas, cond=cond, callback=callback,
                           noise_sampler=lambda s, s_next: torch.randn_like(x))


def euler_wrong_shape(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    """Correct Euler that returns its result flattened to [B, -1] (a bug)."""
    return euler(denoiser, x, sigmas, cond=cond, callback=callback).flatten(1)


def euler_reporting_the_update(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
    """Euler whose callback reports the updated x beside the step's σ (not k-diffusion's meaning)."""
    levels = sigmas.tolist()
    ones = x.new_ones(x.shape[0])
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        denoised = denoiser(x, sigma * ones, cond)
        x = x + (sigma_next - sigma) * (x - denoised) / sigma
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
    return x
