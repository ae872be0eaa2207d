"""One reverse (denoising) step at a time, VP notation, float64.

Every step maps x_t (noise level abar_t) to x_prev (noise level abar_prev > abar_t); any two
levels may be used, not only consecutive training timesteps. Noise is always passed in by the
caller -- nothing here draws random numbers. alpha_bar_t / alpha_bar_prev are Python floats.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .forward import q_posterior

__all__ = ["ddpm_step", "ddim_sigma", "ddim_step", "ddim_invert_step"]

F64 = NDArray[np.float64]
Variance = Literal["small", "large", "learned"]


def ddpm_step(
    x_t: ArrayLike,
    x0_pred: ArrayLike,
    alpha_bar_t: float,
    alpha_bar_prev: float,
    noise: ArrayLike | None,
    variance: Variance = "small",
    v: ArrayLike | None = None,
) -> F64:
    """Ancestral DDPM step: x_prev = mu~(x_t, x0_pred) + sqrt(var) * noise.

    mu~ is the posterior mean of q(x_prev | x_t, x_0 = x0_pred), Ho et al. 2020 eq. 7 (see
    forward.q_posterior), with beta = 1 - abar_t / abar_prev. The variance choices are

      "small":   var = beta~ = (1 - abar_prev) / (1 - abar_t) * beta   (Ho et al. §3.2, sigma^2 = beta~)
      "large":   var = beta                                            (Ho et al. §3.2, sigma^2 = beta)
      "learned": var = exp(v log beta + (1 - v) log beta~)             (Nichol & Dhariwal 2021, eq. 15)
                 with v in [0, 1], broadcastable against x_t. Improved DDPM's code maps the
                 network output o in [-1, 1] to v = (o + 1) / 2; do that before calling.

    Final step (abar_prev == 1, i.e. into x_0): no noise is added for any variance type,
    as in Ho et al. Alg. 2 (z = 0 at t = 1); the mean (= x0_pred) is returned and `noise` may be
    None. This is also the 0-safe rule for "learned": beta~ = 0 there, so log beta~ is never taken
    at 0. (Improved DDPM instead clips log beta~ at t = 0 to its t = 1 value; the noise is
    dropped at that step anyway, so both give the mean.)
    """
    mean, beta_tilde = q_posterior(x0_pred, x_t, alpha_bar_t, alpha_bar_prev)
    if alpha_bar_prev == 1.0:
        return mean
    beta = 1.0 - alpha_bar_t / alpha_bar_prev
    if variance == "small":
        var = beta_tilde
    elif variance == "large":
        var = np.float64(beta)
    elif variance == "learned":
        if v is None:
            raise ValueError('variance="learned" needs v (interpolation weight in [0, 1])')
        frac = np.asarray(v, dtype=np.float64)
        var = np.exp(frac * np.log(beta) + (1.0 - frac) * np.log(beta_tilde))
    else:
        raise ValueError(f"unknown variance {variance!r}; valid: 'small', 'large', 'learned'")
    if noise is None:
        raise ValueError("noise is required unless alpha_bar_prev == 1 (the final step)")
    return mean + np.sqrt(var) * np.asarray(noise, dtype=np.float64)


def ddim_sigma(alpha_bar_t: float, alpha_bar_prev: float, eta: float) -> float:
    """Song et al. 2021 (DDIM), eq. 16:

        sigma_t(eta) = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev).

    eta = 0 is deterministic DDIM; eta = 1 gives sigma^2 = beta~ (the DDPM posterior variance).
    Zero when abar_prev == 1.
    """
    return float(eta * np.sqrt((1.0 - alpha_bar_prev) / (1.0 - alpha_bar_t)) * np.sqrt(1.0 - alpha_bar_t / alpha_bar_prev))


def ddim_step(
    x_t: ArrayLike,
    eps_pred: ArrayLike,
    alpha_bar_t: float,
    alpha_bar_prev: float,
    eta: float = 0.0,
    noise: ArrayLike | None = None,
) -> F64:
    """Song et al. 2021 (DDIM), eq. 12:

        x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)                      ("predicted x_0")
        x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps + sigma * noise

    with sigma = ddim_sigma(abar_t, abar_prev, eta) (eq. 16). Needs abar_t > 0.
    Raises ValueError for eta < 0, for noise None while sigma > 0, and when eta is so large
    that 1 - abar_prev - sigma^2 < 0. `noise` is ignored when sigma == 0.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    x_t = np.asarray(x_t, dtype=np.float64)
    eps = np.asarray(eps_pred, dtype=np.float64)
    sigma = ddim_sigma(alpha_bar_t, alpha_bar_prev, eta)
    x0_hat = (x_t - np.sqrt(1.0 - alpha_bar_t) * eps) / np.sqrt(alpha_bar_t)
    dir_var = 1.0 - alpha_bar_prev - sigma**2  # variance left for the "direction pointing to x_t"
    if dir_var < -1e-12:
        raise ValueError(f"eta={eta} too large: 1 - abar_prev - sigma^2 = {dir_var} < 0")
    x_prev = np.sqrt(alpha_bar_prev) * x0_hat + np.sqrt(max(dir_var, 0.0)) * eps  # clamp rounding
    if sigma > 0:
        if noise is None:
            raise ValueError("noise is required when sigma(eta) > 0")
        x_prev = x_prev + sigma * np.asarray(noise, dtype=np.float64)
    return x_prev


def ddim_invert_step(
    x_t: ArrayLike, eps_pred: ArrayLike, alpha_bar_t: float, alpha_bar_next: float
) -> F64:
    """Deterministic DDIM inversion (eta = 0, moving to MORE noise, abar_next < abar_t):
    the eq. 12 map with the roles of the two abars swapped,

        x0_hat = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
        x_next = sqrt(abar_next) x0_hat + sqrt(1 - abar_next) eps.

    With the same eps, ddim_step(x_next, eps, abar_next, abar_t) returns x_t.
    """
    x_t = np.asarray(x_t, dtype=np.float64)
    eps = np.asarray(eps_pred, dtype=np.float64)
    x0_hat = (x_t - np.sqrt(1.0 - alpha_bar_t) * eps) / np.sqrt(alpha_bar_t)
    return np.sqrt(alpha_bar_next) * x0_hat + np.sqrt(1.0 - alpha_bar_next) * eps
