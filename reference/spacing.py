"""Inference timestep spacings, replicating diffusers' DDPMScheduler / DDIMScheduler.set_timesteps.

The names follow Lin et al. 2024, Table 2. Each returns a decreasing int64 array of shape [steps]
holding training-timestep indices in 0..T-1.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

__all__ = ["timesteps", "timesteps_leading", "timesteps_trailing", "timesteps_linspace", "SPACINGS"]

I64 = NDArray[np.int64]


def timesteps_leading(num_train_timesteps: int, steps: int, steps_offset: int = 0) -> I64:
    """"leading": step_ratio = T // steps; t = arange(steps) * step_ratio, reversed, + steps_offset.

    Example: T=10, steps=3 -> ratio 3 -> [6, 3, 0]. Never reaches T-1 unless offset.
    """
    step_ratio = num_train_timesteps // steps
    t = np.arange(steps, dtype=np.int64) * step_ratio
    return t[::-1] + steps_offset


def timesteps_trailing(num_train_timesteps: int, steps: int) -> I64:
    """"trailing": t = round(T - arange(steps) * T / steps) - 1, rounding half to even (np.round).

    Example: T=10, steps=3 -> 10 - [0, 3.33, 6.67] = [10, 6.67, 3.33] -> [10, 7, 3] - 1 = [9, 6, 2].
    Always starts at T-1.

    diffusers evaluates this as np.arange(T, 0, -T/steps) with a float step; for some (T, steps)
    where steps does not divide T that accumulates rounding error (an extra trailing element, or
    an exact .5 tie rounded the other way). This function uses the exact formula instead; the two
    agree whenever steps divides T and for the usual settings (e.g. T=1000 with 3, 7, 30, 50 steps).
    """
    # T - i*T/steps written as T*(steps - i)/steps: one float division, so exact .5 ties stay exact.
    t = np.round(num_train_timesteps * (steps - np.arange(steps)) / steps)
    return t.astype(np.int64) - 1


def timesteps_linspace(num_train_timesteps: int, steps: int) -> I64:
    """"linspace": round(linspace(0, T-1, steps)) reversed, rounding half to even.

    Example: T=10, steps=3 -> [0, 4.5, 9] -> [0, 4, 9] -> [9, 4, 0].
    """
    t = np.round(np.linspace(0, num_train_timesteps - 1, steps))
    return t[::-1].astype(np.int64)


SPACINGS = ("leading", "trailing", "linspace")


def timesteps(
    num_train_timesteps: int, steps: int, spacing: str = "leading", steps_offset: int = 0
) -> I64:
    """Dispatch on the spacing name ("leading", "trailing", "linspace").

    As in diffusers, steps_offset is added only for "leading" and ignored by the other two.
    Raises ValueError for an unknown spacing or steps outside 1..T.
    """
    if spacing not in SPACINGS:
        raise ValueError(f"unknown timestep spacing {spacing!r}; valid spacings are {', '.join(SPACINGS)}")
    if not 1 <= steps <= num_train_timesteps:
        raise ValueError(
            f"steps must be in 1..{num_train_timesteps} (num_train_timesteps) for spacing {spacing!r}"
            f" (valid spacings: {', '.join(SPACINGS)}), got {steps}"
        )
    if spacing == "leading":
        return timesteps_leading(num_train_timesteps, steps, steps_offset)
    if spacing == "trailing":
        return timesteps_trailing(num_train_timesteps, steps)
    return timesteps_linspace(num_train_timesteps, steps)
