"""``diffkit.sample``: draw the noise, pick the σ grid, run a sampler, return x0."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from diffkit import registry
from diffkit.errors import ConfigError
from diffkit.samplers.common import Callback, Generator, randn_like
from diffkit.schedules.base import DiscreteSchedule
from diffkit.schedules.grids import user_sigmas

# The recommended defaults (docs/benchmarks.md, "Accuracy against NFE"): UniPC is the most
# accurate built-in at 5–50 NFE on the benchmark data, with diffusers' identical solver; the
# `trailing` spacing starts at the table's σ_max (pure noise), which `leading` never does.
DEFAULT_SAMPLER = "unipc"
DEFAULT_SPACING = "trailing"


def sample(
    denoiser: Callable[..., torch.Tensor],
    shape: Sequence[int],
    *,
    sampler: str | Callable[..., torch.Tensor] = DEFAULT_SAMPLER,
    schedule: str | DiscreteSchedule | None = None,
    steps: int | None = None,
    spacing: str | None = None,
    spacing_options: Mapping[str, Any] | None = None,
    steps_offset: int | None = None,
    sigmas: torch.Tensor | Sequence[float] | None = None,
    timesteps: torch.Tensor | Sequence[int] | None = None,
    generator: Generator = None,
    cond: Any = None,
    callback: Callback | None = None,
    sampler_options: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Sample ``shape`` from ``denoiser`` with ``sampler`` on a σ grid.

    The grid comes from exactly one of ``steps`` (with ``spacing``), ``sigmas`` or
    ``timesteps``.

    Args:
        denoiser: ``D(x, sigma[B], cond) -> x0 estimate`` (e.g. a :class:`~diffkit.denoisers.VPDenoiser`).
        shape: the output shape ``[B, ...]``.
        sampler: a registered sampler name or a function with the sampler contract
            (default :data:`DEFAULT_SAMPLER`, ``"unipc"``).
        schedule: a registered schedule name (default config) or a schedule object; needed
            with ``steps`` and ``timesteps``, not with ``sigmas``.
        steps: number of sampler steps: 1..T for timestep spacings, any N ≥ 1 for σ spacings.
        spacing: a name in :data:`diffkit.schedules.SPACINGS` (default ``"trailing"``):
            ``leading``/``trailing``/``linspace`` or ``karras``/``exponential``/``logsnr_uniform``.
        spacing_options: the spacing's options, e.g. ``{"rho": 5.0}`` or
            ``{"sigma_min": 0.03, "sigma_max": 14.6}`` (see ``schedule.sigmas_for``).
        steps_offset: added to ``leading`` timesteps (1 for Stable Diffusion).
        sigmas: the noise levels themselves: finite, strictly decreasing, ≥ 0; a final 0 is
            appended when the last value is positive.
        timesteps: training timesteps (strictly decreasing, in 0..T−1); σ from the schedule's
            table, then 0.
        generator: one ``torch.Generator``, or a list with one per sample so that each
            sample is independent of the batch size.
        sampler_options: keyword options for the sampler (e.g. ``{"eta": 1.0}``).

    Returns:
        The samples, a tensor of ``shape`` in ``dtype`` on ``device``.
    """
    if isinstance(schedule, str):
        schedule = registry.build("schedule", schedule)
    options = dict(sampler_options or {})
    sampler_fn = registry.build("sampler", sampler, **options) if isinstance(sampler, str) else sampler
    if not isinstance(sampler, str) and options:
        sampler_fn = _bind(sampler, options)
    shape = tuple(int(n) for n in shape)
    if not shape or any(n <= 0 for n in shape):
        raise ConfigError(f"shape must be a non-empty sequence of positive sizes, got {shape}")
    grid = sigma_grid(
        schedule, steps=steps, spacing=spacing, spacing_options=spacing_options,
        steps_offset=steps_offset, sigmas=sigmas, timesteps=timesteps,
    )
    template = torch.empty(shape, dtype=dtype, device=device)
    x = randn_like(template, generator) * float(grid[0])
    return sampler_fn(denoiser, x, grid, cond=cond, generator=generator, callback=callback)


def sigma_grid(
    schedule: DiscreteSchedule | None,
    *,
    steps: int | None = None,
    spacing: str | None = None,
    spacing_options: Mapping[str, Any] | None = None,
    steps_offset: int | None = None,
    sigmas: Any = None,
    timesteps: Any = None,
) -> torch.Tensor:
    """The float64 CPU σ grid [N + 1] ``sample`` runs on, from exactly one of steps / sigmas / timesteps."""
    sources = {"steps": steps, "sigmas": sigmas, "timesteps": timesteps}
    given = [name for name, value in sources.items() if value is not None]
    if len(given) != 1:
        got = f"got {' and '.join(given)}" if given else "got none"
        raise ConfigError(f"pass exactly one of steps= (with spacing=), sigmas= or timesteps=; {got}")
    spacing_args = {"spacing": spacing, "spacing_options": spacing_options, "steps_offset": steps_offset}
    stray = [name for name, value in spacing_args.items() if value is not None]
    if given[0] != "steps" and stray:
        raise ConfigError(
            f"{', '.join(stray)} only apply with steps=; {given[0]}= already gives every noise level"
        )
    if given[0] == "sigmas":
        return user_sigmas(sigmas)
    if schedule is None:
        raise ConfigError(f"{given[0]}= needs a schedule (a name such as 'linear' or a schedule object)")
    if given[0] == "timesteps":
        return schedule.sigmas_from_timesteps(timesteps)
    if spacing_options is not None and not isinstance(spacing_options, Mapping):
        raise ConfigError(
            f"spacing_options must be a mapping of option names to values, got {type(spacing_options).__name__}"
        )
    kwargs = dict(spacing_options or {})
    if steps_offset is not None:
        if "steps_offset" in kwargs:
            raise ConfigError("steps_offset is given twice: as steps_offset= and in spacing_options")
        kwargs["steps_offset"] = steps_offset
    return schedule.sigmas_for(steps, spacing if spacing is not None else DEFAULT_SPACING, **kwargs)


def _bind(fn: Callable[..., Any], options: dict[str, Any]) -> Callable[..., Any]:
    def bound(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs, **options)

    return bound
