"""σ spacings: N noise levels placed directly in σ, from σ_max down to σ_min.

Unlike the timestep spacings (:mod:`diffkit.schedules.spacing`), these pick continuous σ
between the ends of a schedule's table; a discrete network then sees fractional
timesteps through ``schedule.sigma_to_t`` (log-σ interpolation). With r_i = i/(N−1),
i = 0 … N−1 (r_0 = 0 when N = 1):

``karras``          σ_i = (σ_max^{1/ρ} + r_i·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ       (Karras et al. 2022, eq. 5)
``exponential``     log σ_i = log σ_max + r_i·(log σ_min − log σ_max)          (k-diffusion get_sigmas_exponential)
``logsnr_uniform``  λ_i uniform between λ(σ_max) and λ(σ_min), λ = log(α_t/σ_t)  (Lu et al. 2022, DPM-Solver §3.3)

``logsnr_uniform`` *is* ``exponential``. In the VP form α_t = √ᾱ_t, σ_t = √(1−ᾱ_t) and the
σ form's σ = √((1−ᾱ)/ᾱ) = σ_t/α_t, so λ = log(α_t/σ_t) = −log σ: a grid uniform in λ is a grid
uniform in log σ between the same ends (diffusers' ``use_lu_lambdas`` and
``use_exponential_sigmas`` give the same σ too). It is kept as its own name because papers
and users ask for it by that name; tests pin the identity from an independent derivation
through ᾱ and λ.

Each function returns a float64 CPU tensor [N], decreasing, whose first entry is exactly σ_max
and last exactly σ_min (N = 1 gives [σ_max]); the caller appends the final 0 and rejects a grid
that repeats a value (a range too narrow for N steps in float64).
The ends are pinned because (a^{1/ρ})^ρ and exp(log a) may miss a by an ulp, and the first σ
should be the table's σ_{T−1} itself (it maps to t = T−1 exactly).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch

from diffkit.errors import ConfigError
from diffkit.samplers.common import is_integer

SigmaSpacing = Callable[..., torch.Tensor]


def _ramp(steps: int) -> torch.Tensor:
    """r_i = i/(N−1), float64 [N]; [0] for N = 1 (the single step starts at σ_max)."""
    return torch.arange(steps, dtype=torch.float64) / max(steps - 1, 1)


def _ramp_down(steps: int) -> torch.Tensor:
    """1 − r_i computed as (N−1−i)/(N−1), correctly rounded even where r_i is close to 1."""
    return torch.arange(steps - 1, -1, -1, dtype=torch.float64) / max(steps - 1, 1)


def _pin_ends(grid: torch.Tensor, sigma_min: float, sigma_max: float) -> torch.Tensor:
    grid[0] = sigma_max
    if grid.numel() > 1:
        grid[-1] = sigma_min
    return grid


def karras(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. 2022, eq. 5: linear in σ^{1/ρ}; ρ = 7 crowds the steps near σ_min.

    ρ = 1 is linear in σ; ρ → ∞ tends to the exponential (log-σ uniform) spacing.
    Returns float64 [steps], σ_max first, σ_min last.
    """
    hi, lo = sigma_max ** (1 / rho), sigma_min ** (1 / rho)  # σ_max^{1/ρ}, σ_min^{1/ρ}
    # eq. 5's hi + r·(lo − hi) as the convex combination (1 − r)·hi + r·lo, with both weights
    # correctly rounded: a sum of two positive terms, so σ_i is accurate to ~ρ·ulp everywhere.
    # As printed, eq. 5 cancels near σ_min (ρ = 1 on [0.01, 4096]: 4e-11 off; ρ = 0.25: exactly 0).
    base = _ramp_down(steps) * hi + _ramp(steps) * lo  # σ_i^{1/ρ}, [N]
    return _pin_ends(base**rho, sigma_min, sigma_max)


def exponential(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform in log σ (a geometric sequence): k-diffusion's ``get_sigmas_exponential``.

    Returns float64 [steps], σ_max first, σ_min last.
    """
    log_hi, log_lo = math.log(sigma_max), math.log(sigma_min)
    return _pin_ends(torch.exp(log_hi + _ramp(steps) * (log_lo - log_hi)), sigma_min, sigma_max)


def logsnr_uniform(steps: int, sigma_min: float, sigma_max: float) -> torch.Tensor:
    """Uniform in the log-SNR λ = log(α_t/σ_t) (DPM-Solver's "logSNR" steps, diffusers' ``use_lu_lambdas``).

    Since λ = −log σ in σ form, this is exactly :func:`exponential` (see the module
    docstring); it is computed by it, so the two names give bit-identical grids.
    """
    return exponential(steps, sigma_min, sigma_max)


SIGMA_SPACINGS: dict[str, SigmaSpacing] = {
    "karras": karras,
    "exponential": exponential,
    "logsnr_uniform": logsnr_uniform,
}


# -- validation ---------------------------------------------------------------------------


def _positive_finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{name} must be a positive finite number, got {value!r} ({type(value).__name__})")
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
    return number


# σ spacings are not capped at T (σ is continuous), but a grid is a host table of steps + 1
# float64 values and each step one network call: 100 000 is far past any useful count.
MAX_SIGMA_STEPS = 100_000


def check_sigma_steps(steps: object) -> int:
    """``steps`` for a σ spacing: an integer in 1 … :data:`MAX_SIGMA_STEPS` (not capped at T)."""
    if not is_integer(steps) or not 1 <= steps <= MAX_SIGMA_STEPS:
        raise ConfigError(f"steps must be an integer ≥ 1 and ≤ {MAX_SIGMA_STEPS} for a σ spacing, got {steps!r}")
    return int(steps)


def check_rho(rho: object) -> float:
    """ρ of the Karras spacing: a positive finite number."""
    return _positive_finite("rho", rho)


def check_sigma_range(sigma_min: object, sigma_max: object) -> tuple[float, float]:
    """(σ_min, σ_max) as floats: both positive and finite, σ_min < σ_max."""
    low, high = _positive_finite("sigma_min", sigma_min), _positive_finite("sigma_max", sigma_max)
    if not low < high:
        raise ConfigError(f"sigma_min ({low:g}) must be smaller than sigma_max ({high:g})")
    return low, high
