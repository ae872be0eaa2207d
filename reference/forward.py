"""Forward process and parameterisation conversions, VP notation, float64.

x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps   (Ho et al. 2020, eq. 4)
v   = sqrt(abar) eps - sqrt(1 - abar) x_0   (Salimans & Ho 2022, §4 / Appendix D)

Arrays broadcast with numpy rules; alpha_bar may be a scalar or an array broadcastable
against x (e.g. shape [B, 1, ...] for a per-sample abar).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "q_sample",
    "q_posterior",
    "x0_from_eps",
    "eps_from_x0",
    "v_from_x0_eps",
    "x0_from_v",
    "eps_from_v",
]

F64 = NDArray[np.float64]


def _f64(a: ArrayLike) -> F64:
    return np.asarray(a, dtype=np.float64)


def q_sample(x0: ArrayLike, eps: ArrayLike, alpha_bar: ArrayLike) -> F64:
    """Ho et al. 2020, eq. 4 (closed form of q(x_t | x_0)): x_t = sqrt(abar) x0 + sqrt(1 - abar) eps."""
    abar = _f64(alpha_bar)
    return np.sqrt(abar) * _f64(x0) + np.sqrt(1.0 - abar) * _f64(eps)


def q_posterior(
    x0: ArrayLike, x_t: ArrayLike, alpha_bar_t: ArrayLike, alpha_bar_prev: ArrayLike
) -> tuple[F64, F64]:
    """Mean and variance of q(x_prev | x_t, x_0), Ho et al. 2020, eqs. 6-7.

    beta is generalised to a jump between any two timesteps, beta = 1 - abar_t / abar_prev,
    so skipped steps work too (for consecutive steps it is the paper's beta_t):

        mean = sqrt(abar_prev) beta / (1 - abar_t) * x0
             + sqrt(1 - beta) (1 - abar_prev) / (1 - abar_t) * x_t          (eq. 7, mu~_t)
        var  = (1 - abar_prev) / (1 - abar_t) * beta                        (eq. 7, beta~_t)

    Requires abar_t < 1. With abar_prev = 1 (the jump to x_0) the mean is x0 and var is 0.
    Returns (mean broadcast with x0/x_t, var broadcast from the abars).
    """
    abar_t, abar_prev = _f64(alpha_bar_t), _f64(alpha_bar_prev)
    beta = 1.0 - abar_t / abar_prev
    coef_x0 = np.sqrt(abar_prev) * beta / (1.0 - abar_t)
    coef_xt = np.sqrt(1.0 - beta) * (1.0 - abar_prev) / (1.0 - abar_t)
    mean = coef_x0 * _f64(x0) + coef_xt * _f64(x_t)
    var = (1.0 - abar_prev) / (1.0 - abar_t) * beta
    return mean, var


def x0_from_eps(x_t: ArrayLike, eps: ArrayLike, alpha_bar: ArrayLike) -> F64:
    """Invert eq. 4 for x_0 (Ho et al. 2020, eq. 15): x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar). Needs abar > 0."""
    abar = _f64(alpha_bar)
    return (_f64(x_t) - np.sqrt(1.0 - abar) * _f64(eps)) / np.sqrt(abar)


def eps_from_x0(x_t: ArrayLike, x0: ArrayLike, alpha_bar: ArrayLike) -> F64:
    """Invert eq. 4 for eps: eps = (x_t - sqrt(abar) x0) / sqrt(1 - abar). Needs abar < 1."""
    abar = _f64(alpha_bar)
    return (_f64(x_t) - np.sqrt(abar) * _f64(x0)) / np.sqrt(1.0 - abar)


def v_from_x0_eps(x0: ArrayLike, eps: ArrayLike, alpha_bar: ArrayLike) -> F64:
    """Salimans & Ho 2022, §4: v = sqrt(abar) eps - sqrt(1 - abar) x0 (their alpha_t = sqrt(abar), sigma_t = sqrt(1 - abar))."""
    abar = _f64(alpha_bar)
    return np.sqrt(abar) * _f64(eps) - np.sqrt(1.0 - abar) * _f64(x0)


def x0_from_v(x_t: ArrayLike, v: ArrayLike, alpha_bar: ArrayLike) -> F64:
    """Salimans & Ho 2022, Appendix D: x0 = sqrt(abar) x_t - sqrt(1 - abar) v. Valid for every abar in [0, 1]."""
    abar = _f64(alpha_bar)
    return np.sqrt(abar) * _f64(x_t) - np.sqrt(1.0 - abar) * _f64(v)


def eps_from_v(x_t: ArrayLike, v: ArrayLike, alpha_bar: ArrayLike) -> F64:
    """Salimans & Ho 2022, Appendix D: eps = sqrt(1 - abar) x_t + sqrt(abar) v. Valid for every abar in [0, 1]."""
    abar = _f64(alpha_bar)
    return np.sqrt(1.0 - abar) * _f64(x_t) + np.sqrt(abar) * _f64(v)
