"""The flow-matching training objective (rectified flow; SD3, Esser et al. 2024, §2–3).

One training example, t ∈ [0, 1] with t = 1 pure noise:

    u ~ p(u)                        uniform, logit-normal or mode (below)
    t = shift(u)                    the schedule's training shift (SD3: s·u/(1 + (s − 1)·u);
                                    none with Flux's dynamic shift, as in diffusers)
    x_t = (1 − t)·x0 + t·ε          (the network sees x_t at time t·T)
    loss = w(t) · mean over pixels of (F(x_t, t·T, cond) − v)²,   v = ε − x0

Time densities (SD3 §3.1, diffusers' ``compute_density_for_timestep_sampling`` names):

    uniform        u ~ U(0, 1)
    logit_normal   u = sigmoid(m + s·n), n ~ N(0, 1)                     (SD3 eq. 19)
    mode           u = f(r) = 1 − r − c·(cos²(πr/2) − 1 + r), r ~ U(0, 1)  (SD3 eq. 20,
                   monotone for −1 ≤ c ≤ 2/(π − 2); c = 0 is uniform)

diffusers' training scripts index the scheduler's *descending* ``timesteps`` table with
⌊u·T⌋, so their t is shift(1 − u) on the table's grid: the same law for the symmetric
densities (uniform; mode, since f(1 − r) = 1 − f(r); logit-normal with m = 0), but a
logit_mean m there acts as −m. diffkit follows the paper: m > 0 puts more weight on noisy t
(``tests/training/test_flow_objective.py`` shows both). t is continuous here, not quantised to
the T table entries.

Loss weights w(t) (diffusers' ``compute_loss_weighting_for_sd3`` names; their flow "sigma" is t):

    none        1
    sigma_sqrt  1/t²                   on the velocity loss; as |x̂0 − x0|² = t²·|v̂ − v|², it is
                                       what diffusers' scripts compute with precondition_outputs=0
                                       (with their default x0-space loss, 1/t² gives back "none")
    cosmap      2/(π·(1 − 2t + 2t²))
    min_snr     min((1 − t)², γ·t²)    Min-SNR-γ's x0 weight min(SNR, γ), SNR = ((1 − t)/t)², times t²

The inverse at sampling time is :class:`diffkit.sampling.denoisers.FlowDenoiser` with
``prediction="velocity"``: D = x_t − t·v̂.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from diffkit.schedules.flow import FlowSchedule
from diffkit.training.network_output import call_network, onto

if TYPE_CHECKING:
    from diffkit.training.objectives import Objective

FLOW_TIME_SAMPLING = ("uniform", "logit_normal", "mode")
FLOW_WEIGHTINGS = ("none", "min_snr", "sigma_sqrt", "cosmap")
MODE_SCALE_MAX = 2.0 / (math.pi - 2.0)
"""The largest mode scale c for which f(r) is monotone (f'(r) = −1 − c + (cπ/2)·sin(πr) < 0)."""


def sample_flow_times(
    objective: Objective, schedule: FlowSchedule, batch: int, generator: torch.Generator | None
) -> torch.Tensor:
    """Training times t ∈ [0, 1], float64 [B], drawn from ``generator`` on its device (CPU if None)."""
    device = generator.device if generator is not None else torch.device("cpu")
    if objective.timesteps == "logit_normal":
        n = torch.randn(batch, generator=generator, dtype=torch.float64, device=device)
        u = torch.sigmoid(objective.logit_mean + objective.logit_std * n)
    else:
        r = torch.rand(batch, generator=generator, dtype=torch.float64, device=device)
        u = r if objective.timesteps == "uniform" else mode_time(r, objective.mode_scale)
    return u if schedule.use_dynamic_shifting else schedule.shift_time(u)


def mode_time(r: torch.Tensor, scale: float) -> torch.Tensor:
    """SD3's f_mode(r; c) = 1 − r − c·(cos²(πr/2) − 1 + r), clamped to [0, 1] against round-off."""
    return (1 - r - scale * (torch.cos(math.pi * r / 2) ** 2 - 1 + r)).clamp(0.0, 1.0)


def flow_loss_weight(t: torch.Tensor, weighting: str, snr_gamma: float, t_min: float) -> torch.Tensor:
    """w(t) of the module docstring, [B] like t; sigma_sqrt takes max(t, t_min) so that t = 0 stays finite."""
    if weighting == "sigma_sqrt":
        return t.clamp(min=t_min).pow(-2)
    if weighting == "cosmap":
        return 2 / (math.pi * (1 - 2 * t + 2 * t * t))
    if weighting == "min_snr":
        return torch.minimum((1 - t) ** 2, snr_gamma * t * t)
    return torch.ones_like(t)


def flow_matching_loss(
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    cond: Any,
    schedule: FlowSchedule,
    objective: Objective,
    *,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The batch velocity loss of ``model(x_t, t·T[, cond])`` on clean data x0 [B, C, …].

    t and ε are drawn from ``generator`` on the generator's device (as
    :func:`diffkit.training.objectives.diffusion_loss` does). Returns (scalar loss, detached parts).
    """
    batch = x0.shape[0]
    source = generator.device if generator is not None else torch.device("cpu")
    t64 = sample_flow_times(objective, schedule, batch, generator)  # [B] float64, on `source`
    noise = onto(torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=source), x0.device)
    t = onto(t64, x0.device).to(x0.dtype).reshape((batch,) + (1,) * (x0.ndim - 1))
    x_t = (1 - t) * x0 + t * noise  # the flow path
    time = onto(t64 * schedule.num_train_timesteps, x0.device).to(torch.float32)  # [B], diffusers' t·T
    out = call_network(model, x_t, time, cond)
    target = (noise - x0).to(out.dtype)  # v = ε − x0
    per_sample = (out - target).pow(2).flatten(1).mean(1)  # [B]
    if objective.weighting != "none":
        t_min = float(schedule.train_t[0])
        weight = flow_loss_weight(t64, objective.weighting, objective.snr_gamma, t_min)
        per_sample = per_sample * onto(weight, x0.device).to(per_sample.dtype)
    loss = per_sample.mean()
    return loss, {"mse": loss.detach()}
