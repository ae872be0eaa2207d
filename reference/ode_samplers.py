"""Float64 reference twins of diffkit's ODE samplers: euler, heun, dpm2 (EDM churn) and lms.

Same contract as reference/samplers.py: x is the start in sigma form (y = x_0 + sigma * eps,
shape [B, ...]), sigmas is strictly decreasing and ends at 0, denoiser(y, sigma[B], cond)
returns the x_0 estimate, noise_sampler(sigma, sigma_hat) returns standard normals.

Each twin is written in a different form from the torch sampler it checks, so agreement is
a real cross-check, not the same arithmetic twice:

  * edm_euler_sample: EDM Alg. 2 verbatim (x_hat + (t_next - t_hat) * d); torch writes the
    Euler step in DDIM's form D + (sigma'/sigma_hat)(y - D).
  * edm_heun_sample: in VP form, as the DDIM eq. 12 step taken with the average of the two
    eps predictions (Heun's trapezoid in eps = dy/dsigma). With time="flow", the trapezoid in
    flow time t = sigma/(1 + sigma) on x = (1 - t) x0 + t eps, as the velocity
    v = eps_hat - x0_hat (FlowMatchHeunDiscreteScheduler's form); torch writes
    v = (x_t - D)/t.
  * dpm2_sample: DPM-Solver-2 of Lu et al. 2022 (Alg. 1, r1 = 1/2) in VP notation with
    alpha_t, sigma_t, lambda = log(alpha_t / sigma_t) and the step h in lambda.
  * lms_sample: the coefficients solve the moment equations sum_j b_j s_j^m = int s^m ds
    (exact for polynomials of degree < k) instead of integrating Lagrange polynomials.

Churn (EDM Alg. 2 lines 4-6, k-diffusion semantics), for step i of N:
    gamma = min(s_churn / N, sqrt(2) - 1) if s_tmin <= sigma_i <= s_tmax else 0
    t_hat = sigma_i (1 + gamma);  y_hat = y + s_noise * sqrt(t_hat^2 - sigma_i^2) * z
noise_sampler(sigma_i, t_hat) is called once for each step with gamma > 0 and s_noise > 0,
in step order, and never otherwise.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .reverse import ddim_step
from .samplers import _check_sigmas, _x0_estimate
from .schedules import alphas_cumprod_from_sigmas

__all__ = ["dpm2_sample", "edm_euler_sample", "edm_heun_sample", "lms_coefficients", "lms_sample"]

F64 = NDArray[np.float64]
Denoiser = Callable[[F64, F64, Any], ArrayLike]
NoiseSampler = Callable[[float, float], ArrayLike]


def _churn(
    y: F64, sigma: float, steps: int, noise_sampler: Optional[NoiseSampler],
    s_churn: float, s_tmin: float, s_tmax: float, s_noise: float,
) -> tuple[F64, float]:
    """(y_hat, t_hat) of EDM Alg. 2, lines 4-6."""
    if s_churn < 0 or s_noise < 0 or s_tmin < 0 or s_tmax < s_tmin:
        raise ValueError("need s_churn >= 0, s_noise >= 0 and 0 <= s_tmin <= s_tmax")
    gamma = min(s_churn / steps, math.sqrt(2.0) - 1.0) if s_tmin <= sigma <= s_tmax else 0.0
    t_hat = sigma * (gamma + 1.0)
    if gamma > 0 and s_noise > 0:
        if noise_sampler is None:
            raise ValueError("noise_sampler is required when s_churn > 0")
        z = np.asarray(noise_sampler(sigma, t_hat), dtype=np.float64)
        y = y + s_noise * np.sqrt(t_hat**2 - sigma**2) * z
    return y, t_hat


def edm_euler_sample(
    denoiser: Denoiser, x: ArrayLike, sigmas: ArrayLike, *, cond: Any = None,
    noise_sampler: Optional[NoiseSampler] = None,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
) -> F64:
    """Karras et al. 2022, Alg. 2 with the Heun correction (lines 9-11) left out:

        x_hat = x_i + sqrt(t_hat^2 - t_i^2) S_noise eps_i          (churn, lines 4-6)
        d_i = (x_hat - D(x_hat; t_hat)) / t_hat                     (line 7)
        x_{i+1} = x_hat + (t_{i+1} - t_hat) d_i                     (line 8)
    """
    t = _check_sigmas(sigmas)
    y = np.asarray(x, dtype=np.float64)
    steps = len(t) - 1
    for t_i, t_next in zip(t[:-1].tolist(), t[1:].tolist()):
        y, t_hat = _churn(y, t_i, steps, noise_sampler, s_churn, s_tmin, s_tmax, s_noise)
        d = (y - _x0_estimate(denoiser, y, t_hat, cond)) / t_hat
        y = y + (t_next - t_hat) * d
    return y


def _eps(denoiser: Denoiser, x_t: F64, abar: float, cond: Any) -> F64:
    """The VP eps prediction at x_t (noise level abar): eps = (y - D(y, sigma)) / sigma, y = x_t / sqrt(abar)."""
    sigma = math.sqrt((1.0 - abar) / abar)
    y = x_t / math.sqrt(abar)
    return (y - _x0_estimate(denoiser, y, sigma, cond)) / sigma


def edm_heun_sample(
    denoiser: Denoiser, x: ArrayLike, sigmas: ArrayLike, *, cond: Any = None,
    noise_sampler: Optional[NoiseSampler] = None, time: str = "auto",
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
) -> F64:
    """Heun's method (Karras et al. 2022, Alg. 2) in VP form, or with time="flow" in flow time.

    dy/dsigma is the eps prediction and a DDIM eta = 0 step (eq. 12) from abar to abar' with a
    fixed eps is exactly y' = y + (sigma' - sigma) eps. So per step, after the churn:
        eps_1 = eps(x_t, abar_hat)
        x_2 = ddim_step(x_t, eps_1, abar_hat, abar')                      (Euler predictor)
        x'  = ddim_step(x_t, (eps_1 + eps(x_2, abar')) / 2, abar_hat, abar')  (trapezoid)
    and the last step into sigma = 0 (abar' = 1) is the predictor alone: x' = x0_hat.

    time="flow": with t = sigma/(1 + sigma), x = (1 - t) y and v = eps_hat - x0_hat,
        x_2 = x + (t' - t) v_1,   x' = x + (t' - t)(v_1 + v_2)/2,   y' = x'/(1 - t').
    time="auto" is "flow" when the denoiser has path == "flow", else "sigma".
    """
    if time == "auto":
        time = "flow" if getattr(denoiser, "path", None) == "flow" else "sigma"
    if time not in ("sigma", "flow"):
        raise ValueError(f"time must be 'auto', 'sigma' or 'flow', got {time!r}")
    t = _check_sigmas(sigmas)
    y = np.asarray(x, dtype=np.float64)
    steps = len(t) - 1
    for t_i, t_next in zip(t[:-1].tolist(), t[1:].tolist()):
        y, t_hat = _churn(y, t_i, steps, noise_sampler, s_churn, s_tmin, s_tmax, s_noise)
        if time == "flow" and t_next > 0:
            y = _flow_heun_step(denoiser, y, t_hat, t_next, cond)
            continue
        abar, abar_next = float(alphas_cumprod_from_sigmas(t_hat)), float(alphas_cumprod_from_sigmas(t_next))
        x_t = math.sqrt(abar) * y
        eps_1 = _eps(denoiser, x_t, abar, cond)
        if t_next == 0:
            y = ddim_step(x_t, eps_1, abar, 1.0)  # Euler into x_0
            continue
        x_2 = ddim_step(x_t, eps_1, abar, abar_next)
        eps_mean = 0.5 * (eps_1 + _eps(denoiser, x_2, abar_next, cond))
        y = ddim_step(x_t, eps_mean, abar, abar_next) / math.sqrt(abar_next)
    return y


def _flow_heun_step(denoiser: Denoiser, y: F64, sigma: float, sigma_next: float, cond: Any) -> F64:
    """One Heun step in flow time from sigma to sigma_next > 0 (see edm_heun_sample)."""

    def velocity(y_s: F64, s: float) -> F64:
        x0_hat = _x0_estimate(denoiser, y_s, s, cond)
        return (y_s - x0_hat) / s - x0_hat  # eps_hat - x0_hat

    t, t_next = sigma / (1.0 + sigma), sigma_next / (1.0 + sigma_next)
    x = (1.0 - t) * y
    v_1 = velocity(y, sigma)
    x_2 = x + (t_next - t) * v_1
    v_2 = velocity(x_2 / (1.0 - t_next), sigma_next)
    return (x + (t_next - t) * 0.5 * (v_1 + v_2)) / (1.0 - t_next)


def dpm2_sample(
    denoiser: Denoiser, x: ArrayLike, sigmas: ArrayLike, *, cond: Any = None,
    noise_sampler: Optional[NoiseSampler] = None,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
) -> F64:
    """DPM-Solver-2 (Lu et al. 2022, Alg. 1 with r1 = 1/2) in VP notation, after EDM's churn.

    With alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t / sigma_t)
    (= -log of the sigma-form noise level) and h = lambda_next - lambda_t:
        lambda_s = lambda_t + h / 2
        u      = (alpha_s / alpha_t) x_t - sigma_s (e^{h/2} - 1) eps(x_t, t)
        x_next = (alpha_next / alpha_t) x_t - sigma_next (e^h - 1) eps(u, s)
    The last step into sigma = 0 (lambda = inf) is Euler: x_0 = x0_hat(x_t).
    """
    t = _check_sigmas(sigmas)
    y = np.asarray(x, dtype=np.float64)
    steps = len(t) - 1

    def vp(lam: float) -> tuple[float, float]:  # (alpha, sigma) of VP form at log-SNR/2 = lambda
        abar = 1.0 / (1.0 + math.exp(-2.0 * lam))
        return math.sqrt(abar), math.sqrt(1.0 - abar)

    for t_i, t_next in zip(t[:-1].tolist(), t[1:].tolist()):
        y, t_hat = _churn(y, t_i, steps, noise_sampler, s_churn, s_tmin, s_tmax, s_noise)
        if t_next == 0:
            y = _x0_estimate(denoiser, y, t_hat, cond)  # Euler into x_0
            continue
        lam_t, lam_next = -math.log(t_hat), -math.log(t_next)
        h = lam_next - lam_t
        lam_s = lam_t + 0.5 * h
        (alpha_t, _), (alpha_s, sigma_s), (alpha_n, sigma_n) = vp(lam_t), vp(lam_s), vp(lam_next)
        x_t = alpha_t * y
        u = (alpha_s / alpha_t) * x_t - sigma_s * math.expm1(0.5 * h) * _eps(denoiser, x_t, alpha_t**2, cond)
        x_n = (alpha_n / alpha_t) * x_t - sigma_n * math.expm1(h) * _eps(denoiser, u, alpha_s**2, cond)
        y = x_n / alpha_n
    return y


def lms_coefficients(sigmas: ArrayLike, i: int, k: int) -> F64:
    """b_0..b_{k-1} with  sum_j b_j p(sigma_{i-j}) = int_{sigma_i}^{sigma_{i+1}} p  for every polynomial
    of degree < k, i.e. the moment equations (a Vandermonde system), solved in the scaled variable
    tau = (s - sigma_i) / h, h = sigma_{i+1} - sigma_i:  sum_j w_j tau_j^m = 1 / (m + 1),  b = h w.
    """
    s = np.asarray(sigmas, dtype=np.float64)
    h = s[i + 1] - s[i]
    tau = (s[i - np.arange(k)] - s[i]) / h  # [k] nodes, tau_0 = 0
    moments = 1.0 / np.arange(1, k + 1)  # int_0^1 tau^m dtau, m = 0..k-1
    return h * np.linalg.solve(np.vander(tau, k, increasing=True).T, moments)


def lms_sample(
    denoiser: Denoiser, x: ArrayLike, sigmas: ArrayLike, *, cond: Any = None, order: int = 4,
) -> F64:
    """Linear multistep (k-diffusion's sample_lms): y_{i+1} = y_i + sum_j b_j d_{i-j} with the
    k = min(i + 1, order) newest slopes d = (y - D(y, sigma)) / sigma and b from lms_coefficients.
    """
    if isinstance(order, bool) or int(order) != order or order < 1:
        raise ValueError(f"order must be an integer >= 1, got {order!r}")
    t = _check_sigmas(sigmas)
    y = np.asarray(x, dtype=np.float64)
    history: list[F64] = []  # newest first
    for i, t_i in enumerate(t[:-1].tolist()):
        history.insert(0, (y - _x0_estimate(denoiser, y, t_i, cond)) / t_i)
        del history[int(order):]
        b = lms_coefficients(t, i, len(history))
        y = y + sum(b_j * d_j for b_j, d_j in zip(b, history))
    return y
