"""The variational bound term L_vlb of improved DDPM (Nichol & Dhariwal 2021, §3.1).

For a network with a learned variance the reverse step is
p(x_{t−1} | x_t) = N(μ_θ, Σ_θ) with Σ_θ = exp(v·log β_t + (1 − v)·log β̃_t) (their eq. 15,
v = (v_raw + 1)/2), and

    L_t = KL(q(x_{t−1} | x_t, x0) ‖ p(x_{t−1} | x_t))        t > 0     (DDPM eq. 5)
    L_0 = −log p(x0 | x1)  with a discretized Gaussian decoder        (DDPM §3.3)

measured in bits per dimension. μ_θ is computed from the *stopped-gradient* prediction, so
L_vlb trains only the variance (improved DDPM §3.1: "we apply a stop-gradient to the μ_θ(x_t, t)
output for the L_vlb term"). The posterior q(x_{t−1} | x_t, x0) is DDPM eqs. 6–7.
"""

from __future__ import annotations

import math

import torch

from diffkit.schedules.base import DiscreteSchedule

_LOG2 = math.log(2.0)


def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) ‖ N(mean2, e^logvar2)) elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1)


def _standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) per element for data x ∈ [−1, 1] quantized to 256 levels (bins of width 2/255).

    The first and last bins extend to −∞ and +∞ (DDPM §3.3, eq. 13).
    """
    centered = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _standard_normal_cdf(inv_std * (centered + 1 / 255))
    cdf_minus = _standard_normal_cdf(inv_std * (centered - 1 / 255))
    tiny = 1e-12
    log_cdf_plus = cdf_plus.clamp(min=tiny).log()
    log_one_minus_cdf_minus = (1 - cdf_minus).clamp(min=tiny).log()
    log_probs = torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_minus, (cdf_plus - cdf_minus).clamp(min=tiny).log()),
    )
    return log_probs


def posterior_mean_logvar(
    schedule: DiscreteSchedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(μ̃_t, log β̃_t, log β_t) of q(x_{t−1} | x_t, x0), DDPM eqs. 6–7, for integer t [B] ≥ 0.

    log β̃_0 (β̃_0 = 0) is replaced by log β̃_1, as in the improved-DDPM code, so the
    learned variance interpolation stays finite at t = 0.
    """
    abar = schedule.table_on("alphas_cumprod", x0.device)  # float64 [T], cached on the device
    betas = schedule.table_on("betas", x0.device)
    abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
    tilde = betas * (1 - abar_prev) / (1 - abar)  # β̃_t
    log_tilde = torch.cat([tilde[1:2], tilde[1:]]).log()
    coef_x0 = betas * abar_prev.sqrt() / (1 - abar)
    coef_xt = (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar)
    shape = (-1,) + (1,) * (x0.ndim - 1)

    def pick(table: torch.Tensor) -> torch.Tensor:
        return table[t].to(x0.dtype).reshape(shape)

    mean = pick(coef_x0) * x0 + pick(coef_xt) * x_t
    return mean, pick(log_tilde), pick(betas.log())


def vlb_loss(
    schedule: DiscreteSchedule,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    prediction: torch.Tensor,
    v_raw: torch.Tensor,
    prediction_type: str,
    alpha_bar: torch.Tensor,
) -> torch.Tensor:
    """Mean over the batch of L_t in bits/dim (t > 0: KL; t = 0: decoder NLL).

    ``prediction`` is the (stopped-gradient) ε / x0 / v output, ``v_raw`` the variance
    channels in [−1, 1], ``alpha_bar`` ᾱ_t broadcast as [B, 1, …].
    """
    if prediction_type == "eps":
        x0_hat = (x_t - (1 - alpha_bar).sqrt() * prediction) / alpha_bar.sqrt()
    elif prediction_type == "x0":
        x0_hat = prediction
    else:  # v: x0 = √ᾱ x_t − √(1−ᾱ) v
        x0_hat = alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * prediction
    true_mean, log_tilde, log_beta = posterior_mean_logvar(schedule, x0, x_t, t)
    model_mean, _, _ = posterior_mean_logvar(schedule, x0_hat, x_t, t)
    frac = (v_raw + 1) / 2
    model_logvar = frac * log_beta + (1 - frac) * log_tilde  # improved DDPM eq. 15
    kl = normal_kl(true_mean, log_tilde, model_mean, model_logvar).flatten(1).mean(1) / _LOG2
    nll = -discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar).flatten(1).mean(1) / _LOG2
    return torch.where(t == 0, nll, kl).mean()
