"""diffusers counterparts of diffkit's samplers, and a driver that runs them on analytic data.

Both libraries get the same float64 β table (diffusers' tables are overwritten with
diffkit's), the same starting noise z and an exact ε-network for the data, so the only
difference left is the solver (and, where a scheduler insists on one, its σ grid).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

# diffkit sampler -> (diffusers scheduler class, constructor options that select the same algorithm)
DIFFUSERS_PEERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": True}),
    "ddpm": ("DDPMScheduler", {"clip_sample": False}),
    "euler_ancestral": ("EulerAncestralDiscreteScheduler", {}),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "final_sigmas_type": "zero"}),
    "euler": ("EulerDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm2": ("KDPM2DiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2, "final_sigmas_type": "zero"}),
    "dpmpp_3m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 3, "final_sigmas_type": "zero"}),
    "unipc": ("UniPCMultistepScheduler", {"solver_type": "bh2", "final_sigmas_type": "zero"}),
}


def make_scheduler(name: str, schedule: Any, spacing: str, **extra: Any) -> Any:
    """The diffusers peer of diffkit sampler ``name`` on diffkit's float64 ``schedule`` table."""
    import diffusers

    class_name, options = DIFFUSERS_PEERS[name]
    cls = getattr(diffusers, class_name)
    scheduler = cls(num_train_timesteps=schedule.num_train_timesteps, timestep_spacing=spacing, **options, **extra)
    scheduler.betas = schedule.betas.clone()
    scheduler.alphas = 1 - scheduler.betas
    scheduler.alphas_cumprod = schedule.alphas_cumprod.clone()
    if hasattr(scheduler, "final_alpha_cumprod"):
        scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
    return scheduler


def diffusers_sigma_grid(scheduler: Any, schedule: Any) -> torch.Tensor:
    """The σ sequence a diffusers scheduler visits (float64, ending at 0)."""
    sigmas = getattr(scheduler, "sigmas", None)
    if sigmas is None or type(scheduler).__name__ == "DDIMScheduler":
        t = scheduler.timesteps.long()
        return torch.cat([schedule.sigmas[t], schedule.sigmas.new_zeros(1)])
    # Heun/KDPM2 repeat each σ (one entry per model call): keep each level once
    sigmas = torch.unique_consecutive(sigmas.double())
    return sigmas if sigmas[-1] == 0 else torch.cat([sigmas, sigmas.new_zeros(1)])


class ExactEpsModel:
    """ε(x_t, t) for data whose exact denoiser is ``denoise(y [n, d], sigma [n]) -> x0``.

    x_t = √ᾱ·y and σ from t through the schedule's log-σ interpolation (the inverse of the
    map both libraries use), so ε = (y − D(y, σ))/σ. Counts its calls (the NFE).
    """

    def __init__(self, denoise: Callable[[np.ndarray, np.ndarray], np.ndarray], schedule: Any) -> None:
        self.denoise, self.schedule, self.calls = denoise, schedule, 0

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        t = torch.as_tensor(t, dtype=torch.float64).reshape(-1).expand(x_t.shape[0])
        sigma = self.schedule.t_to_sigma(t).reshape(-1, 1)
        y = x_t.double() * (1 + sigma**2).sqrt()
        x0 = torch.from_numpy(self.denoise(y.numpy(), sigma.reshape(-1).numpy()))
        return (y - x0) / sigma


def run_diffusers(scheduler: Any, model: ExactEpsModel, z: torch.Tensor) -> torch.Tensor:
    """diffusers' sampling loop from VP noise ``z`` [n, d]; returns x0 [n, d] (float64)."""
    x = z.double() * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        eps = model(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(eps, t, x).prev_sample
    return x
