"""Float64 reference twins of diffkit's sigma-form samplers.

Sampler contract (shared with the torch samplers):
  * x: the starting state in sigma form, y = x_0 + sigma * eps, shape [B, ...]
    (related to VP form by y = x_t / sqrt(abar), abar = 1 / (1 + sigma^2)).
  * sigmas: 1-D, finite, strictly decreasing, ending at exactly 0; shape [N + 1] for N steps.
  * denoiser(y, sigma_batch, cond) -> x0 estimate shaped like y; sigma_batch is a float64 array
    of shape [B] filled with the current sigma.
  * noise_sampler(sigma, sigma_next) -> standard-normal array shaped like x. Called once per step
    that adds noise, in step order; never for the final step into sigma = 0 nor when the noise
    scale is 0. Required whenever a step adds noise (ValueError otherwise) -- nothing here draws
    random numbers.
  * returns the final state at sigma = 0, i.e. the x_0 sample, shape [B, ...].

ddim_sample / ddpm_sample deliberately do NOT work in sigma form: each step converts to VP form,
calls the VP one-step functions of reverse.py, and converts back. euler_sample works directly in
sigma form (Karras et al. 2022, Alg. 1 without the Heun correction).
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .reverse import ddim_sigma, ddim_step, ddpm_step
from .schedules import alphas_cumprod_from_sigmas

__all__ = ["ddim_sample", "ddpm_sample", "euler_sample"]

F64 = NDArray[np.float64]
Denoiser = Callable[[F64, F64, Any], ArrayLike]
NoiseSampler = Callable[[float, float], ArrayLike]


def _check_sigmas(sigmas: ArrayLike) -> F64:
    s = np.asarray(sigmas, dtype=np.float64)
    if s.ndim != 1 or s.size < 2:
        raise ValueError("sigmas must be a 1-D array with at least 2 entries")
    if not np.all(np.isfinite(s)):
        raise ValueError("sigmas must be finite (sigma = inf, i.e. abar = 0, is not supported in sigma form)")
    if s[-1] != 0.0 or not np.all(np.diff(s) < 0):
        raise ValueError("sigmas must be strictly decreasing and end at exactly 0")
    return s


def _x0_estimate(denoiser: Denoiser, y: F64, sigma: float, cond: Any) -> F64:
    sigma_batch = np.full(y.shape[0], sigma, dtype=np.float64)  # shape [B]
    return np.asarray(denoiser(y, sigma_batch, cond), dtype=np.float64)


def ddim_sample(
    denoiser: Denoiser,
    x: ArrayLike,
    sigmas: ArrayLike,
    *,
    eta: float = 0.0,
    noise_sampler: Optional[NoiseSampler] = None,
    cond: Any = None,
) -> F64:
    """DDIM sampling (Song et al. 2021, eq. 12 with sigma_t(eta) of eq. 16), one VP step per sigma pair.

    Per step (sigma -> sigma_next):
        abar = 1 / (1 + sigma^2),  abar_prev = 1 / (1 + sigma_next^2)  (abar_prev = 1 at sigma_next = 0)
        x_t = sqrt(abar) * y;   eps_hat = (y - D(y, sigma)) / sigma   (equals the VP eps_hat)
        x_prev = ddim_step(x_t, eps_hat, abar, abar_prev, eta, noise);   y = x_prev / sqrt(abar_prev)
    noise_sampler is called only when sigma_t(eta) > 0 (never on the final step, where it is 0).
    With eta = 0 this equals euler_sample (DDIM is Euler on the PF-ODE in sigma form).
    """
    s = _check_sigmas(sigmas)
    y = np.asarray(x, dtype=np.float64)
    for sigma, sigma_next in zip(s[:-1], s[1:]):
        sigma, sigma_next = float(sigma), float(sigma_next)
        x0_hat = _x0_estimate(denoiser, y, sigma, cond)
        abar = float(alphas_cumprod_from_sigmas(sigma))
        abar_prev = float(alphas_cumprod_from_sigmas(sigma_next))
        x_t = np.sqrt(abar) * y
        eps_hat = (y - x0_hat) / sigma
        noise = None
        if ddim_sigma(abar, abar_prev, eta) > 0:
            if noise_sampler is None:
                raise ValueError("noise_sampler is required for eta > 0")
            noise = np.asarray(noise_sampler(sigma, sigma_next), dtype=np.float64)
        x_prev = ddim_step(x_t, eps_hat, abar, abar_prev, eta=eta, noise=noise)
        y = x_prev / np.sqrt(abar_prev)
    return y


def ddpm_sample(
    denoiser: Denoiser,
    x: ArrayLike,
    sigmas: ArrayLike,
    *,
    variance: Literal["small", "large", "learned"] = "small",
    noise_sampler: Optional[NoiseSampler] = None,
    cond: Any = None,
) -> F64:
    """Ancestral DDPM sampling (Ho et al. 2020, Alg. 2 with the eq. 7 posterior), one VP step per sigma pair.

    Per step: convert to VP as in ddim_sample, then
        x_prev = ddpm_step(x_t, D(y, sigma), abar, abar_prev, noise, variance);  y = x_prev / sqrt(abar_prev).
    variance "small" (beta~), "large" (beta) or "learned" (Nichol & Dhariwal 2021, eq. 15:
    var = exp(frac log beta + (1 - frac) log beta~), per element). For "learned" the denoiser returns
    a pair (x0 estimate, frac), frac in [0, 1] shaped like y (frac = (v_raw + 1) / 2 of the network's
    v_raw in [-1, 1]). noise_sampler is called for every step except the last.
    """
    if variance not in ("small", "large", "learned"):
        raise ValueError(f"variance must be 'small', 'large' or 'learned' for ddpm_sample, got {variance!r}")
    s = _check_sigmas(sigmas)
    y = np.asarray(x, dtype=np.float64)
    for sigma, sigma_next in zip(s[:-1], s[1:]):
        sigma, sigma_next = float(sigma), float(sigma_next)
        frac = None
        if variance == "learned":
            sigma_batch = np.full(y.shape[0], sigma, dtype=np.float64)  # shape [B]
            out = denoiser(y, sigma_batch, cond)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise ValueError('variance="learned" needs a denoiser returning the pair (x0 estimate, frac)')
            x0_hat, frac = (np.asarray(o, dtype=np.float64) for o in out)
        else:
            x0_hat = _x0_estimate(denoiser, y, sigma, cond)
        abar = float(alphas_cumprod_from_sigmas(sigma))
        abar_prev = float(alphas_cumprod_from_sigmas(sigma_next))
        x_t = np.sqrt(abar) * y
        noise = None
        if sigma_next > 0:  # the final step into x_0 adds no noise (Alg. 2: z = 0 at t = 1)
            if noise_sampler is None:
                raise ValueError("noise_sampler is required for ddpm_sample")
            noise = np.asarray(noise_sampler(sigma, sigma_next), dtype=np.float64)
        x_prev = ddpm_step(x_t, x0_hat, abar, abar_prev, noise, variance=variance, v=frac)
        y = x_prev / np.sqrt(abar_prev)
    return y


def euler_sample(denoiser: Denoiser, x: ArrayLike, sigmas: ArrayLike, *, cond: Any = None) -> F64:
    """Euler's method on the probability-flow ODE in sigma form (Karras et al. 2022, eq. 3 with
    sigma(t) = t, s(t) = 1; Alg. 1 without the Heun correction):

        dy/dsigma = (y - D(y, sigma)) / sigma,
        y_next = y + (sigma_next - sigma) * (y - D(y, sigma)) / sigma.
    """
    s = _check_sigmas(sigmas)
    y = np.asarray(x, dtype=np.float64)
    for sigma, sigma_next in zip(s[:-1], s[1:]):
        sigma, sigma_next = float(sigma), float(sigma_next)
        d = (y - _x0_estimate(denoiser, y, sigma, cond)) / sigma  # dy/dsigma, shape like y
        y = y + (sigma_next - sigma) * d
    return y
