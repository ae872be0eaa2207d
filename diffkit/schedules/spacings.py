"""Spacings: where an N-step sampler's noise levels sit on a schedule. One module, one registry.

A spacing is a registry kind (``"spacing"``, filled through the ``diffkit_register_spacings``
hook like samplers). Its object is a grid function

    fn(schedule, steps, **options) -> σ      float64 CPU [steps + 1], strictly decreasing, last 0

whose keyword-only parameters are its options (``inspect.signature`` lists them, so
:func:`spacing_options` and the error messages never drift from the code). The schedule is
duck-typed: ``num_train_timesteps`` T, the float64 ``sigmas`` table [T] and
``sigmas_from_timesteps``. A spacing that places its steps at training timesteps registers
``timesteps=fn(T, steps, **options) -> int64 [steps]`` with it, so that
``schedule.timesteps(steps, spacing)`` can return them. Whatever a spacing returns is checked
(:func:`spacing_grid`) before a sampler sees it.

Built in, timestep spacings (diffusers' ``timestep_spacing``; σ at N of the T table timesteps):

``leading``   t_i = i·⌊T/N⌋ + steps_offset, i = N−1 … 0 (DDPM/DDIM, Stable Diffusion with offset 1)
``trailing``  t_i = round(T − i·T/N) − 1, i = 0 … N−1 (always starts at T−1; Lin et al. 2024 §3.3)
``linspace``  t_i = round(linspace(0, T−1, N)) reversed (starts at T−1, ends at 0)

and σ spacings (continuous σ from σ_max down to σ_min; a discrete network sees fractional
timesteps through ``schedule.sigma_to_t``), with r_i = i/(N−1) (r_0 = 0 when N = 1):

``karras``          σ_i = (σ_max^{1/ρ} + r_i·(σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ       (Karras et al. 2022, eq. 5)
``exponential``     log σ_i = log σ_max + r_i·(log σ_min − log σ_max)          (k-diffusion get_sigmas_exponential)
``logsnr_uniform``  λ_i uniform between λ(σ_max) and λ(σ_min), λ = log(α_t/σ_t)  (Lu et al. 2022, DPM-Solver §3.3)

``logsnr_uniform`` *is* ``exponential``: in the VP form α_t = √ᾱ_t, σ_t = √(1−ᾱ_t), and the σ
form's σ = σ_t/α_t, so λ = −log σ and a grid uniform in λ is uniform in log σ between the same
ends (diffusers' ``use_lu_lambdas`` and ``use_exponential_sigmas`` agree). It keeps its own name
because papers and users ask for it by that name; tests pin the identity independently.

The σ formulas pin their ends (σ_max first, σ_min last) because (a^{1/ρ})^ρ and exp(log a)
may miss a by an ulp, and the first σ should be the table's σ_{T−1} itself (it maps to
t = T−1 exactly).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from diffkit import registry
from diffkit.errors import ConfigError, UnknownNameError
from diffkit.samplers.common import META_SIGMAS, sigma_levels
from diffkit.validators import is_integer, is_real

GridFn = Callable[..., torch.Tensor]
"""``fn(schedule, steps, **options) -> σ`` float64 CPU [steps + 1], strictly decreasing, last 0."""

DEFAULT_SPACING = "trailing"
"""The spacing used when none is named, by :func:`diffkit.sample` and ``schedule.sigmas_for``
alike: it always starts at σ_{T−1} (Lin et al. 2024), which ``leading`` misses."""

# σ spacings are not capped at T (σ is continuous), but a grid is a host table of steps + 1
# float64 values and each step one network call: 100 000 is far past any useful count.
MAX_SIGMA_STEPS = 100_000


class SpacingOptionError(UnknownNameError, ConfigError):
    """An option the chosen spacing does not take (a LookupError and a ValueError)."""


# -- validation of the arguments ----------------------------------------------------------------


def check_steps(steps: object, num_train_timesteps: int) -> int:
    """``steps`` for a timestep spacing: an int in 1..T, or a :class:`ConfigError` naming the range."""
    if not is_integer(steps):
        raise ConfigError(
            f"steps must be an integer in 1..{num_train_timesteps}, got {steps!r} ({type(steps).__name__})"
        )
    if not 1 <= int(steps) <= num_train_timesteps:
        raise ConfigError(f"steps must be in 1..{num_train_timesteps}, got {steps}")
    return int(steps)


def check_sigma_steps(steps: object) -> int:
    """``steps`` for a σ spacing: an integer in 1 … :data:`MAX_SIGMA_STEPS` (not capped at T)."""
    if not is_integer(steps) or not 1 <= steps <= MAX_SIGMA_STEPS:
        raise ConfigError(f"steps must be an integer ≥ 1 and ≤ {MAX_SIGMA_STEPS} for a σ spacing, got {steps!r}")
    return int(steps)


def _positive_finite(name: str, value: object) -> float:
    if not is_real(value):
        raise ConfigError(f"{name} must be a positive finite number, got {value!r} ({type(value).__name__})")
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
    return number


def check_rho(rho: object) -> float:
    """ρ of the Karras spacing: a positive finite number."""
    return _positive_finite("rho", rho)


def check_sigma_range(sigma_min: object, sigma_max: object) -> tuple[float, float]:
    """(σ_min, σ_max) as floats: both positive and finite, σ_min < σ_max."""
    low, high = _positive_finite("sigma_min", sigma_min), _positive_finite("sigma_max", sigma_max)
    if not low < high:
        raise ConfigError(f"sigma_min ({low:g}) must be smaller than sigma_max ({high:g})")
    return low, high


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


def check_timesteps_values(timesteps: object, num_train_timesteps: int) -> torch.Tensor:
    """Continuous user timesteps (a flow model's t·T) as float64, strictly decreasing, inside (0, T]."""
    t = torch.as_tensor(timesteps)
    if t.is_meta or t.ndim != 1 or t.numel() == 0 or t.dtype == torch.bool or t.is_complex():
        raise ConfigError(f"timesteps must be a non-empty 1-D sequence of numbers, got {t.dtype} of shape {tuple(t.shape)}")
    t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()) or float(t.min()) <= 0 or float(t.max()) > num_train_timesteps:
        raise ConfigError(f"timesteps must be finite and lie in (0, {num_train_timesteps}], got {t.tolist()[:8]}")
    if t.numel() > 1 and not bool((t[1:] < t[:-1]).all()):
        raise ConfigError(f"timesteps must be strictly decreasing, got {t.tolist()[:8]}")
    return t


# -- timestep formulas: int64 [N], strictly decreasing, inside 0..T−1 ----------------------------


def leading_timesteps(num_train_timesteps: int, steps: int, *, steps_offset: int = 0) -> torch.Tensor:
    """t_i = i·⌊T/N⌋ + steps_offset, i = N−1 … 0; the offset must keep t_0 ≤ T−1."""
    steps = check_steps(steps, num_train_timesteps)
    if not is_integer(steps_offset) or steps_offset < 0:
        raise ConfigError(f"steps_offset must be an integer ≥ 0, got {steps_offset!r}")
    ratio = num_train_timesteps // steps
    timesteps = torch.arange(steps - 1, -1, -1, dtype=torch.int64) * ratio + int(steps_offset)
    if int(timesteps[0]) > num_train_timesteps - 1:
        raise ConfigError(
            f"steps_offset={steps_offset} pushes the first of {steps} 'leading' timesteps to "
            f"{int(timesteps[0])}, past the last training timestep {num_train_timesteps - 1}; "
            f"use steps_offset ≤ {num_train_timesteps - 1 - int(timesteps[0]) + int(steps_offset)}"
        )
    return timesteps


def trailing_timesteps(num_train_timesteps: int, steps: int) -> torch.Tensor:
    """t_i = round(T − i·T/N) − 1, i = 0 … N−1 (starts at T−1)."""
    steps = check_steps(steps, num_train_timesteps)
    i = torch.arange(steps, dtype=torch.float64)
    # torch.round rounds half to even, as numpy does (diffusers uses np.round here)
    return torch.round(num_train_timesteps - i * num_train_timesteps / steps).to(torch.int64) - 1


def linspace_timesteps(num_train_timesteps: int, steps: int) -> torch.Tensor:
    """t_i = round(linspace(0, T−1, N)) reversed (starts at T−1, ends at 0)."""
    steps = check_steps(steps, num_train_timesteps)
    # i·(T−1)/(N−1) with the last point pinned, the way numpy.linspace (used by diffusers)
    # evaluates it: torch.linspace rounds differently and flips ties such as 190.5.
    grid = torch.arange(steps, dtype=torch.float64) * ((num_train_timesteps - 1) / max(steps - 1, 1))
    if steps > 1:
        grid[-1] = num_train_timesteps - 1
    return torch.round(grid).to(torch.int64).flip(0)


TIMESTEP_SPACINGS: Mapping[str, Callable[..., torch.Tensor]] = {
    "leading": leading_timesteps,
    "trailing": trailing_timesteps,
    "linspace": linspace_timesteps,
}
"""The built-in timestep formulas, ``fn(T, steps, **options) -> int64 [steps]``."""


# -- σ formulas: float64 [N], σ_max first and σ_min last --------------------------------------


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


SIGMA_SPACINGS: Mapping[str, Callable[..., torch.Tensor]] = {
    "karras": karras,
    "exponential": exponential,
    "logsnr_uniform": logsnr_uniform,
}
"""The built-in σ formulas, ``fn(steps, sigma_min, sigma_max, ...) -> float64 [steps]``."""


# -- the registered grid functions ----------------------------------------------------------------


def _append_zero(head: torch.Tensor) -> torch.Tensor:
    return torch.cat([head, head.new_zeros(1)])


def _sigma_range(schedule: Any, sigma_min: float | None, sigma_max: float | None) -> tuple[float, float]:
    """(σ_min, σ_max): the user's values, else the table ends σ_0 and σ_{T−1} (finite, also with zero SNR)."""
    table = schedule.sigmas
    low = float(table[0]) if sigma_min is None else sigma_min
    high = float(table[-1]) if sigma_max is None else sigma_max
    return check_sigma_range(low, high)


def leading_grid(schedule: Any, steps: int, *, steps_offset: int = 0) -> torch.Tensor:
    """σ at t_i = i·⌊T/N⌋ + steps_offset (steps_offset = 1: Stable Diffusion)."""
    t = leading_timesteps(schedule.num_train_timesteps, steps, steps_offset=steps_offset)
    return schedule.sigmas_from_timesteps(t)


def trailing_grid(schedule: Any, steps: int) -> torch.Tensor:
    """σ at t_i = round(T − i·T/N) − 1 (starts at T−1; Lin et al. 2024)."""
    return schedule.sigmas_from_timesteps(trailing_timesteps(schedule.num_train_timesteps, steps))


def linspace_grid(schedule: Any, steps: int) -> torch.Tensor:
    """σ at t_i = round(linspace(0, T−1, N)) reversed."""
    return schedule.sigmas_from_timesteps(linspace_timesteps(schedule.num_train_timesteps, steps))


def karras_grid(
    schedule: Any, steps: int, *, rho: float = 7.0, sigma_min: float | None = None, sigma_max: float | None = None
) -> torch.Tensor:
    """Karras et al. 2022, eq. 5, with ρ (default 7) and the σ range (default: the table's ends)."""
    steps, rho = check_sigma_steps(steps), check_rho(rho)
    low, high = _sigma_range(schedule, sigma_min, sigma_max)
    return _append_zero(karras(steps, low, high, rho))


def exponential_grid(
    schedule: Any, steps: int, *, sigma_min: float | None = None, sigma_max: float | None = None
) -> torch.Tensor:
    """Uniform in log σ between σ_max and σ_min (default: the table's ends)."""
    steps = check_sigma_steps(steps)
    return _append_zero(exponential(steps, *_sigma_range(schedule, sigma_min, sigma_max)))


def logsnr_uniform_grid(
    schedule: Any, steps: int, *, sigma_min: float | None = None, sigma_max: float | None = None
) -> torch.Tensor:
    """Uniform in λ = log(α_t/σ_t) = −log σ; the same grid as ``exponential``."""
    steps = check_sigma_steps(steps)
    return _append_zero(logsnr_uniform(steps, *_sigma_range(schedule, sigma_min, sigma_max)))


def register_builtin_spacings(spacings: registry.Registrar) -> None:
    """The seven built-in spacings, registered through the hook a third party uses."""
    for name, grid in (("leading", leading_grid), ("trailing", trailing_grid), ("linspace", linspace_grid)):
        spacings.add(name, grid, timesteps=TIMESTEP_SPACINGS[name], paper="diffusers timestep_spacing")
    spacings.add("karras", karras_grid, paper="Karras et al. 2022, eq. 5")
    spacings.add("exponential", exponential_grid, paper="k-diffusion get_sigmas_exponential")
    spacings.add("logsnr_uniform", logsnr_uniform_grid, paper="Lu et al. 2022, DPM-Solver §3.3")
    from diffkit.integrations.diffusers.noise import diffusers_grid, diffusers_timesteps  # no diffusers; no cycle

    spacings.add("diffusers", diffusers_grid, timesteps=diffusers_timesteps,
                 paper="diffusers schedulers' set_timesteps (their config keys)")


# -- lookup through the registry ------------------------------------------------------------------


class _SpacingTable(Mapping[str, GridFn]):
    """A read-only live view of the spacing registry: name → grid function (plugins included).

    The registry loads its plugins on the first lookup, never at import.
    """

    def __getitem__(self, name: str) -> GridFn:
        if not isinstance(name, str) or name not in registry.names("spacing"):
            raise KeyError(name)
        return registry.get("spacing", name)

    def __iter__(self) -> Iterator[str]:
        return iter(registry.names("spacing"))

    def __len__(self) -> int:
        return len(registry.names("spacing"))

    def __repr__(self) -> str:
        return f"SPACINGS({', '.join(self)})"


SPACINGS: Mapping[str, GridFn] = _SpacingTable()
"""Every registered spacing (built-ins and plugins): name → grid function."""


def _entry(spacing: object) -> registry.Entry:
    if not isinstance(spacing, str):
        raise ConfigError(f"spacing must be a registered spacing name, got {spacing!r} (valid: {', '.join(SPACINGS)})")
    return registry.get_entry("spacing", spacing)


def spacing_options(spacing: str) -> tuple[str, ...]:
    """The option names ``spacing`` takes (its grid function's keyword-only parameters)."""
    return _keyword_options(_entry(spacing).obj)


def _keyword_options(grid: GridFn) -> tuple[str, ...]:
    params = inspect.signature(grid).parameters.values()
    return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY)


def places_timesteps(spacing: str) -> bool:
    """True when ``spacing`` puts its steps at training timesteps (it registered ``timesteps=``)."""
    return _entry(spacing).metadata.get("timesteps") is not None


def spacing_timesteps(num_train_timesteps: int, steps: int, spacing: str, options: Mapping[str, Any]) -> torch.Tensor:
    """The int64 training timesteps [steps] of a timestep spacing; a σ spacing is an error."""
    entry = _entry(spacing)
    formula = entry.metadata.get("timesteps")
    if formula is None:
        raise ConfigError(
            f"{spacing!r} is a σ spacing: it places continuous σ, not training timesteps; use "
            f"sigmas_for(steps, {spacing!r}) and sigma_to_t for the fractional timesteps"
        )
    _check_options(spacing, entry, options)
    return formula(num_train_timesteps, steps, **options)


def spacing_grid(schedule: Any, steps: int, spacing: str, options: Mapping[str, Any]) -> torch.Tensor:
    """σ grid [steps + 1] of ``spacing`` with ``options``, checked; errors name the valid spacings/options.

    A grid function's result (a plugin's too) must be a 1-D tensor of steps + 1 finite values,
    strictly decreasing, ending at exactly 0; it is returned as float64 on the CPU.
    """
    entry = _entry(spacing)
    _check_options(spacing, entry, options)
    grid = entry.obj(schedule, steps, **options)
    return _checked_grid(grid, steps, spacing, entry)


def _check_options(spacing: str, entry: registry.Entry, options: Mapping[str, Any]) -> None:
    valid = _keyword_options(entry.obj)
    for key in options:
        if key not in valid:
            raise _option_error(spacing, key, valid)


def _checked_grid(grid: Any, steps: int, spacing: str, entry: registry.Entry) -> torch.Tensor:
    source = f"spacing {spacing!r}" + ("" if entry.origin.builtin else f" ({entry.origin.describe()})")
    if not isinstance(grid, torch.Tensor) or grid.ndim != 1 or grid.is_meta or not grid.is_floating_point():
        shown = tuple(grid.shape) if isinstance(grid, torch.Tensor) else type(grid).__name__
        raise ConfigError(f"{source} returned {shown}; a spacing returns a 1-D floating-point tensor of σ")
    grid = grid.detach().to("cpu", torch.float64)
    if grid.numel() != steps + 1:
        raise ConfigError(f"{source} returned {grid.numel()} values for {steps} steps; it must return steps + 1 (the last 0)")
    if not bool(torch.isfinite(grid).all()) or float(grid[-1]) != 0.0:
        raise ConfigError(f"{source} returned a grid that is not finite or does not end at 0: {grid.tolist()[:8]}")
    if grid.numel() > 2 and not bool((grid[1:-1] < grid[:-2]).all()):
        raise ConfigError(
            f"{steps} {spacing!r} steps between sigma_min={float(grid[-2]):.17g} and "
            f"sigma_max={float(grid[0]):.17g} repeat a σ in float64 (or rise); widen the range or take fewer steps"
        )
    if float(grid[0]) <= 0.0:
        raise ConfigError(f"{source} returned a grid that starts at {float(grid[0])!r}; σ_0 must be positive")
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


# -- user-given σ ---------------------------------------------------------------------------------


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
    if levels[-1] > 0:
        levels.append(0.0)
    if len(levels) < 2:
        raise ConfigError("sigmas must hold at least one positive noise level before the final 0, got [0]")
    return torch.tensor(sigma_levels(levels), dtype=torch.float64)  # the samplers' own check: decreasing
