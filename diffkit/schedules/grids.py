"""Every inference spacing in one registry, and the check on user-given σ grids.

:data:`SPACINGS` maps a spacing name to a grid function

    fn(schedule, steps, **options) -> σ      float64 CPU [steps + 1], strictly decreasing, last 0

whose keyword-only parameters are the spacing's options (``inspect.signature`` lists them,
so :func:`spacing_options` and the error messages never drift from the code). The schedule is
duck-typed: timestep spacings use ``num_train_timesteps`` and ``sigmas_from_timesteps``,
σ spacings only the ends of the float64 ``sigmas`` table [T].

timestep spacings  ``leading``, ``trailing``, ``linspace``   — σ at N table timesteps (diffusers)
σ spacings         ``karras``, ``exponential``, ``logsnr_uniform`` — continuous σ in [σ_min, σ_max]
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from diffkit.errors import ConfigError, UnknownNameError, check_choice
from diffkit.samplers.common import META_SIGMAS
from diffkit.schedules import sigma_spacing
from diffkit.schedules.spacing import spaced_timesteps

GridFn = Callable[..., torch.Tensor]


class SpacingOptionError(UnknownNameError, ConfigError):
    """An option the chosen spacing does not take (a LookupError and a ValueError)."""


# -- timestep spacings: σ at N of the T training timesteps ---------------------------------


def _leading(schedule: Any, steps: int, *, steps_offset: int = 0) -> torch.Tensor:
    """t_i = i·⌊T/N⌋ + steps_offset (steps_offset = 1: Stable Diffusion)."""
    t = spaced_timesteps(schedule.num_train_timesteps, steps, "leading", steps_offset)
    return schedule.sigmas_from_timesteps(t)


def _trailing(schedule: Any, steps: int) -> torch.Tensor:
    """t_i = round(T − i·T/N) − 1 (starts at T−1; Lin et al. 2024)."""
    return schedule.sigmas_from_timesteps(spaced_timesteps(schedule.num_train_timesteps, steps, "trailing"))


def _linspace(schedule: Any, steps: int) -> torch.Tensor:
    """t_i = round(linspace(0, T−1, N)) reversed."""
    return schedule.sigmas_from_timesteps(spaced_timesteps(schedule.num_train_timesteps, steps, "linspace"))


# -- σ spacings: continuous σ between the table's ends (or the user's σ_min / σ_max) -------


def _sigma_range(schedule: Any, sigma_min: float | None, sigma_max: float | None) -> tuple[float, float]:
    """(σ_min, σ_max): the user's values, else the table ends σ_0 and σ_{T−1} (finite, also with zero SNR)."""
    table = schedule.sigmas
    low = float(table[0]) if sigma_min is None else sigma_min
    high = float(table[-1]) if sigma_max is None else sigma_max
    return sigma_spacing.check_sigma_range(low, high)


def _append_zero(head: torch.Tensor) -> torch.Tensor:
    return torch.cat([head, head.new_zeros(1)])


def _karras(
    schedule: Any, steps: int, *, rho: float = 7.0, sigma_min: float | None = None, sigma_max: float | None = None
) -> torch.Tensor:
    """Karras et al. 2022, eq. 5, with ρ (default 7) and the σ range (default: the table's ends)."""
    steps, rho = sigma_spacing.check_sigma_steps(steps), sigma_spacing.check_rho(rho)
    low, high = _sigma_range(schedule, sigma_min, sigma_max)
    return _append_zero(sigma_spacing.karras(steps, low, high, rho))


def _exponential(
    schedule: Any, steps: int, *, sigma_min: float | None = None, sigma_max: float | None = None
) -> torch.Tensor:
    """Uniform in log σ between σ_max and σ_min (default: the table's ends)."""
    steps = sigma_spacing.check_sigma_steps(steps)
    return _append_zero(sigma_spacing.exponential(steps, *_sigma_range(schedule, sigma_min, sigma_max)))


def _logsnr_uniform(
    schedule: Any, steps: int, *, sigma_min: float | None = None, sigma_max: float | None = None
) -> torch.Tensor:
    """Uniform in λ = log(α_t/σ_t) = −log σ; the same grid as ``exponential`` (see sigma_spacing)."""
    steps = sigma_spacing.check_sigma_steps(steps)
    return _append_zero(sigma_spacing.logsnr_uniform(steps, *_sigma_range(schedule, sigma_min, sigma_max)))


SPACINGS: dict[str, GridFn] = {
    "leading": _leading,
    "trailing": _trailing,
    "linspace": _linspace,
    "karras": _karras,
    "exponential": _exponential,
    "logsnr_uniform": _logsnr_uniform,
}


def spacing_options(spacing: str) -> tuple[str, ...]:
    """The option names ``spacing`` takes (its grid function's keyword-only parameters)."""
    check_choice("spacing", spacing, SPACINGS)
    params = inspect.signature(SPACINGS[spacing]).parameters.values()
    return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY)


def spacing_grid(schedule: Any, steps: int, spacing: str, options: Mapping[str, Any]) -> torch.Tensor:
    """σ grid [steps + 1] of ``spacing`` with ``options``; errors name the valid spacings/options."""
    valid = spacing_options(spacing)
    for key in options:
        if key not in valid:
            raise _option_error(spacing, key, valid)
    grid = SPACINGS[spacing](schedule, steps, **options)
    if grid.numel() > 2 and not bool((grid[1:-1] < grid[:-2]).all()):
        raise ConfigError(
            f"{steps} {spacing!r} steps between sigma_min={float(grid[-2]):.17g} and "
            f"sigma_max={float(grid[0]):.17g} repeat a σ in float64; widen the range or take fewer steps"
        )
    return grid


def _option_error(spacing: str, key: str, valid: tuple[str, ...]) -> SpacingOptionError:
    error = SpacingOptionError(f"option of spacing {spacing!r}", key, valid)
    message = f"spacing {spacing!r} has no option {key!r}"
    if error.suggestions:
        message += "; did you mean " + " or ".join(repr(s) for s in error.suggestions) + "?"
    message += f" (valid options: {', '.join(valid) if valid else 'none'})"
    owners = [name for name in SPACINGS if name != spacing and key in spacing_options(name)]
    if owners:
        message += f"; {key!r} only applies to " + ", ".join(repr(n) for n in owners)
    error.args = (message,)
    return error


# -- user-given σ ---------------------------------------------------------------------------


def user_sigmas(sigmas: Any) -> torch.Tensor:
    """A user's σ grid as a float64 CPU tensor: finite, ≥ 0, strictly decreasing, ending at 0.

    A grid whose last value is positive gets the final 0 appended (k-diffusion's
    ``append_zero``): every diffkit sampler ends at σ = 0, so ``[14.6, 3.0, 0.5]`` means three
    steps 14.6 → 3.0 → 0.5 → 0. A 0 anywhere but the end, a negative or non-finite value, or
    a repeat is an error naming the entry.
    """
    try:
        # Python numbers stay float64 (torch.as_tensor would round a list to float32)
        s = sigmas.detach() if isinstance(sigmas, torch.Tensor) else torch.as_tensor(sigmas, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"sigmas must be a 1-D sequence of numbers, got {type(sigmas).__name__}: {exc}") from exc
    if s.is_meta:
        raise ConfigError(META_SIGMAS)
    if s.ndim != 1 or s.numel() == 0 or s.dtype == torch.bool or s.is_complex():
        raise ConfigError(f"sigmas must be a non-empty 1-D sequence of real numbers, got shape {tuple(s.shape)}")
    if isinstance(sigmas, torch.Tensor) and not s.is_floating_point():
        # an integer tensor is far more often training timesteps passed to the wrong argument
        raise ConfigError(
            f"sigmas is a tensor of dtype {str(s.dtype).removeprefix('torch.')}; noise levels are real numbers: pass a "
            "floating-point tensor (or, for training timesteps such as [999, 499], pass them as timesteps=)"
        )
    levels = s.to("cpu", torch.float64).tolist()
    for i, value in enumerate(levels):
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"sigmas must be finite and ≥ 0; sigmas[{i}] = {value}")
    for i in range(len(levels) - 1):
        if not levels[i] > levels[i + 1]:
            raise ConfigError(
                f"sigmas must be strictly decreasing, but sigmas[{i}] = {levels[i]} and "
                f"sigmas[{i + 1}] = {levels[i + 1]}"
            )
    if levels[-1] > 0:
        levels.append(0.0)
    if len(levels) < 2:
        raise ConfigError("sigmas must hold at least one positive noise level before the final 0, got [0]")
    return torch.tensor(levels, dtype=torch.float64)
