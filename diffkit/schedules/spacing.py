"""Timestep spacings: which N of the T training timesteps an N-step sampler visits.

Definitions follow diffusers' ``timestep_spacing`` (and so the DDIM/DDPM papers' practice):

``leading``   t_i = i·⌊T/N⌋ + steps_offset, i = N−1 … 0 (DDPM/DDIM, Stable Diffusion with offset 1)
``trailing``  t_i = round(T − i·T/N) − 1, i = 0 … N−1 (always starts at T−1; Lin et al. 2024 §3.3)
``linspace``  t_i = round(linspace(0, T−1, N)) reversed (starts at T−1, ends at 0)

Every function returns an int64 tensor of shape [N], strictly decreasing, inside [0, T−1].
The σ spacings (karras, exponential, logsnr_uniform) are in :mod:`diffkit.schedules.sigma_spacing`;
:data:`diffkit.schedules.SPACINGS` lists all six.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch

from diffkit.errors import ConfigError, check_choice


def _leading(num_train_timesteps: int, steps: int, steps_offset: int) -> torch.Tensor:
    ratio = num_train_timesteps // steps
    return torch.arange(steps - 1, -1, -1, dtype=torch.int64) * ratio + steps_offset


def _trailing(num_train_timesteps: int, steps: int, steps_offset: int) -> torch.Tensor:
    i = torch.arange(steps, dtype=torch.float64)
    # torch.round rounds half to even, as numpy does (diffusers uses np.round here)
    return torch.round(num_train_timesteps - i * num_train_timesteps / steps).to(torch.int64) - 1


def _linspace(num_train_timesteps: int, steps: int, steps_offset: int) -> torch.Tensor:
    # i·(T−1)/(N−1) with the last point pinned, the way numpy.linspace (used by diffusers)
    # evaluates it: torch.linspace rounds differently and flips ties such as 190.5.
    grid = torch.arange(steps, dtype=torch.float64) * ((num_train_timesteps - 1) / max(steps - 1, 1))
    if steps > 1:
        grid[-1] = num_train_timesteps - 1
    return torch.round(grid).to(torch.int64).flip(0)


TIMESTEP_SPACINGS: dict[str, Callable[[int, int, int], torch.Tensor]] = {
    "leading": _leading,
    "trailing": _trailing,
    "linspace": _linspace,
}


def check_steps(steps: object, num_train_timesteps: int) -> int:
    """``steps`` as an int in 1..T, or a :class:`ConfigError` naming the valid range."""
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise ConfigError(
            f"steps must be an integer in 1..{num_train_timesteps}, got {steps!r} "
            f"({type(steps).__name__})"
        )
    if not 1 <= int(steps) <= num_train_timesteps:
        raise ConfigError(f"steps must be in 1..{num_train_timesteps}, got {steps}")
    return int(steps)


def spaced_timesteps(
    num_train_timesteps: int, steps: int, spacing: str = "leading", steps_offset: int = 0
) -> torch.Tensor:
    """The decreasing int64 timesteps [steps] that ``spacing`` picks out of ``0..T−1``."""
    steps = check_steps(steps, num_train_timesteps)
    check_choice("timestep spacing", spacing, TIMESTEP_SPACINGS)
    if isinstance(steps_offset, bool) or not isinstance(steps_offset, numbers.Integral):
        raise ConfigError(f"steps_offset must be an integer ≥ 0, got {steps_offset!r}")
    if steps_offset < 0:
        raise ConfigError(f"steps_offset must be ≥ 0, got {steps_offset}")
    if steps_offset and spacing != "leading":
        raise ConfigError(
            f"steps_offset={steps_offset} only applies to 'leading' spacing (as in diffusers); "
            f"'{spacing}' already places its steps, so pass steps_offset=0"
        )
    timesteps = TIMESTEP_SPACINGS[spacing](num_train_timesteps, steps, int(steps_offset))
    if int(timesteps[0]) > num_train_timesteps - 1:
        raise ConfigError(
            f"steps_offset={steps_offset} pushes the first of {steps} 'leading' timesteps to "
            f"{int(timesteps[0])}, past the last training timestep {num_train_timesteps - 1}; "
            f"use steps_offset ≤ {num_train_timesteps - 1 - int(timesteps[0]) + steps_offset}"
        )
    return timesteps


def check_timesteps(timesteps: object, num_train_timesteps: int) -> torch.Tensor:
    """User-given timesteps as an int64 tensor, strictly decreasing, inside 0..T−1."""
    t = torch.as_tensor(timesteps)
    if t.is_meta:
        raise ConfigError("timesteps are on the meta device, which holds no values; pass them as integers or a CPU tensor")
    if t.ndim != 1 or t.numel() == 0:
        raise ConfigError(f"timesteps must be a non-empty 1-D sequence, got shape {tuple(t.shape)}")
    if t.is_floating_point():
        if not torch.isfinite(t).all() or not torch.equal(t, t.round()):
            raise ConfigError(f"timesteps must be integers in 0..{num_train_timesteps - 1}, got {t.tolist()}")
    t = t.to(torch.int64)
    if int(t.min()) < 0 or int(t.max()) > num_train_timesteps - 1:
        raise ConfigError(
            f"timesteps must lie in 0..{num_train_timesteps - 1}, got min {int(t.min())} and "
            f"max {int(t.max())}"
        )
    if t.numel() > 1 and not bool((t[1:] < t[:-1]).all()):
        raise ConfigError(f"timesteps must be strictly decreasing, got {t.tolist()}")
    return t
