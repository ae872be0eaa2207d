"""Inference spacings, in float64 numpy.

Timestep spacings replicate diffusers' DDPMScheduler / DDIMScheduler.set_timesteps; the names
follow Lin et al. 2024, Table 2. Each returns a decreasing int64 array of shape [steps] holding
training-timestep indices in 0..T-1.

Sigma spacings (karras, exponential, logsnr_uniform) place continuous noise levels between
sigma_max and sigma_min and return float64 [steps + 1] ending at 0.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "timesteps",
    "timesteps_leading",
    "timesteps_trailing",
    "timesteps_linspace",
    "SPACINGS",
    "SIGMA_SPACINGS",
    "sigma_spacing",
    "sigmas_karras",
    "sigmas_exponential",
    "sigmas_logsnr_uniform",
]

I64 = NDArray[np.int64]


def timesteps_leading(num_train_timesteps: int, steps: int, steps_offset: int = 0) -> I64:
    """"leading": step_ratio = T // steps; t = arange(steps) * step_ratio, reversed, + steps_offset.

    Example: T=10, steps=3 -> ratio 3 -> [6, 3, 0]. Never reaches T-1 unless offset.
    """
    step_ratio = num_train_timesteps // steps
    t = np.arange(steps, dtype=np.int64) * step_ratio
    return t[::-1] + steps_offset


def timesteps_trailing(num_train_timesteps: int, steps: int) -> I64:
    """"trailing": t = round(T - arange(steps) * T / steps) - 1, rounding half to even (np.round).

    Example: T=10, steps=3 -> 10 - [0, 3.33, 6.67] = [10, 6.67, 3.33] -> [10, 7, 3] - 1 = [9, 6, 2].
    Always starts at T-1.

    diffusers evaluates this as np.arange(T, 0, -T/steps) with a float step; for some (T, steps)
    where steps does not divide T that accumulates rounding error (an extra trailing element, or
    an exact .5 tie rounded the other way). This function uses the exact formula instead; the two
    agree whenever steps divides T and for the usual settings (e.g. T=1000 with 3, 7, 30, 50 steps).
    """
    # T - i*T/steps written as T*(steps - i)/steps: one float division, so exact .5 ties stay exact.
    t = np.round(num_train_timesteps * (steps - np.arange(steps)) / steps)
    return t.astype(np.int64) - 1


def timesteps_linspace(num_train_timesteps: int, steps: int) -> I64:
    """"linspace": round(linspace(0, T-1, steps)) reversed, rounding half to even.

    Example: T=10, steps=3 -> [0, 4.5, 9] -> [0, 4, 9] -> [9, 4, 0].
    """
    t = np.round(np.linspace(0, num_train_timesteps - 1, steps))
    return t[::-1].astype(np.int64)


SPACINGS = ("leading", "trailing", "linspace")


def timesteps(
    num_train_timesteps: int, steps: int, spacing: str = "leading", steps_offset: int = 0
) -> I64:
    """Dispatch on the spacing name ("leading", "trailing", "linspace").

    As in diffusers, steps_offset is added only for "leading" and ignored by the other two.
    Raises ValueError for an unknown spacing or steps outside 1..T.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; valid spacings are {', '.join(SPACINGS)}")
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(
            f"steps must be in 1..{num_train_timesteps} (num_train_timesteps) for spacing {spacing!r}"
            f" (valid spacings: {', '.join(SPACINGS)}), got {steps}"
        )
    if spacing == "leading":
        return timesteps_leading(num_train_timesteps, steps, steps_offset)
    if spacing == "trailing":
        return timesteps_trailing(num_train_timesteps, steps)
    return timesteps_linspace(num_train_timesteps, steps)


# -- σ spacings ---------------------------------------------------------------------------
#
# These place N continuous noise levels between sigma_max and sigma_min (σ form:
# sigma = sqrt((1 - abar)/abar)) and append the final 0. Each returns float64 [steps + 1].

F64 = NDArray[np.float64]

SIGMA_SPACINGS = ("karras", "exponential", "logsnr_uniform")


def sigmas_karras(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> F64:
    """Karras et al. 2022, eq. 5: sigma_i = (sigma_max^(1/rho) + i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.

    Example: N=3, rho=1, sigma in [1, 3] -> [3, 2, 1, 0]. N=1 -> [sigma_max, 0].
    """
    hi, lo = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
    # eq. 5's hi + r (lo - hi) as the weighted mean ((N-1-i) hi + i lo) / (N-1): as printed it
    # cancels near sigma_min (with rho = 0.25 on [0.01, 4096] its last entry comes out exactly 0)
    i = np.arange(steps, dtype=np.float64)
    n = max(steps - 1, 1)
    return np.append((((n - i) * hi + i * lo) / n) ** rho, 0.0)


def sigmas_exponential(steps: int, sigma_min: float, sigma_max: float) -> F64:
    """Geometric sequence sigma_i = sigma_max (sigma_min/sigma_max)^(i/(N-1)) (uniform in log sigma).

    Example: N=3, sigma in [1, 4] -> [4, 2, 1, 0].
    """
    exponent = np.arange(steps) / max(steps - 1, 1)
    return np.append(sigma_max * (sigma_min / sigma_max) ** exponent, 0.0)


def sigmas_logsnr_uniform(steps: int, sigma_min: float, sigma_max: float) -> F64:
    """Uniform in the log-SNR lambda = log(alpha_t / sigma_t) (Lu et al. 2022, DPM-Solver), VP notation.

    lambda runs linearly from lambda(sigma_max) up to lambda(sigma_min); then
    alpha_t^2 = abar = sigmoid(2 lambda), sigma_t^2 = 1 - abar = sigmoid(-2 lambda), and the
    sigma-form noise level is sigma_t / alpha_t. (Algebraically this is sigmas_exponential,
    since lambda = -log sigma; this twin reaches it the long way round on purpose.)
    """
    # lambda at the ends: abar = 1/(1 + sigma^2), lambda = 0.5 log(abar/(1 - abar))
    lam_lo = 0.5 * np.log(1.0 / (1.0 + sigma_max**2)) - 0.5 * np.log(sigma_max**2 / (1.0 + sigma_max**2))
    lam_hi = 0.5 * np.log(1.0 / (1.0 + sigma_min**2)) - 0.5 * np.log(sigma_min**2 / (1.0 + sigma_min**2))
    lam = np.linspace(lam_lo, lam_hi, steps) if steps > 1 else np.array([lam_lo])
    alpha_t = np.sqrt(1.0 / (1.0 + np.exp(-2.0 * lam)))  # sqrt(sigmoid(2 lambda))
    sigma_t = np.sqrt(1.0 / (1.0 + np.exp(2.0 * lam)))  # sqrt(sigmoid(-2 lambda))
    return np.append(sigma_t / alpha_t, 0.0)


def sigma_spacing(
    steps: int, spacing: str, sigma_min: float, sigma_max: float, rho: float = 7.0
) -> F64:
    """Dispatch on the sigma spacing name; rho only matters for "karras".

    Raises ValueError for an unknown name, steps < 1, or a bad sigma range / rho.
    """
    if spacing not in SIGMA_SPACINGS:
        raise ValueError(f"unknown sigma spacing {spacing!r}; valid: {', '.join(SIGMA_SPACINGS)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if not 0 < sigma_min < sigma_max < np.inf or not 0 < rho < np.inf:
        raise ValueError(
            f"need 0 < sigma_min < sigma_max < inf and 0 < rho < inf, got {sigma_min}, {sigma_max}, {rho}"
        )
    if spacing == "karras":
        return sigmas_karras(steps, sigma_min, sigma_max, rho)
    if spacing == "exponential":
        return sigmas_exponential(steps, sigma_min, sigma_max)
    return sigmas_logsnr_uniform(steps, sigma_min, sigma_max)
