"""β_t tables of the built-in noise schedules, in float64 torch.

Each function returns a float64 tensor of shape [T] (T = num_train_timesteps) with
0 < β_t ≤ 1. ᾱ_t = ∏_{s≤t} (1 − β_s) is a product (DDPM, Ho et al. 2020, below eq. 4).
"""

from __future__ import annotations

import math

import torch

_F64 = torch.float64


def linear_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """β evenly spaced from ``beta_start`` to ``beta_end`` (DDPM §4: 1e-4 → 0.02)."""
    return torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=_F64)


def scaled_linear_betas(num_train_timesteps: int, beta_start: float, beta_end: float) -> torch.Tensor:
    """√β evenly spaced, then squared (latent diffusion / Stable Diffusion: 0.00085 → 0.012)."""
    root = torch.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_train_timesteps, dtype=_F64)
    return root * root


def cosine_betas(num_train_timesteps: int, offset: float, max_beta: float) -> torch.Tensor:
    """Improved DDPM (Nichol & Dhariwal 2021) eq. 17.

    ᾱ(τ) = f(τ)/f(0) with f(τ) = cos²((τ + s)/(1 + s) · π/2), τ = t/T; β_t = 1 − ᾱ(t+1)/ᾱ(t),
    clipped at ``max_beta`` (0.999) so the last steps stay invertible.
    """
    tau = torch.arange(num_train_timesteps + 1, dtype=_F64) / num_train_timesteps
    f = torch.cos((tau + offset) / (1 + offset) * math.pi / 2) ** 2
    return torch.clamp(1 - f[1:] / f[:-1], max=max_beta)


def sigmoid_betas(
    num_train_timesteps: int, beta_start: float, beta_end: float, low: float, high: float
) -> torch.Tensor:
    """β = beta_start + (beta_end − beta_start)·sigmoid(u), u evenly spaced in [low, high].

    The GeoDiff (Xu et al. 2022) schedule that diffusers calls ``"sigmoid"``.
    """
    u = torch.linspace(low, high, num_train_timesteps, dtype=_F64)
    return beta_start + (beta_end - beta_start) * torch.sigmoid(u)


def rescale_to_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Alg. 1.

    Shift √ᾱ so its last value is exactly 0 (SNR_T = 0), scale it so √ᾱ_0 is unchanged, and
    return the betas of the new ᾱ (the last β becomes 1).
    """
    root = torch.cumprod(1 - betas, dim=0).sqrt()
    first, last = root[0].clone(), root[-1].clone()
    root = (root - last) * first / (first - last)
    alpha_bar = root * root
    previous = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
    return 1 - alpha_bar / previous
