"""``diffkit.sample``: draw the noise, pick the σ grid, run a sampler, return x0."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from diffkit import registry
from diffkit.errors import ConfigError
from diffkit.samplers.common import Callback, Generator, randn_like
from diffkit.schedules.base import DiscreteSchedule


def sample(
    denoiser: Callable[..., torch.Tensor],
    shape: Sequence[int],
    *,
    schedule: str | DiscreteSchedule,
    sampler: str | Callable[..., torch.Tensor],
    steps: int,
    generator: Generator = None,
    cond: Any = None,
    callback: Callback | None = None,
    spacing: str = "leading",
    steps_offset: int = 0,
    sampler_options: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Sample ``shape`` from ``denoiser`` with ``steps`` steps of ``sampler``.

    Args:
        denoiser: ``D(x, sigma[B], cond) -> x0 estimate`` (e.g. a :class:`~diffkit.denoisers.VPDenoiser`).
        shape: the output shape ``[B, ...]``.
        schedule: a registered schedule name (default config) or a schedule object.
        sampler: a registered sampler name or a function with the sampler contract.
        steps: number of sampler steps, 1..T.
        generator: one ``torch.Generator``, or a list with one per sample so that each
            sample is independent of the batch size.
        spacing: timestep spacing (``"leading"``, ``"trailing"``, ``"linspace"``).
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
    sigmas = schedule.sigmas_for(steps, spacing, steps_offset=steps_offset)
    template = torch.empty(shape, dtype=dtype, device=device)
    x = randn_like(template, generator) * float(sigmas[0])
    return sampler_fn(denoiser, x, sigmas, cond=cond, generator=generator, callback=callback)


def _bind(fn: Callable[..., Any], options: dict[str, Any]) -> Callable[..., Any]:
    def bound(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs, **options)

    return bound
