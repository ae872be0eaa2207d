"""Training losses, VP notation, float64: targets, Min-SNR-γ weights and the variational bound.

Targets (what a network is regressed onto at x_t = sqrt(abar) x0 + sqrt(1 - abar) eps):

    eps, x0, or v = sqrt(abar) eps - sqrt(1 - abar) x0          (Salimans & Ho 2022, §4)

Min-SNR-γ (Hang et al. 2023, §3.4) weights the x0-space error by min(SNR, gamma),
SNR = abar / (1 - abar). Since (see min_snr_weight)

    eps-MSE = SNR * x0-MSE,      v-MSE = (SNR + 1) * x0-MSE,

the same weight on each target's own MSE is min(SNR, g)/SNR, min(SNR, g), min(SNR, g)/(SNR + 1).

Variational bound (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021, §3.1), per timestep t:

    L_t = KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t))   t > 0
    L_0 = -log p(x0 | x1)  (discretized Gaussian decoder, Ho et al. 2020, §3.3, eq. 13)

with p(x_{t-1} | x_t) = N(mu~(x_t, x0_hat), Sigma), log Sigma = frac log beta_t + (1 - frac) log beta~_t
(improved DDPM eq. 15), reported in bits per dimension.

Index convention as in schedules.py: betas[i], i = 0..T-1, is the paper's beta_{i+1}; index 0
is the decoder step.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .forward import q_posterior, v_from_x0_eps

__all__ = [
    "training_target",
    "min_snr_weight",
    "normal_kl",
    "discretized_gaussian_log_likelihood",
    "learned_variance_log",
    "vlb_term",
]

F64 = NDArray[np.float64]
Prediction = Literal["eps", "x0", "v"]

# data in [-1, 1] quantized to 256 levels: level k is -1 + 2k/255, bins have half-width 1/255
_LEVELS = 256
_HALF_BIN = 1.0 / 255.0
_erfc = np.vectorize(math.erfc, otypes=[np.float64])


def _f64(a: ArrayLike) -> F64:
    return np.asarray(a, dtype=np.float64)


def _check_prediction(prediction: str) -> None:
    if prediction not in ("eps", "x0", "v"):
        raise ValueError(f"unknown prediction {prediction!r}; valid: 'eps', 'x0', 'v'")


def training_target(x0: ArrayLike, eps: ArrayLike, alpha_bar: ArrayLike, prediction: Prediction) -> F64:
    """The regression target for a network that predicts ``prediction``.

        eps: eps          (Ho et al. 2020, eq. 14, L_simple)
        x0 : x0
        v  : sqrt(abar) eps - sqrt(1 - abar) x0   (Salimans & Ho 2022, §4)

    alpha_bar broadcasts against x0 (scalar or [B, 1, ..., 1]); the result has the broadcast shape.
    """
    _check_prediction(prediction)
    x0, eps, abar = _f64(x0), _f64(eps), _f64(alpha_bar)
    if prediction == "eps":
        return eps * np.ones_like(x0 + abar)
    if prediction == "x0":
        return x0 * np.ones_like(eps + abar)
    return v_from_x0_eps(x0, eps, abar)


def min_snr_weight(snr: ArrayLike, prediction: Prediction, gamma: float) -> F64:
    """Min-SNR-γ weight on the MSE of the given target (Hang et al. 2023, §3.4).

    The paper's weight lives in x0 space: w_x0 = min(SNR, gamma). Converting each target's error
    to x0 error at fixed x_t (forward.py's inversions):

        eps: x0_hat - x0 = -(sqrt(1 - abar)/sqrt(abar)) (eps_hat - eps)  => eps-MSE = SNR * x0-MSE
        v  : x0_hat - x0 = -sqrt(1 - abar) (v_hat - v)                    => v-MSE = x0-MSE / (1 - abar)
                                                                                  = (SNR + 1) * x0-MSE

    so the weight on the target's own MSE is

        eps: min(SNR, gamma) / SNR      x0: min(SNR, gamma)      v: min(SNR, gamma) / (SNR + 1).

    Needs SNR > 0 for eps (the SNR -> 0 limit, 1, is not taken here) and gamma > 0.
    """
    _check_prediction(prediction)
    if not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    s = _f64(snr)
    if np.any(s < 0):
        raise ValueError("snr must be >= 0")
    capped = np.minimum(s, gamma)
    if prediction == "x0":
        return capped
    if prediction == "v":
        return capped / (s + 1.0)
    if np.any(s == 0):
        raise ValueError("the eps weight min(SNR, gamma)/SNR needs SNR > 0")
    return capped / s


def normal_kl(mean1: ArrayLike, logvar1: ArrayLike, mean2: ArrayLike, logvar2: ArrayLike) -> F64:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)) elementwise, in nats.

    Closed form for univariate Gaussians (e.g. Kingma & Welling 2014, App. B, written for two
    general Gaussians):

        KL = log(s2/s1) + (s1^2 + (m1 - m2)^2) / (2 s2^2) - 1/2
    """
    m1, m2 = _f64(mean1), _f64(mean2)
    lv1, lv2 = _f64(logvar1), _f64(logvar2)
    log_ratio = 0.5 * (lv2 - lv1)  # log(s2 / s1)
    return log_ratio + (np.exp(lv1) + (m1 - m2) ** 2) / (2.0 * np.exp(lv2)) - 0.5


def _gaussian_mass(lo: F64, hi: F64) -> F64:
    """P(lo < Z < hi) for Z ~ N(0, 1), accurate in both tails (lo <= hi; +-inf allowed).

    Phi(z) = erfc(-z/sqrt2)/2 and 1 - Phi(z) = erfc(z/sqrt2)/2: above 0 the upper tails are
    subtracted, below it the lower ones, so no two numbers close to 1 are ever subtracted.
    """
    r2 = math.sqrt(2.0)
    upper = 0.5 * (_erfc(lo / r2) - _erfc(hi / r2))  # (1 - Phi(lo)) - (1 - Phi(hi))
    lower = 0.5 * (_erfc(-hi / r2) - _erfc(-lo / r2))  # Phi(hi) - Phi(lo)
    return np.where(lo > 0, upper, lower)


def discretized_gaussian_log_likelihood(x: ArrayLike, mean: ArrayLike, log_scale: ArrayLike) -> F64:
    """log p(x) elementwise under DDPM's discretized Gaussian decoder (Ho et al. 2020, §3.3, eq. 13):

        p(x) = integral from delta_-(x) to delta_+(x) of N(u; mean, e^(2 log_scale)) du
        delta_+(x) = +inf if x = 1,  else x + 1/255
        delta_-(x) = -inf if x = -1, else x - 1/255

    x must lie on the 256-level grid of [-1, 1] (x = -1 + 2k/255, k = 0..255, to 1e-6); the
    masses of the 256 bins sum to 1. log_scale is the log standard deviation. A bin whose mass
    underflows gives -inf (no floor: the reference defines the equation, not a policy).
    """
    x, mean, log_scale = np.broadcast_arrays(_f64(x), _f64(mean), _f64(log_scale))
    k = (x + 1.0) * (_LEVELS - 1) / 2.0  # the level index, an integer for grid data
    if np.any(np.abs(k - np.round(k)) > 1e-6 * (_LEVELS - 1) / 2.0) or np.any((k < -1e-6) | (k > _LEVELS - 1 + 1e-6)):
        raise ValueError("x must lie on the 256-level grid -1 + 2k/255 of [-1, 1]")
    k = np.round(k)
    lo = np.where(k == 0, -np.inf, x - _HALF_BIN)
    hi = np.where(k == _LEVELS - 1, np.inf, x + _HALF_BIN)
    inv_scale = np.exp(-log_scale)
    with np.errstate(divide="ignore"):  # the infinite edges stay infinite after scaling
        mass = _gaussian_mass((lo - mean) * inv_scale, (hi - mean) * inv_scale)
        return np.log(mass)


def learned_variance_log(frac: ArrayLike, beta_t: ArrayLike, beta_tilde_t: ArrayLike) -> F64:
    """log Sigma_theta = frac log beta_t + (1 - frac) log beta~_t (Nichol & Dhariwal 2021, eq. 15).

    frac in [0, 1] is the network's interpolation weight (parameterizations.learned_variance_frac
    maps the raw output in [-1, 1] to it). Needs beta_t, beta~_t > 0.
    """
    frac = _f64(frac)
    return frac * np.log(_f64(beta_t)) + (1.0 - frac) * np.log(_f64(beta_tilde_t))


def vlb_term(x0: ArrayLike, x_t: ArrayLike, t: int, x0_hat: ArrayLike, frac: ArrayLike, betas: ArrayLike) -> float:
    """L_t of one sample in bits per dimension (mean over its elements, divided by ln 2).

    x0, x_t, x0_hat: arrays of one sample's shape; t: index 0..T-1 into ``betas`` ([T]);
    frac: eq. 15 weight, broadcastable against x0. The posterior q(x_{t-1} | x_t, x0) and the
    model mean mu~(x_t, x0_hat) both come from forward.q_posterior (Ho et al. 2020, eqs. 6-7).

      t > 0: KL(N(mu~(x_t, x0), beta~_t) || N(mu~(x_t, x0_hat), Sigma_theta))     (Ho et al. eq. 5)
      t = 0: -log p(x0 | x_1) with the discretized decoder of mean mu~(x_t, x0_hat) (= x0_hat,
             since abar_prev = 1) and variance Sigma_theta; beta~_0 = 0, so log beta~_0 in eq. 15
             is replaced by log beta~_1 (the improved-DDPM convention). x0 must then be on the
             256-level grid.
    """
    betas = _f64(betas)
    if betas.ndim != 1 or betas.size < 2:
        raise ValueError(f"betas must be a 1-D table with T >= 2 entries, got shape {betas.shape}")
    if not (isinstance(t, (int, np.integer)) and 0 <= t < betas.size):
        raise ValueError(f"t must be an integer in 0..{betas.size - 1}, got {t!r}")
    abar = np.cumprod(1.0 - betas)  # abar_t = prod_{s<=t} (1 - beta_s)
    x0, x_t, x0_hat = _f64(x0), _f64(x_t), _f64(x0_hat)
    if t > 0:
        true_mean, beta_tilde = q_posterior(x0, x_t, abar[t], abar[t - 1])
        model_mean, _ = q_posterior(x0_hat, x_t, abar[t], abar[t - 1])
        log_var = learned_variance_log(frac, betas[t], beta_tilde)
        kl = normal_kl(true_mean, np.log(beta_tilde), model_mean, log_var)
        return float(np.mean(kl * np.ones_like(x0)) / math.log(2.0))
    model_mean, _ = q_posterior(x0_hat, x_t, abar[0], 1.0)  # = x0_hat
    _, beta_tilde_1 = q_posterior(x0, x_t, abar[1], abar[0])
    log_var = learned_variance_log(frac, betas[0], beta_tilde_1)
    log_p = discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * log_var)
    return float(-np.mean(log_p * np.ones_like(x0)) / math.log(2.0))
