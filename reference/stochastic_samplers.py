"""Float64 reference twins of diffkit's ancestral and SDE samplers, written in VP form.

Same contract as reference/samplers.py (x in sigma form y = x0 + sigma*eps, sigmas decreasing to
exactly 0, denoiser(y, sigma[B], cond) -> x0 estimate, noise_sampler(sigma, sigma_next) ->
standard normal). These twins work in the papers' VP notation instead of sigma form:

    alpha = 1/sqrt(1 + sigma^2),  s = sigma * alpha  (VP noise std),  x_t = alpha * y,
    lambda = log(alpha / s) = -log(sigma)   (half-log-SNR)

and convert back with y = x_t / alpha at the end of every step, so a twin and its torch
sampler share no arithmetic. Noise is requested once per step that adds noise, in step order,
exactly when eta > 0, s_noise > 0 and sigma_next > 0 -- never on the last step into sigma = 0.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .multistep_samplers import d2_scale
from .samplers import _check_sigmas, _x0_estimate

__all__ = ["dpmpp_2m_sde_sample", "dpmpp_2s_ancestral_sample", "dpmpp_3m_sde_sample", "euler_ancestral_sample"]

F64 = NDArray[np.float64]
Denoiser = Callable[[F64, F64, Any], ArrayLike]
NoiseSampler = Callable[[float, float], ArrayLike]


def _vp(sigma: float) -> tuple[float, float]:
    """(alpha_t, s_t) of the VP process at Karras sigma: alpha = 1/sqrt(1+sigma^2), s = sigma*alpha."""
    alpha = 1.0 / np.sqrt(1.0 + sigma * sigma)
    return float(alpha), float(sigma * alpha)


def _check_options(eta: float, s_noise: float) -> None:
    if not (np.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be finite and >= 0, got {eta!r}")
    if not (np.isfinite(s_noise) and s_noise >= 0):
        raise ValueError(f"s_noise must be finite and >= 0, got {s_noise!r}")


def _draw(noise_sampler: Optional[NoiseSampler], sigma: float, sigma_next: float) -> F64:
    if noise_sampler is None:
        raise ValueError("noise_sampler is required when a step adds noise (eta > 0 and s_noise > 0)")
    return np.asarray(noise_sampler(sigma, sigma_next), dtype=np.float64)


def _ddim_vp_noise(sigma: float, sigma_next: float, eta: float) -> float:
    """DDIM eq. 16 noise std in VP form, clamped to sqrt(1 - abar_prev) (the whole noise budget).

        sigma_t(eta) = eta * sqrt((1 - abar_prev)/(1 - abar)) * sqrt(1 - abar/abar_prev)
    with 1 - abar = s^2 computed from sigma directly (no cancellation near abar = 1).
    """
    if eta == 0 or sigma_next == 0:
        return 0.0
    a, s = _vp(sigma)
    a_prev, s_prev = _vp(sigma_next)
    value = eta * (s_prev / s) * np.sqrt(1.0 - (a * a) / (a_prev * a_prev))
    return float(min(value, s_prev))


def euler_ancestral_sample(
    denoiser: Denoiser,
    x: ArrayLike,
    sigmas: ArrayLike,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: Optional[NoiseSampler] = None,
    cond: Any = None,
) -> F64:
    """Euler ancestral (k-diffusion sample_euler_ancestral) as a DDIM step in VP form (Song et al. 2021, eq. 12):

        x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma_t^2) eps_hat + s_noise * sigma_t * z
    with sigma_t = min(sqrt(1 - abar_prev), DDIM eq. 16) -- in sigma form sigma_t / alpha_prev is sigma_up
    and sqrt(1 - abar_prev - sigma_t^2) / alpha_prev is sigma_down (Euler to sigma_down, then noise).
    """
    _check_options(eta, s_noise)
    s_grid = _check_sigmas(sigmas)
    y = np.asarray(x, dtype=np.float64)
    for sigma, sigma_next in zip(s_grid[:-1].tolist(), s_grid[1:].tolist()):
        x0_hat = _x0_estimate(denoiser, y, sigma, cond)
        a, s = _vp(sigma)
        a_prev, s_prev = _vp(sigma_next)
        eps_hat = (a * y - a * x0_hat) / s  # (x_t - alpha x0_hat)/s
        noise_std = _ddim_vp_noise(sigma, sigma_next, eta)  # sigma_t(eta), VP
        direction = np.sqrt(max(s_prev * s_prev - noise_std * noise_std, 0.0))
        x_prev = a_prev * x0_hat + direction * eps_hat
        if eta > 0 and s_noise > 0 and sigma_next > 0:
            x_prev = x_prev + s_noise * noise_std * _draw(noise_sampler, sigma, sigma_next)
        y = x_prev / a_prev
    return y


def dpmpp_2s_ancestral_sample(
    denoiser: Denoiser,
    x: ArrayLike,
    sigmas: ArrayLike,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    noise_sampler: Optional[NoiseSampler] = None,
    cond: Any = None,
) -> F64:
    """DPM-Solver++(2S) ancestral: DPM-Solver++ Alg. 1 (Lu et al. 2022, r = 1/2) in VP form to the
    "down" level, then ancestral noise.

    With (sigma_down, sigma_up) from DDIM eq. 16 (clamped), lambda_s = -log sigma, lambda_d = -log sigma_down,
    h = lambda_d - lambda_s, lambda_m = lambda_s + h/2 (VP quantities alpha_*, s_* of each level):
        u_m    = (s_m / s_s) x_s - alpha_m (e^{-h/2} - 1) x0(x_s)
        x_d    = (s_d / s_s) x_s - alpha_d (e^{-h} - 1) x0(u_m at lambda_m)
        y'     = x_d / alpha_d + s_noise * sigma_up * z
    and y' = x0(x_s) (+ noise) when sigma_down = 0.
    """
    _check_options(eta, s_noise)
    s_grid = _check_sigmas(sigmas)
    y = np.asarray(x, dtype=np.float64)
    for sigma, sigma_next in zip(s_grid[:-1].tolist(), s_grid[1:].tolist()):
        x0_hat = _x0_estimate(denoiser, y, sigma, cond)
        a_prev, s_prev = _vp(sigma_next)
        noise_std = _ddim_vp_noise(sigma, sigma_next, eta)  # VP sigma_t(eta); = s_prev when clamped
        sigma_up = noise_std / a_prev  # VP std -> sigma form
        sigma_down = float(np.sqrt(max(s_prev * s_prev - noise_std * noise_std, 0.0))) / a_prev
        if sigma_down == 0:
            y = x0_hat  # Euler to sigma = 0
        else:
            a_s, s_s = _vp(sigma)
            a_d, s_d = _vp(sigma_down)
            lam_s, lam_d = -np.log(sigma), -np.log(sigma_down)
            h = lam_d - lam_s
            sigma_mid = float(np.exp(-(lam_s + 0.5 * h)))
            a_m, s_m = _vp(sigma_mid)
            x_s = a_s * y
            u_m = (s_m / s_s) * x_s - a_m * np.expm1(-0.5 * h) * x0_hat
            x0_mid = _x0_estimate(denoiser, u_m / a_m, sigma_mid, cond)
            x_d = (s_d / s_s) * x_s - a_d * np.expm1(-h) * x0_mid
            y = x_d / a_d
        if eta > 0 and s_noise > 0 and sigma_next > 0:
            y = y + s_noise * sigma_up * _draw(noise_sampler, sigma, sigma_next)
    return y


def _taylor_weights(xh: float) -> tuple[float, float, float]:
    """Integrals c_k = int_0^1 x e^{-x(1-tau)} tau^k dtau (k = 0, 1, 2) of the exponential weight,
    closed forms: c0 = 1 - e^{-x}, c1 = 1 - c0/x, c2 = 1 - 2/x + 2 c0/x^2 (series below x = 1e-2)."""
    c0 = -np.expm1(-xh)
    if xh < 1e-2:
        c1 = xh / 2 - xh**2 / 6 + xh**3 / 24 - xh**4 / 120
        c2 = xh / 3 - xh**2 / 12 + xh**3 / 60 - xh**4 / 360
    else:
        c1 = 1 - c0 / xh
        c2 = 1 - 2 / xh + 2 * c0 / xh**2
    return float(c0), float(c1), float(c2)


def _sde_multistep(
    denoiser: Denoiser,
    x: ArrayLike,
    sigmas: ArrayLike,
    *,
    max_order: int,
    eta: float,
    s_noise: float,
    solver_type: str,
    d2_scale: float,
    noise_sampler: Optional[NoiseSampler],
    cond: Any,
) -> F64:
    """DPM-Solver++ SDE multistep in VP form (diffusers' sde-dpmsolver++ coefficients, with eta):

        x_t = (s_t/s_s) e^{-eta h} x_s + alpha_t [c0 P(0) + c1 h P'(0) + c2 h^2 P''(0)/2 * d2_scale]
              + s_t sqrt(1 - e^{-2 eta h}) s_noise z
    where P is the Newton polynomial in lambda through the last (order) data predictions and
    c_k the exact weights of the drift kernel (1+eta) e^{-(1+eta)(lambda_t - lambda)} (_taylor_weights).
    Order 2 with solver_type "midpoint" uses 0.5 c0 instead of c1 (k-diffusion / diffusers midpoint).
    The last step into sigma = 0 returns the data prediction.
    """
    _check_options(eta, s_noise)
    if solver_type not in ("midpoint", "heun"):
        raise ValueError(f"solver_type must be 'midpoint' or 'heun', got {solver_type!r}")
    s_grid = _check_sigmas(sigmas)
    y = np.asarray(x, dtype=np.float64)
    lams: list[float] = []  # lambda of earlier levels, newest first
    preds: list[F64] = []  # data predictions there
    for sigma, sigma_next in zip(s_grid[:-1].tolist(), s_grid[1:].tolist()):
        x0_hat = _x0_estimate(denoiser, y, sigma, cond)
        if sigma_next == 0:
            y = x0_hat  # x_t = alpha_t x0 at s_t = 0, alpha_t = 1
        else:
            a_s, s_s = _vp(sigma)
            a_t, s_t = _vp(sigma_next)
            lam_s, lam_t = float(np.log(a_s / s_s)), float(np.log(a_t / s_t))
            h = lam_t - lam_s
            xh = (1 + eta) * h
            c0, c1, c2 = _taylor_weights(xh)
            pts = [lam_s, *lams][:max_order]
            vals = [x0_hat, *preds][:max_order]
            order = len(pts)
            drift = c0 * x0_hat
            if order >= 2:
                # Newton divided differences in lambda: f[0,1], f[0,1,2]
                f01 = (vals[0] - vals[1]) / (pts[0] - pts[1])
                if order == 2:
                    w1 = 0.5 * c0 if solver_type == "midpoint" else c1
                    drift = drift + w1 * h * f01
                else:
                    f12 = (vals[1] - vals[2]) / (pts[1] - pts[2])
                    f012 = (f01 - f12) / (pts[0] - pts[2])
                    # Taylor coefficients at lambda_s: P'(0) = f01 + f012 (lam_s - lam_1), P''(0)/2 = f012
                    slope = f01 + f012 * (pts[0] - pts[1])
                    drift = drift + c1 * h * slope + d2_scale * c2 * h * h * f012
            x_t = (s_t / s_s) * np.exp(-eta * h) * (a_s * y) + a_t * drift
            if eta > 0 and s_noise > 0:
                x_t = x_t + s_t * np.sqrt(-np.expm1(-2 * eta * h)) * s_noise * _draw(noise_sampler, sigma, sigma_next)
            y = x_t / a_t
            lams = [lam_s, *lams][: max_order - 1]
            preds = [x0_hat, *preds][: max_order - 1]
    return y


def dpmpp_2m_sde_sample(
    denoiser: Denoiser,
    x: ArrayLike,
    sigmas: ArrayLike,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    solver_type: str = "midpoint",
    noise_sampler: Optional[NoiseSampler] = None,
    cond: Any = None,
) -> F64:
    """DPM-Solver++(2M) SDE (k-diffusion sample_dpmpp_2m_sde, diffusers sde-dpmsolver++ order 2 at eta = 1)."""
    return _sde_multistep(
        denoiser, x, sigmas, max_order=2, eta=eta, s_noise=s_noise, solver_type=solver_type, d2_scale=1.0,
        noise_sampler=noise_sampler, cond=cond,
    )


def dpmpp_3m_sde_sample(
    denoiser: Denoiser,
    x: ArrayLike,
    sigmas: ArrayLike,
    *,
    eta: float = 1.0,
    s_noise: float = 1.0,
    d2_weight: str = "dpm_solver",
    match_dpm_solver_code: bool | None = None,
    noise_sampler: Optional[NoiseSampler] = None,
    cond: Any = None,
) -> F64:
    """DPM-Solver++(3M) SDE: orders 1, 2 (heun weight), then 3. The second-derivative term has half
    its Taylor weight with d2_weight "dpm_solver" (the default: k-diffusion's sample_dpmpp_3m_sde,
    second order at eta = 0), or all of it with "taylor" (third order at eta = 0)."""
    return _sde_multistep(
        denoiser, x, sigmas, max_order=3, eta=eta, s_noise=s_noise, solver_type="heun",
        d2_scale=d2_scale(d2_weight, match_dpm_solver_code), noise_sampler=noise_sampler, cond=cond,
    )
