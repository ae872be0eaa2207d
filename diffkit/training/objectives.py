"""Training objectives: noise levels, targets, min-SNR-γ weights and the hybrid loss.

One training example (Ho et al. 2020, Alg. 1, written with σ as in Karras et al. 2022):

    σ ~ p(σ)                                   uniform over the T table entries, or log-normal
    ᾱ = 1/(1 + σ²),  t = schedule.sigma_to_t(σ) (exact integers for table entries)
    x_t = √ᾱ · x0 + √(1 − ᾱ) · ε               (DDPM eq. 4; the network input)
    target: ε, x0, or v = √ᾱ · ε − √(1 − ᾱ) · x0  (Salimans & Ho 2022)
    loss = w(SNR) · mean over pixels of (F(x_t, t, cond) − target)²,   SNR = ᾱ/(1 − ᾱ) = 1/σ²

Min-SNR-γ (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy",
§3.4) caps the x0-space weight at γ; written for each target it is

    ε: min(SNR, γ)/SNR      x0: min(SNR, γ)      v: min(SNR, γ)/(SNR + 1).

A network with a learned variance (2C output channels) trains with the hybrid loss of
Nichol & Dhariwal 2021 (§3.1): L_simple + λ·L_vlb, λ = 0.001 (:mod:`diffkit.training.vlb`).

These are the same equations the VP adapter :class:`diffkit.sampling.denoisers.VPDenoiser` inverts at
sampling time, so a network trained here is sampled through that adapter unchanged.

``prediction="flow"`` is flow matching instead (a velocity target on the path
x_t = (1 − t)·x0 + t·ε of a ``flow`` schedule): :mod:`diffkit.training.flow_objective`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import torch

from diffkit.errors import ConfigError
from diffkit.sampling.denoisers import PREDICTIONS
from diffkit.schedules.base import DiscreteSchedule
from diffkit.schedules.flow import FlowSchedule
from diffkit.training.flow_objective import FLOW_TIME_SAMPLING, FLOW_WEIGHTINGS, MODE_SCALE_MAX, flow_matching_loss
from diffkit.training.network_output import call_network, onto
from diffkit.training.vlb import vlb_loss
from diffkit.validators import finite_real, one_of, positive_real, real_in

FLOW = "flow"
"""The flow-matching parameterization: the network predicts the velocity v = ε − x0."""
PARAMETERIZATIONS = (*PREDICTIONS, FLOW)
VP_WEIGHTINGS = ("none", "min_snr")
VP_TIMESTEP_SAMPLING = ("uniform", "lognormal")
WEIGHTINGS = tuple(dict.fromkeys(VP_WEIGHTINGS + FLOW_WEIGHTINGS))
TIMESTEP_SAMPLING = tuple(dict.fromkeys(VP_TIMESTEP_SAMPLING + FLOW_TIME_SAMPLING))






@attrs.frozen(kw_only=True)
class Objective:
    """What a diffusion network is trained to predict, at which noise levels, with which weights.

    Args:
        prediction: the network's target: ``"eps"``, ``"x0"`` or ``"v"`` on a VP schedule, or
            ``"flow"`` (the velocity ε − x0 on a ``flow`` schedule).
        weighting: ``"none"`` (L_simple) or ``"min_snr"`` (Min-SNR-γ); for flow also
            ``"sigma_sqrt"`` and ``"cosmap"`` (SD3; :mod:`diffkit.training.flow_objective`).
        snr_gamma: γ of Min-SNR-γ (the paper's default 5).
        timesteps: VP: ``"uniform"`` over the T table entries (DDPM) or ``"lognormal"``
            (ln σ ~ N(lognormal_mean, lognormal_std²), EDM §5, clamped to the table's σ range;
            the network then sees fractional t). Flow: ``"uniform"``, ``"logit_normal"`` or
            ``"mode"`` densities of t ∈ [0, 1] (SD3 §3.1), then the schedule's shift.
        lognormal_mean, lognormal_std: P_mean and P_std of EDM (−1.2, 1.2).
        logit_mean, logit_std: m and s of SD3's logit-normal (SD3 trains with 0 and 1).
        mode_scale: c of SD3's mode density, −1 ≤ c ≤ 2/(π − 2) (diffusers' default 1.29).
        vlb_weight: λ of the hybrid loss for learned-variance networks (improved DDPM: 0.001).
    """

    prediction: str = attrs.field(default="eps", validator=one_of(PARAMETERIZATIONS))
    weighting: str = attrs.field(default="none", validator=one_of(WEIGHTINGS))
    snr_gamma: float = attrs.field(default=5.0, validator=positive_real)
    timesteps: str = attrs.field(default="uniform", validator=one_of(TIMESTEP_SAMPLING))
    lognormal_mean: float = attrs.field(default=-1.2, validator=finite_real)
    lognormal_std: float = attrs.field(default=1.2, validator=positive_real)
    logit_mean: float = attrs.field(default=0.0, validator=finite_real)
    logit_std: float = attrs.field(default=1.0, validator=positive_real)
    mode_scale: float = attrs.field(default=1.29, validator=real_in(-1.0, MODE_SCALE_MAX))
    vlb_weight: float = attrs.field(default=0.001, validator=positive_real)

    def __attrs_post_init__(self) -> None:
        flow = self.prediction == FLOW
        family, times, weights = (
            ("flow matching", FLOW_TIME_SAMPLING, FLOW_WEIGHTINGS) if flow
            else (f"the VP {self.prediction!r} target", VP_TIMESTEP_SAMPLING, VP_WEIGHTINGS)
        )
        if self.timesteps not in times:
            raise ConfigError(
                f"timesteps={self.timesteps!r} is not a time sampling of {family}; valid: {', '.join(times)}"
            )
        if self.weighting not in weights:
            raise ConfigError(
                f"weighting={self.weighting!r} is not a loss weighting of {family}; valid: {', '.join(weights)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def sample_sigmas(
    objective: Objective, schedule: DiscreteSchedule, batch: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Training noise levels σ, float64 [B], drawn from ``generator`` on its device (CPU if None)."""
    device = generator.device if generator is not None else torch.device("cpu")
    if objective.timesteps == "uniform":
        t = torch.randint(0, schedule.num_train_timesteps, (batch,), generator=generator, device=device)
        return schedule.table_on("sigmas", device)[t]
    log_sigma = objective.lognormal_mean + objective.lognormal_std * torch.randn(
        batch, generator=generator, dtype=torch.float64, device=device
    )
    return log_sigma.exp().clamp(schedule.sigma_min, schedule.sigma_max)


def min_snr_weight(snr: torch.Tensor, prediction: str, gamma: float) -> torch.Tensor:
    """Min-SNR-γ loss weight per sample for the given prediction target (Hang et al. 2023)."""
    capped = snr.clamp(max=gamma)
    if prediction == "x0":
        return capped
    if prediction == "v":
        return capped / (snr + 1)
    # ε: min(SNR, γ)/SNR; at SNR → 0 the limit is 1 (min(SNR, γ) = SNR)
    return torch.where(snr > 0, capped / snr.clamp(min=torch.finfo(snr.dtype).tiny), torch.ones_like(snr))


def training_target(x0: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor, prediction: str) -> torch.Tensor:
    """ε, x0 or v = √ᾱ ε − √(1−ᾱ) x0; ``alpha_bar`` broadcasts against x0 ([B, 1, …, 1])."""
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0


def diffusion_loss(
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    cond: Any,
    schedule: DiscreteSchedule | FlowSchedule,
    objective: Objective,
    *,
    generator: torch.Generator | None = None,
    learned_variance: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The batch loss of ``model(x_t, t[, cond])`` on clean data x0 [B, C, …].

    A ``"flow"`` objective needs a :class:`~diffkit.schedules.flow.FlowSchedule` and is
    :func:`~diffkit.training.flow_objective.flow_matching_loss`; the VP targets need a VP table.

    Noise levels, ε (and the conditioner's CFG drops) are drawn from ``generator`` on the
    generator's device: a CPU generator gives the same numbers whatever device x0 is on; a
    CUDA generator keeps the whole step on the GPU (no host→device copy that would
    synchronise). Returns (scalar loss, detached parts).
    """
    if (objective.prediction == FLOW) != isinstance(schedule, FlowSchedule):
        raise ConfigError(
            f"objective prediction {objective.prediction!r} cannot train on a {type(schedule).__name__}: "
            "prediction='flow' goes with the 'flow' schedule, 'eps', 'x0' and 'v' with a VP schedule"
        )
    if objective.prediction == FLOW:
        if learned_variance:
            raise ConfigError("a learned variance (2C output channels) is a VP model's; a flow model predicts C")
        return flow_matching_loss(model, x0, cond, schedule, objective, generator=generator)
    if learned_variance and objective.timesteps != "uniform":
        raise ConfigError(
            "the hybrid loss of a learned-variance network needs integer timesteps: use timesteps='uniform'"
        )
    batch = x0.shape[0]
    source = generator.device if generator is not None else torch.device("cpu")
    sigma = sample_sigmas(objective, schedule, batch, generator)  # [B] float64, on `source`
    noise = onto(torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=source), x0.device)
    alpha_bar64 = 1 / (1 + sigma * sigma)  # ᾱ = 1/(1+σ²)
    shape = (batch,) + (1,) * (x0.ndim - 1)
    alpha_bar = onto(alpha_bar64, x0.device).to(x0.dtype).reshape(shape)
    t = onto(schedule.sigma_to_t(sigma), x0.device).to(torch.float32)  # [B]
    x_t = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise  # DDPM eq. 4
    out = call_network(model, x_t, t, cond, learned_variance=learned_variance)
    prediction, v_raw = out.chunk(2, dim=1) if learned_variance else (out, None)
    target = training_target(x0, noise, alpha_bar, objective.prediction).to(prediction.dtype)
    per_sample = (prediction - target).pow(2).flatten(1).mean(1)  # [B]
    if objective.weighting == "min_snr":
        snr = onto(alpha_bar64 / (1 - alpha_bar64), x0.device).to(per_sample.dtype)
        per_sample = per_sample * min_snr_weight(snr, objective.prediction, objective.snr_gamma)
    loss = per_sample.mean()
    parts = {"mse": loss.detach()}
    if learned_variance:
        vlb = vlb_loss(
            schedule, x0, x_t, t.round().long(), prediction.detach(), v_raw, objective.prediction, alpha_bar
        )
        # L_vlb = Σ_t L_t ≈ T · E_t[L_t] (improved DDPM §3.1), so λ·L_vlb = λ·T·E_t[L_t]
        loss = loss + objective.vlb_weight * schedule.num_train_timesteps * vlb
        parts["vlb"] = vlb.detach()
    return loss, parts
