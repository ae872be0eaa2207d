"""Float64 reference twins of diffkit's multistep samplers, in the papers' VP / λ notation.

Same contract as :mod:`.samplers` (x in sigma form y = x_0 + sigma * eps, shape [B, ...];
sigmas strictly decreasing, ending at exactly 0; denoiser(y, sigma[B], cond) -> x_0 estimate).
These are deterministic: no noise_sampler.

Unlike the sigma-form torch samplers, every step here runs in the VP form the papers use:

    alpha_t = 1 / sqrt(1 + sigma^2),   sigma_t = sigma * alpha_t   (VP noise std),
    lambda_t = log(alpha_t / sigma_t) = -log(sigma),   x_t = alpha_t * y,

and the data-prediction (DPM-Solver++ / UniPC "predict_x0") updates are written with
alpha_t, sigma_t and expm1 of h = lambda_t - lambda_s as in Lu et al. 2022 and Zhao et al.
2023. At sigma = 0 (alpha = 1, sigma_t = 0, lambda = +inf) every data-prediction update's
limit is x_t = x_0-estimate, so the final step is taken as exactly that (no log(0)).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .samplers import F64, Denoiser, _check_sigmas, _x0_estimate

__all__ = ["dpmpp_2m_sample", "dpmpp_3m_sample", "unipc_sample"]

# diffusers' lower_order_final rule for DPMSolverMultistepScheduler: fewer than 15 steps.
_DPMPP_LOWER_ORDER_BELOW = 15

# the weight of the second-derivative term of a third-order DPM-Solver++ step, relative to its
# Taylor value: DPM-Solver's reference code (diffusers, k-diffusion) has half of it
D2_SCALES = {"dpm_solver": 0.5, "taylor": 1.0}


def d2_scale(d2_weight: str = "dpm_solver", match_dpm_solver_code: bool | None = None) -> float:
    """The scale of the D'' term: 0.5 for d2_weight "dpm_solver", 1.0 for "taylor".

    match_dpm_solver_code (the torch samplers' deprecated alias; None = not given) is "dpm_solver"
    when True and "taylor" when False; with d2_weight "taylor" it must not say True.
    """
    if d2_weight not in D2_SCALES:
        raise ValueError(f"d2_weight must be one of {', '.join(map(repr, D2_SCALES))}, got {d2_weight!r}")
    if match_dpm_solver_code is None:
        return D2_SCALES[d2_weight]
    if type(match_dpm_solver_code) is not bool:  # 1 and 0 are not flags
        raise ValueError(f"match_dpm_solver_code must be True or False, got {match_dpm_solver_code!r}")
    alias = "dpm_solver" if match_dpm_solver_code else "taylor"
    if d2_weight != "dpm_solver" and d2_weight != alias:
        raise ValueError(f"match_dpm_solver_code={match_dpm_solver_code} contradicts d2_weight={d2_weight!r}")
    return D2_SCALES[alias]


def _vp(sigma: float) -> tuple[float, float, float]:
    """(alpha_t, sigma_t, lambda_t) of the sigma-form level sigma > 0."""
    alpha = 1.0 / math.sqrt(1.0 + sigma * sigma)
    sigma_vp = sigma * alpha
    return alpha, sigma_vp, math.log(alpha) - math.log(sigma_vp)


def _dpmpp_update(
    x_s: F64, alpha_t: float, sigma_t: float, sigma_s: float, h: float, m: list[F64], lams: list[float], order: int,
    scale: float,
) -> F64:
    """One DPM-Solver++ multistep update in VP form, x_s -> x_t.

    m: data predictions, newest last (m[-1] at lambda_s); lams: their lambdas; h = lambda_t - lambda_s.
    """
    base = (sigma_t / sigma_s) * x_s - alpha_t * math.expm1(-h) * m[-1]  # DPM-Solver++(1)
    if order == 1:
        return base
    h0 = lams[-1] - lams[-2]
    r0 = h0 / h
    d1_0 = (m[-1] - m[-2]) / r0
    if order == 2:
        # DPM-Solver++(2M), Lu et al. 2022 Alg. 2: D = (1 + 1/(2 r)) m_0 - 1/(2 r) m_1
        return base - 0.5 * alpha_t * math.expm1(-h) * d1_0
    # third order: two first divided differences, extrapolated to lambda_s, and their difference
    h1 = lams[-2] - lams[-3]
    r1 = h1 / h
    d1_1 = (m[-2] - m[-3]) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)  # ~ h * dD/dlambda
    d2 = (d1_0 - d1_1) / (r0 + r1)  # ~ h^2/2 * d2D/dlambda2, the reference code's D2
    d2 = 2.0 * scale * d2  # the Taylor term needs h^2 * d2D/dlambda2 (scale 1); the reference code has half
    em = math.expm1(-h)
    return base + alpha_t * (em / h + 1.0) * d1 - alpha_t * ((em + h) / h**2 - 0.5) * d2


def _dpmpp_sample(
    denoiser: Denoiser, x: ArrayLike, sigmas: ArrayLike, cond: Any, max_order: int, lower_order_final: bool,
    scale: float,
) -> F64:
    s = _check_sigmas(sigmas)
    n = len(s) - 1
    alpha0 = _vp(float(s[0]))[0]
    x_vp = alpha0 * np.asarray(x, dtype=np.float64)  # x_t = alpha_t * y
    m: list[F64] = []
    lams: list[float] = []
    for i in range(n):
        sigma, sigma_next = float(s[i]), float(s[i + 1])
        alpha_s, sigma_s, lam_s = _vp(sigma)
        m.append(_x0_estimate(denoiser, x_vp / alpha_s, sigma, cond))
        lams.append(lam_s)
        if sigma_next == 0.0:
            x_vp = m[-1]  # first order into sigma = 0: x_0 = the data prediction
            continue
        alpha_t, sigma_t, lam_t = _vp(sigma_next)
        order = min(max_order, i + 1)
        if lower_order_final and n < _DPMPP_LOWER_ORDER_BELOW and i == n - 2:
            order = min(order, 2)
        x_vp = _dpmpp_update(x_vp, alpha_t, sigma_t, sigma_s, lam_t - lam_s, m, lams, order, scale)
    return x_vp  # alpha = 1 at sigma = 0, so x_vp = y


def dpmpp_2m_sample(denoiser: Denoiser, x: ArrayLike, sigmas: ArrayLike, *, cond: Any = None) -> F64:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2), data prediction, VP form.

    Per step s -> t, with m_0 = x_0-estimate at s and h = lambda_t - lambda_s:
        first step:  x_t = (sigma_t/sigma_s) x_s - alpha_t (e^{-h} - 1) m_0
        later steps: same with D = (1 + 1/(2r)) m_0 - 1/(2r) m_{-1},  r = h_{-1}/h
        last step (t: sigma = 0): x_t = m_0.
    """
    return _dpmpp_sample(denoiser, x, sigmas, cond, 2, False, 1.0)


def dpmpp_3m_sample(
    denoiser: Denoiser,
    x: ArrayLike,
    sigmas: ArrayLike,
    *,
    cond: Any = None,
    lower_order_final: bool = True,
    d2_weight: str = "dpm_solver",
    match_dpm_solver_code: bool | None = None,
) -> F64:
    """DPM-Solver++(3M), data prediction, VP form (Lu et al. 2022; the multistep third-order
    update of their code and of diffusers' DPMSolverMultistepScheduler(solver_order=3)):

        x_t = (sigma_t/sigma_s) x_s - alpha_t (e^{-h} - 1) m_0 + alpha_t ((e^{-h} - 1)/h + 1) D1
              - alpha_t ((e^{-h} - 1 + h)/h^2 - 1/2) D2

    with D1 ~ h D', D2 ~ h^2 D''/2 (d2_weight "dpm_solver", the default: their code's, diffusers'
    and k-diffusion's weight, second order) or h^2 D'' (d2_weight "taylor", third order).
    Orders 1, 2, then 3; the last step (into sigma = 0) is x_t = m_0; lower_order_final with
    fewer than 15 steps makes the second-to-last step second order.
    """
    scale = d2_scale(d2_weight, match_dpm_solver_code)
    return _dpmpp_sample(denoiser, x, sigmas, cond, 3, lower_order_final, scale)


def _unipc_coefficients(h: float, rks: list[float], order: int) -> tuple[F64, F64, float]:
    """(rhos_p [order-1], rhos_c [order], B(h)) of UniPC-bh2, data prediction (hh = -h).

    b_k = k! * (hh phi_{k+1}(hh)) / B(h),  hh phi_1 = e^{hh} - 1,
    hh phi_{k+1}(hh) = hh phi_k(hh) / hh - 1/k!   (Zhao et al. 2023, App. / Alg. 2-3).
    """
    hh = -h
    b_h = math.expm1(hh)  # B(h) of "bh2"
    h_phi = math.expm1(hh) / hh - 1.0  # hh * phi_2(hh)
    b = []
    for k in range(1, order + 1):
        b.append(h_phi * math.factorial(k) / b_h)
        h_phi = h_phi / hh - 1.0 / math.factorial(k + 1)
    nodes = np.array([*rks, 1.0])
    R = np.stack([nodes**j for j in range(order)])  # [order, order], R_jk = r_k^j
    b_arr = np.array(b)
    if order == 1:
        rhos_p = np.zeros(0)
    elif order == 2:
        rhos_p = np.array([0.5])  # the authors' simplified UniP-2
    else:
        rhos_p = np.linalg.solve(R[:-1, :-1], b_arr[:-1])
    rhos_c = np.array([0.5]) if order == 1 else np.linalg.solve(R, b_arr)
    return rhos_p, rhos_c, b_h


def unipc_sample(
    denoiser: Denoiser,
    x: ArrayLike,
    sigmas: ArrayLike,
    *,
    cond: Any = None,
    order: int = 2,
    lower_order_final: bool = True,
) -> F64:
    """UniPC with B(h) = e^{-h} - 1 ("bh2"), data prediction (Zhao et al. 2023), VP form.

    Step s -> t (h = lambda_t - lambda_s, r_k = (lambda_{s_k} - lambda_s)/h, D1_k = (m_k - m_0)/r_k):
        UniP-p:  x_t = (sigma_t/sigma_s) x_s - alpha_t (e^{-h} - 1) m_0 - alpha_t B(h) sum_k rho_k D1_k
        UniC-p at the next evaluation m_t = x_0-estimate(x_t):
                 x_t^c = (same first two terms) - alpha_t B(h) (sum_k rho^c_k D1_k + rho^c_p (m_t - m_0))
    p = min(order, i + 1), and <= N - i with lower_order_final; the last step (into sigma = 0)
    is UniP-1, x = m_0, with no corrector after it.
    """
    if order not in (1, 2, 3):
        raise ValueError(f"order must be 1, 2 or 3, got {order!r}")
    s = _check_sigmas(sigmas)
    n = len(s) - 1
    x_vp = _vp(float(s[0]))[0] * np.asarray(x, dtype=np.float64)
    m: list[F64] = []  # data predictions, newest last
    lams: list[float] = []
    last = None  # (x_s, m_0 index, alpha_t, sigma_t/sigma_s, rhos_c, B, D1s) of the last predictor
    for i in range(n):
        sigma, sigma_next = float(s[i]), float(s[i + 1])
        alpha_s, sigma_s, lam_s = _vp(sigma)
        m_t = _x0_estimate(denoiser, x_vp / alpha_s, sigma, cond)
        if last is not None:  # UniC corrector of the step that ended here
            x_prev, m_0, alpha_t, ratio, rhos_c, b_h, d1s = last
            corr = sum(rho * d for rho, d in zip(rhos_c[:-1], d1s)) + rhos_c[-1] * (m_t - m_0)
            x_vp = ratio * x_prev - alpha_t * b_h * m_0 - alpha_t * b_h * corr
        m.append(m_t)
        lams.append(lam_s)
        p = min(order, i + 1)
        if lower_order_final:
            p = min(p, n - i)
        if sigma_next == 0.0:
            x_vp, last = m_t, None  # UniP-1 into sigma = 0
            continue
        alpha_t, sigma_t, lam_t = _vp(sigma_next)
        h = lam_t - lam_s
        rks = [(lams[-1 - k] - lam_s) / h for k in range(1, p)]
        d1s = [(m[-1 - k] - m_t) / rk for k, rk in zip(range(1, p), rks)]
        rhos_p, rhos_c, b_h = _unipc_coefficients(h, rks, p)
        ratio = sigma_t / sigma_s
        pred = sum((rho * d for rho, d in zip(rhos_p, d1s)), np.zeros_like(x_vp))
        last = (x_vp, m_t, alpha_t, ratio, rhos_c, b_h, d1s)
        # h phi_1 = B(h) for bh2, so the m_0 term is -alpha_t B(h) m_0
        x_vp = ratio * x_vp - alpha_t * b_h * m_t - alpha_t * b_h * pred
    return x_vp
