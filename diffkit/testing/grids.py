"""σ grids used by the checks (float64 CPU tensors, decreasing, ending at 0)."""

from __future__ import annotations

import torch

from diffkit.schedules.spacings import karras

# The start of every accuracy grid: EDM's σ_max, ≈ 50× the data's scale (≈ 1.4 here).
SIGMA_MAX = 80.0


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
