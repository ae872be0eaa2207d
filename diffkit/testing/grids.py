"""σ grids used by the checks (float64 CPU tensors, decreasing, ending at 0)."""

from __future__ import annotations

import torch

from diffkit.schedules.flow import FlowSchedule, sigma_from_t
from diffkit.schedules.spacings import karras

# The start of every accuracy grid on the σ path: EDM's σ_max, ≈ 50× the data's scale (≈ 1.4 here).
SIGMA_MAX = 80.0
# SD3's time shift, the flow path's grids: it spends more of the steps near t = 1
FLOW_SHIFT = 3.0


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5 (:func:`diffkit.schedules.spacings.karras`), then 0.

    The same argument order as the spacing (σ_min before σ_max). Returns a float64 CPU tensor
    [steps + 1]; with steps = 1 it is [σ_max, 0].
    """
    head = karras(steps, sigma_min, sigma_max, rho)
    return torch.cat([head, head.new_zeros(1)])


def convergence_sigmas(steps: int) -> torch.Tensor:
    """The grid of the convergence check: Karras ρ = 7 from σ_max = 80 to σ_min = 1/N, then 0.

    Why σ_min shrinks with N: the last step jumps from σ_min straight to 0, which most
    samplers take as x0 = D(y, σ_min). That step alone misses the exact flow by
    O(σ_min²/λ) (λ: the data's variance along a direction; see
    ``diffkit_reference.analytic.GaussianData.ode_solution``). With a fixed σ_min this is a
    floor that flattens the error curve of any good sampler once its discretization error
    drops below it, so the observed order would say "does not converge". With σ_min = 1/N
    the floor falls like N⁻², so the observed order is min(true order, 2) — enough to tell
    a consistent method (≥ 1) from a biased one (→ 0).
    """
    return karras_sigmas(steps, 1.0 / steps, SIGMA_MAX)


def moment_sigmas(steps: int) -> torch.Tensor:
    """The grid of the moment check for stochastic samplers: Karras ρ = 7 from 80 to 0.002, then 0."""
    return karras_sigmas(steps, 0.002, SIGMA_MAX)


def flow_sigmas(steps: int, shift: float = FLOW_SHIFT) -> torch.Tensor:
    """The flow path's grid: t_i = 1 − i/N (i = 0 … N) under SD3's shift, as σ = t/(1 − t).

    Rectified flow's own Euler grid, float64 CPU [steps + 1]: the first σ is
    :data:`~diffkit.schedules.FLOW_SIGMA_MAX` (t = 1), the last 0. It is diffusers'
    ``FlowMatchEulerDiscreteScheduler`` grid except at its low end: diffusers stops at the fixed
    t = 1/T before jumping to 0, this grid at t = shift(1/N) ≈ 3/N, so — like
    :func:`convergence_sigmas` — the final step's floor falls as N⁻² and does not hide a
    sampler's order.
    """
    t = torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)[:-1]
    return torch.cat([sigma_from_t(FlowSchedule(shift=shift).shift_time(t)), t.new_zeros(1)])
