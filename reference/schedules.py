"""Noise schedules in DDPM (variance-preserving) notation, float64.

Notation (Ho et al. 2020, eq. 4):  x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,
abar_t = prod_{s<=t} (1 - beta_s)   -- a product of alphas, no square root.

All schedules return a 1-D float64 array of betas with shape [T], index i = 0..T-1
standing for the paper's t = 1..T.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "betas_linear",
    "betas_scaled_linear",
    "betas_cosine",
    "betas_sigmoid",
    "alphas_cumprod",
    "rescale_zero_terminal_snr",
    "sigmas_from_alphas_cumprod",
    "alphas_cumprod_from_sigmas",
]

F64 = NDArray[np.float64]


def betas_linear(
    num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
) -> F64:
    """Linear schedule of Ho et al. 2020, §4: beta_t evenly spaced from beta_start to beta_end.

    Returns shape [T].
    """
    return np.linspace(beta_start, beta_end, num_train_timesteps, dtype=np.float64)


def betas_scaled_linear(
    num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012
) -> F64:
    """"Scaled linear" schedule of latent diffusion / Stable Diffusion (Rombach et al. 2022):
    sqrt(beta_t) evenly spaced from sqrt(beta_start) to sqrt(beta_end), then squared.

    Returns shape [T].
    """
    root = np.linspace(np.sqrt(beta_start), np.sqrt(beta_end), num_train_timesteps, dtype=np.float64)
    return root**2


def betas_cosine(num_train_timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> F64:
    """Cosine schedule, Nichol & Dhariwal 2021 (improved DDPM), eq. 17:

        abar(t) = f(t) / f(0),   f(t) = cos^2( (t/T + s) / (1 + s) * pi/2 ),
        beta_t  = min(1 - abar(t) / abar(t-1), max_beta),   t = 1..T.

    The f(0) normalisation cancels in the ratio, so beta for index i = 0..T-1 is
    min(1 - f((i+1)/T) / f(i/T), max_beta). The clip at max_beta (0.999) avoids the
    singularity at t = T (their §3.2). Returns shape [T].
    """
    T = num_train_timesteps

    def f(u: F64) -> F64:  # u = t / T in [0, 1]
        return np.cos((u + s) / (1.0 + s) * np.pi / 2.0) ** 2

    i = np.arange(T, dtype=np.float64)
    betas = 1.0 - f((i + 1.0) / T) / f(i / T)
    return np.minimum(betas, max_beta)


def betas_sigmoid(
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    low: float = -6.0,
    high: float = 6.0,
) -> F64:
    """Sigmoid schedule (GeoDiff, Xu et al. 2022; diffusers' beta_schedule="sigmoid"):

        beta = sigmoid(linspace(low, high, T)) * (beta_end - beta_start) + beta_start.

    Returns shape [T].
    """
    u = np.linspace(low, high, num_train_timesteps, dtype=np.float64)
    sigmoid = 1.0 / (1.0 + np.exp(-u))
    return sigmoid * (beta_end - beta_start) + beta_start


def alphas_cumprod(betas: ArrayLike) -> F64:
    """abar_t = prod_{s<=t} (1 - beta_s)  (Ho et al. 2020, notation above eq. 4).

    betas: shape [T]; returns shape [T].
    """
    b = np.asarray(betas, dtype=np.float64)
    return np.cumprod(1.0 - b)


def rescale_zero_terminal_snr(betas: ArrayLike) -> F64:
    """Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Alg. 1.

    Work on sqrt(abar): shift it so the last value is exactly 0 (zero terminal SNR), scale it so
    the first value is unchanged, square it back to abar, and undo the cumulative product:
    beta_0 = 1 - abar_0,  beta_t = 1 - abar_t / abar_{t-1}.  The last beta becomes exactly 1.

    betas: shape [T]; returns shape [T].
    """
    sqrt_abar = np.sqrt(alphas_cumprod(betas))
    first, last = sqrt_abar[0], sqrt_abar[-1]
    sqrt_abar = (sqrt_abar - last) * (first / (first - last))  # last -> 0, first -> first
    abar = sqrt_abar**2
    alphas = np.concatenate([abar[:1], abar[1:] / abar[:-1]])  # undo the cumprod
    return 1.0 - alphas


def sigmas_from_alphas_cumprod(alphas_cumprod: ArrayLike) -> F64:
    """VP -> sigma form (Karras et al. 2022, Table 1, VP column): sigma = sqrt((1 - abar) / abar).

    The sigma-form state is y = x_t / sqrt(abar) = x_0 + sigma * eps.
    abar = 0 (zero terminal SNR) maps to sigma = inf, silently (no divide warning).
    Shape is preserved.
    """
    abar = np.asarray(alphas_cumprod, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.sqrt((1.0 - abar) / abar)


def alphas_cumprod_from_sigmas(sigmas: ArrayLike) -> F64:
    """sigma -> VP form, the inverse of sigmas_from_alphas_cumprod: abar = 1 / (1 + sigma^2).

    sigma = inf maps to abar = 0; sigma = 0 maps to abar = 1. Shape is preserved.
    """
    sigma = np.asarray(sigmas, dtype=np.float64)
    return 1.0 / (1.0 + sigma**2)
