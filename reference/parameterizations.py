"""Network parameterizations and classifier-free guidance, float64 numpy reference.

Two independent descriptions of the same denoiser D(y; sigma) (y = x_0 + sigma * eps, sigma form):

  * VP form, through forward.py's conversions (the network sees x_t = sqrt(abar) y at
    abar = 1 / (1 + sigma^2) and predicts eps, x_0 or v):  vp_denoise.
  * Preconditioned form of Karras et al. 2022 (Table 1),
        D(y; sigma) = c_skip y + c_out F(c_in y; c_noise),
    with the EDM coefficients (edm_preconditioning) or the VP ones (vp_preconditioning).

Guidance: guided_x0 applies classifier-free guidance (Ho & Salimans 2022) with the guidance
rescale of Lin et al. 2024 (§3.4, eqs. 13-16) written literally in the chosen space -- convert the
two x_0 estimates to eps or v with forward.py, guide and rescale there, convert back -- and the
guidance interval of Kynkaanniemi et al. 2024.

sigma arguments are scalars or arrays of shape [B]; per-sample values broadcast against [B, ...].
"""

from __future__ import annotations

from typing import Any, Callable, Literal, Optional

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .forward import eps_from_x0, v_from_x0_eps, x0_from_eps, x0_from_v
from .schedules import alphas_cumprod_from_sigmas

__all__ = [
    "edm_preconditioning",
    "edm_denoise",
    "edm_training_target",
    "edm_loss_weight",
    "vp_preconditioning",
    "vp_denoise",
    "learned_variance_frac",
    "guided_x0",
]

F64 = NDArray[np.float64]
Prediction = Literal["eps", "x0", "v"]


def _per_sample(values: ArrayLike, ndim: int) -> F64:
    """Scalar or [B] -> broadcastable against an array of ndim dimensions ([B, 1, ..., 1])."""
    a = np.asarray(values, dtype=np.float64)
    return a if a.ndim == 0 else a.reshape(-1, *([1] * (ndim - 1)))


def edm_preconditioning(sigma: ArrayLike, sigma_data: float = 0.5) -> tuple[F64, F64, F64, F64]:
    """Karras et al. 2022, Table 1 ("Ours" column) and §5:

        c_skip  = sigma_d^2 / (sigma^2 + sigma_d^2)
        c_out   = sigma * sigma_d / sqrt(sigma^2 + sigma_d^2)
        c_in    = 1 / sqrt(sigma^2 + sigma_d^2)
        c_noise = ln(sigma) / 4

    Returns (c_skip, c_out, c_in, c_noise) shaped like sigma. c_noise needs sigma > 0.
    """
    s = np.asarray(sigma, dtype=np.float64)
    total = s**2 + sigma_data**2
    with np.errstate(divide="ignore"):
        c_noise = np.log(s) / 4.0
    return sigma_data**2 / total, s * sigma_data / np.sqrt(total), 1.0 / np.sqrt(total), c_noise


def edm_denoise(
    network: Callable[[F64, F64, Any], ArrayLike],
    y: ArrayLike,
    sigma: ArrayLike,
    sigma_data: float = 0.5,
    cond: Any = None,
) -> F64:
    """D(y; sigma) = c_skip y + c_out F(c_in y; c_noise) (Karras et al. 2022, eq. 7); sigma of shape [B]."""
    y = np.asarray(y, dtype=np.float64)
    c_skip, c_out, c_in, c_noise = edm_preconditioning(sigma, sigma_data)
    c_skip, c_out, c_in = (_per_sample(c, y.ndim) for c in (c_skip, c_out, c_in))  # [B, 1, ..., 1]
    # F sees the unit-variance input c_in y and the noise level c_noise of shape [B]
    f = np.asarray(network(c_in * y, np.asarray(c_noise, dtype=np.float64), cond), dtype=np.float64)
    return c_skip * y + c_out * f


def edm_training_target(x0: ArrayLike, noise: ArrayLike, sigma: ArrayLike, sigma_data: float = 0.5) -> F64:
    """The effective training target of F (Karras et al. 2022, eq. 8):

        F_target = (x0 - c_skip (x0 + sigma n)) / c_out,

    of unit variance when Var x0 = sigma_d^2 and n ~ N(0, I) (their Appendix B.6).
    """
    x0 = np.asarray(x0, dtype=np.float64)
    c_skip, c_out, _, _ = edm_preconditioning(sigma, sigma_data)
    c_skip, c_out = _per_sample(c_skip, x0.ndim), _per_sample(c_out, x0.ndim)
    y = x0 + _per_sample(sigma, x0.ndim) * np.asarray(noise, dtype=np.float64)  # the noisy input
    # D = c_skip y + c_out F = x0  <=>  F = (x0 - c_skip y) / c_out
    return (x0 - c_skip * y) / c_out


def edm_loss_weight(sigma: ArrayLike, sigma_data: float = 0.5) -> F64:
    """lambda(sigma) = (sigma^2 + sigma_d^2) / (sigma sigma_d)^2 = 1 / c_out^2 (Karras et al. 2022, Table 1)."""
    s = np.asarray(sigma, dtype=np.float64)
    return (s**2 + sigma_data**2) / (s * sigma_data) ** 2


def vp_preconditioning(sigma: ArrayLike, prediction: Prediction) -> tuple[F64, F64, F64]:
    """(c_skip, c_out, c_in) that turn an eps / x0 / v network on VP inputs into D(y; sigma).

    With abar = 1 / (1 + sigma^2), c_in = sqrt(abar) = 1 / sqrt(1 + sigma^2) (x_t = c_in y) and
      eps: D = y - sigma eps                                 -> (1,               -sigma,                 c_in)
      x0 : D = x0                                            -> (0,                1,                     c_in)
      v  : D = sqrt(abar) x_t - sqrt(1 - abar) v             -> (1 / (1 + sigma^2), -sigma / sqrt(1 + sigma^2), c_in)
    """
    s = np.asarray(sigma, dtype=np.float64)
    c_in = 1.0 / np.sqrt(1.0 + s**2)
    if prediction == "eps":
        return np.ones_like(s), -s, c_in
    if prediction == "x0":
        return np.zeros_like(s), np.ones_like(s), c_in
    if prediction == "v":
        return 1.0 / (1.0 + s**2), -s / np.sqrt(1.0 + s**2), c_in
    raise ValueError(f"unknown prediction {prediction!r}; valid: 'eps', 'x0', 'v'")


def vp_denoise(output: ArrayLike, y: ArrayLike, sigma: ArrayLike, prediction: Prediction) -> F64:
    """D(y; sigma) from a VP network's output at x_t = sqrt(abar) y, via forward.py's conversions
    (Ho et al. 2020, eq. 15 for eps; Salimans & Ho 2022, Appendix D for v)."""
    y = np.asarray(y, dtype=np.float64)
    abar = _per_sample(alphas_cumprod_from_sigmas(sigma), y.ndim)  # [B, 1, ..., 1]
    x_t = np.sqrt(abar) * y  # what the network saw
    if prediction == "eps":
        return x0_from_eps(x_t, output, abar)
    if prediction == "x0":
        return np.asarray(output, dtype=np.float64) * np.ones_like(y)
    if prediction == "v":
        return x0_from_v(x_t, output, abar)
    raise ValueError(f"unknown prediction {prediction!r}; valid: 'eps', 'x0', 'v'")


def learned_variance_frac(v_raw: ArrayLike) -> F64:
    """Improved DDPM's map of the network's variance output v_raw in [-1, 1] to the weight
    frac = (v_raw + 1) / 2 in [0, 1] of log beta in eq. 15 (Nichol & Dhariwal 2021, code)."""
    return (np.asarray(v_raw, dtype=np.float64) + 1.0) / 2.0


def _to_space(x0: F64, y: F64, abar: F64, space: str) -> F64:
    if space == "x0":
        return x0
    eps = eps_from_x0(np.sqrt(abar) * y, x0, abar)
    return eps if space == "eps" else v_from_x0_eps(x0, eps, abar)


def _from_space(p: F64, y: F64, abar: F64, space: str) -> F64:
    if space == "x0":
        return p
    x_t = np.sqrt(abar) * y
    return x0_from_eps(x_t, p, abar) if space == "eps" else x0_from_v(x_t, p, abar)


def guided_x0(
    x0_cond: ArrayLike,
    x0_uncond: ArrayLike,
    y: ArrayLike,
    sigma: ArrayLike,
    scale: float,
    *,
    rescale: float = 0.0,
    space: Literal["v", "eps", "x0"] = "v",
    interval: Optional[tuple[float, float]] = None,
) -> F64:
    """Classifier-free guidance of two x_0 estimates at (y, sigma[B]), returned as an x_0 estimate.

    In the chosen space (eps or v via forward.py at abar = 1 / (1 + sigma^2), or x_0 itself):
        p_cfg = p_neg + w (p_pos - p_neg)                                   (Lin et al. 2024, eq. 13)
        p_rescaled = p_cfg * std(p_pos) / std(p_cfg)   per sample            (eqs. 14-15)
        p_final = phi p_rescaled + (1 - phi) p_cfg                           (eq. 16)
    A sample whose std(p_cfg) is 0 keeps p_cfg. With interval (sigma_lo, sigma_hi), samples whose
    sigma lies outside the closed interval get x0_cond (Kynkaanniemi et al. 2024). Needs sigma > 0.
    """
    y = np.asarray(y, dtype=np.float64)
    cond, uncond = np.asarray(x0_cond, dtype=np.float64), np.asarray(x0_uncond, dtype=np.float64)
    abar = _per_sample(alphas_cumprod_from_sigmas(sigma), y.ndim)  # [B, 1, ..., 1]
    # x_pos / x_neg of the paper: the two predictions in the chosen space
    pos, neg = _to_space(cond, y, abar, space), _to_space(uncond, y, abar, space)
    p_cfg = neg + scale * (pos - neg)
    if rescale > 0:
        axes = tuple(range(1, y.ndim))  # std over everything but the batch: one value per sample
        std_pos = pos.std(axis=axes, keepdims=True)
        std_cfg = p_cfg.std(axis=axes, keepdims=True)
        # a constant p_cfg (std 0) is left as it is instead of 0/0
        ratio = np.where(std_cfg > 0, std_pos / np.where(std_cfg > 0, std_cfg, 1.0), 1.0)
        p_cfg = rescale * (p_cfg * ratio) + (1.0 - rescale) * p_cfg
    out = _from_space(p_cfg, y, abar, space)
    if interval is not None:
        s = _per_sample(np.asarray(sigma, dtype=np.float64), y.ndim)
        out = np.where((s >= interval[0]) & (s <= interval[1]), out, cond)
    return out
