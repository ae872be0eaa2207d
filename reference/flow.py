"""Flow matching / rectified flow in float64 numpy (Lipman et al. 2023; Liu et al. 2023; SD3, Esser et al. 2024).

Forward path, t in [0, 1] (t = 1 is pure noise):

    x_t = (1 - t) x0 + t eps,        v = eps - x0          (the network's velocity target)
    x0 = x_t - t v,                  eps = x_t + (1 - t) v

The same path in sigma form: divide by (1 - t),

    y = x_t / (1 - t) = x0 + sigma eps,    sigma = t / (1 - t),    t = sigma / (1 + sigma),

so lambda = -log sigma = logit(1 - t) and every sigma-form sampler applies unchanged; t = 1 is
sigma = inf. Time shifts move the grid towards the noise end:

    SD3:  t' = s t / (1 + (s - 1) t)
    Flux: t' = e^mu / (e^mu + (1/t - 1)),  mu linear in the image sequence length between
          (base_seq_len, base_shift) and (max_seq_len, max_shift)

(the SD3 shift is the Flux one with e^mu = s).
"""

from __future__ import annotations

import numpy as np


def flow_forward(x0: np.ndarray, eps: np.ndarray, t: float) -> np.ndarray:
    """x_t = (1 - t) x0 + t eps."""
    return (1.0 - t) * x0 + t * eps


def flow_velocity(x0: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """The velocity target v = dx_t/dt = eps - x0."""
    return eps - x0


def x0_from_velocity(x_t: np.ndarray, t: float, v: np.ndarray) -> np.ndarray:
    """x0 = x_t - t v."""
    return x_t - t * v


def eps_from_velocity(x_t: np.ndarray, t: float, v: np.ndarray) -> np.ndarray:
    """eps = x_t + (1 - t) v."""
    return x_t + (1.0 - t) * v


def sigma_from_t(t: np.ndarray | float) -> np.ndarray:
    """sigma = t / (1 - t); t = 1 gives inf."""
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(t < 1.0, t / np.where(t < 1.0, 1.0 - t, 1.0), np.inf)


def t_from_sigma(sigma: np.ndarray | float) -> np.ndarray:
    """t = sigma / (1 + sigma); sigma = inf gives 1."""
    sigma = np.asarray(sigma, dtype=np.float64)
    return np.where(np.isinf(sigma), 1.0, sigma / (1.0 + np.where(np.isinf(sigma), 0.0, sigma)))


def shift_time(t: np.ndarray | float, shift: float) -> np.ndarray:
    """SD3's shift t' = s t / (1 + (s - 1) t): fixes t = 0 and t = 1, s > 1 moves t towards 1."""
    t = np.asarray(t, dtype=np.float64)
    return shift * t / (1.0 + (shift - 1.0) * t)


def shift_time_exponential(t: np.ndarray | float, mu: float) -> np.ndarray:
    """Flux's shift t' = e^mu / (e^mu + (1/t - 1)) (t = 0 stays 0)."""
    t = np.asarray(t, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.where(t > 0, np.exp(mu) / (np.exp(mu) + (1.0 / np.where(t > 0, t, 1.0) - 1.0)), 0.0)


def dynamic_mu(
    image_seq_len: int, base_seq_len: int = 256, max_seq_len: int = 4096, base_shift: float = 0.5,
    max_shift: float = 1.15,
) -> float:
    """mu linear in the sequence length through (base_seq_len, base_shift) and (max_seq_len, max_shift)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return base_shift + slope * (image_seq_len - base_seq_len)


def flow_euler_sample(velocity, x: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Euler on dx/dt = v(x, t) from ts[0] down to ts[-1]: x <- x + (t' - t) v(x, t)."""
    for t, t_next in zip(ts[:-1], ts[1:]):
        x = x + (t_next - t) * velocity(x, t)
    return x


# -- training: time densities and loss weights (SD3, Esser et al. 2024, §3.1 and §5.1) --------


def logit_normal_time(n: np.ndarray, mean: float, std: float) -> np.ndarray:
    """t = sigmoid(mean + std n) for n ~ N(0, 1): SD3's logit-normal density (t -> 1 is noise)."""
    return 1.0 / (1.0 + np.exp(-(mean + std * np.asarray(n, dtype=np.float64))))


def logit_normal_density(t: np.ndarray, mean: float, std: float) -> np.ndarray:
    """pi_ln(t; m, s) = exp(-(logit t - m)^2 / (2 s^2)) / (s sqrt(2 pi) t (1 - t))   (SD3 eq. 19)."""
    t = np.asarray(t, dtype=np.float64)
    logit = np.log(t / (1.0 - t))
    return np.exp(-((logit - mean) ** 2) / (2 * std**2)) / (std * np.sqrt(2 * np.pi) * t * (1.0 - t))


def mode_time(u: np.ndarray, scale: float) -> np.ndarray:
    """t = f_mode(u; s) = 1 - u - s (cos^2(pi u / 2) - 1 + u) for u ~ U(0, 1)   (SD3 eq. 20).

    f maps [0, 1] onto [0, 1] decreasingly for -1 <= s <= 2/(pi - 2); s = 0 is uniform.
    """
    u = np.asarray(u, dtype=np.float64)
    return 1.0 - u - scale * (np.cos(np.pi * u / 2) ** 2 - 1.0 + u)


MODE_SCALE_MAX = 2.0 / (np.pi - 2.0)
"""The largest mode scale for which f_mode is monotone: f'(u) = -1 - s + (s pi/2) sin(pi u) < 0."""


def flow_loss_weight(t: np.ndarray, scheme: str, snr_gamma: float = 5.0) -> np.ndarray:
    """Per-sample weight of the velocity loss |v_hat - v|^2 at time t.

    none:       1
    sigma_sqrt: 1/t^2 (diffusers' name; their flow "sigma" is t). Since |x0_hat - x0|^2 = t^2 |v_hat - v|^2,
                it turns diffusers' preconditioned x0-space loss back into the velocity loss
    cosmap:     2 / (pi (1 - 2t + 2t^2))   (SD3 eq. 21's CosMap weight in diffusers' form)
    min_snr:    t^2 min(SNR, gamma), SNR = ((1 - t)/t)^2: Min-SNR-gamma's x0-space weight min(SNR, gamma)
                (Hang et al. 2023) written for the velocity target, = min((1 - t)^2, gamma t^2)
    """
    t = np.asarray(t, dtype=np.float64)
    if scheme == "none":
        return np.ones_like(t)
    if scheme == "sigma_sqrt":
        return 1.0 / t**2
    if scheme == "cosmap":
        return 2.0 / (np.pi * (1.0 - 2.0 * t + 2.0 * t**2))
    if scheme == "min_snr":
        return np.minimum((1.0 - t) ** 2, snr_gamma * t**2)
    raise ValueError(f"unknown flow loss weighting {scheme!r}")
