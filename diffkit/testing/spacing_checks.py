"""Checks of a spacing: the σ grids it places on several schedules, its timesteps, bad step counts.

A spacing (see :mod:`diffkit.hookspecs`) is a grid function ``fn(schedule, steps, **options)``
returning float64 σ [steps + 1] on the CPU, strictly decreasing, ending at exactly 0, inside the
schedule's σ table; at steps = T it must start at the table's σ_max (the finest grid begins at
the noise level the model was trained to start from). A spacing placed at training timesteps
also has ``timesteps(T, steps, **options) -> int64 [steps]``, whose σ must be the grid's.

Every check runs the spacing on three schedules: ``linear``, ``cosine`` and ``scaled_linear``
rescaled to zero terminal SNR (σ_max ≈ 4096, the hardest end).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch

from diffkit import registry
from diffkit.testing.report import CheckResult, failed, passed, skipped
from diffkit.testing.schedule_checks import grids_result, not_refused

CHECK_SCHEDULES: tuple[tuple[str, Mapping[str, Any]], ...] = (
    ("linear", {}),
    ("cosine", {}),
    ("scaled_linear", {"rescale_zero_terminal_snr": True}),
)
SIGMA_MAX_RTOL = 1e-9


@attrs.frozen
class SpacingSubject:
    """What the spacing checks run: the grid function, its options and its timestep formula."""

    label: str
    grid: Callable[..., torch.Tensor]
    options: Mapping[str, Any] = attrs.field(factory=dict)
    timesteps: Callable[..., torch.Tensor] | None = None

    def sigmas(self, schedule: Any, steps: Any) -> Any:
        return self.grid(schedule, steps, **self.options)


def resolve_spacing(
    spacing: str | Callable[..., torch.Tensor],
    options: Mapping[str, Any] | None = None,
    timesteps: Callable[..., torch.Tensor] | None = None,
) -> SpacingSubject:
    """A subject from a registered spacing name (its ``timesteps=`` metadata included) or a bare grid function."""
    options = dict(options or {})
    if isinstance(spacing, str):
        entry = registry.get_entry("spacing", spacing)
        registry.build("spacing", spacing, **options)  # unknown options fail now, with close matches
        suffix = f" {options}" if options else ""
        return SpacingSubject(
            f"spacing {spacing}{suffix} [{entry.origin.describe()}]", entry.obj, options,
            timesteps if timesteps is not None else entry.metadata.get("timesteps"),
        )
    name = getattr(spacing, "__qualname__", type(spacing).__name__)
    return SpacingSubject(f"spacing {name}", spacing, options, timesteps)


def _schedules() -> list[tuple[str, Any]]:
    return [(name, registry.build("schedule", name, **config)) for name, config in CHECK_SCHEDULES]


def _counts(num_train_timesteps: int) -> list[int]:
    return sorted({1, 2, min(7, num_train_timesteps), min(50, num_train_timesteps), num_train_timesteps})


def check_grids(subject: SpacingSubject) -> list[CheckResult]:
    """On each schedule, for steps in (1, 2, 7, 50, T): float64 CPU [steps + 1], decreasing, last 0, inside the table."""
    return [
        grids_result(
            f"grid[{label}]", lambda steps, schedule=schedule: subject.sigmas(schedule, steps),
            _counts(int(schedule.num_train_timesteps)), schedule.sigmas,
        )
        for label, schedule in _schedules()
    ]


def check_hits_sigma_max(subject: SpacingSubject) -> list[CheckResult]:
    """At steps = T the grid starts at the table's σ_max (relative tolerance 1e-9)."""
    name, misses = "hits_sigma_max", []
    if "sigma_max" in subject.options:
        return [skipped(name, "sigma_max is set by the options")]
    for label, schedule in _schedules():
        steps = int(schedule.num_train_timesteps)
        first, top = float(subject.sigmas(schedule, steps)[0]), float(schedule.sigmas[-1])
        if abs(first - top) > SIGMA_MAX_RTOL * top:
            misses.append(f"{label}: σ_0 = {first:.6g} at steps={steps}, table σ_max = {top:.6g}")
    if misses:
        return [failed(name, "; ".join(misses))]
    return [passed(name, f"σ_0 = σ_max on {len(CHECK_SCHEDULES)} schedules at steps = T")]


def check_timesteps(subject: SpacingSubject) -> list[CheckResult]:
    """Timesteps int64 [steps], strictly decreasing, in 0..T−1, and σ at them equal to the grid."""
    name = "timesteps"
    if subject.timesteps is None:
        return [skipped(name, "a σ spacing: it registers no timesteps")]
    problems = []
    for label, schedule in _schedules():
        total = int(schedule.num_train_timesteps)
        for steps in _counts(total):
            t = subject.timesteps(total, steps, **subject.options)
            where = f"{label}, steps={steps}"
            if not isinstance(t, torch.Tensor) or t.dtype != torch.int64 or tuple(t.shape) != (steps,):
                shown = (t.dtype, tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__
                problems.append(f"{where}: {shown} (need int64 [{steps}])")
                continue
            if int(t.min()) < 0 or int(t.max()) > total - 1 or not bool((t[1:] < t[:-1]).all()):
                problems.append(f"{where}: not strictly decreasing inside 0..{total - 1}: {t.tolist()[:6]}")
                continue
            expected = torch.cat([schedule.sigmas[t], schedule.sigmas.new_zeros(1)])
            if not torch.equal(subject.sigmas(schedule, steps), expected):
                problems.append(f"{where}: the grid is not σ at these timesteps")
    if problems:
        return [failed(name, "; ".join(problems[:3]))]
    return [passed(name, "int64, decreasing, inside the table, and the grid's σ")]


def check_bad_steps(subject: SpacingSubject) -> list[CheckResult]:
    """steps = 0, −1, 2.5 and True (and T + 1 for a timestep spacing) raise a DiffkitError/ValueError/TypeError."""
    name = "bad_steps"
    schedule = _schedules()[0][1]
    bad: list[Any] = [0, -1, 2.5, True]
    if subject.timesteps is not None:
        bad.append(int(schedule.num_train_timesteps) + 1)
    accepted = [
        f"steps={steps!r}: {problem}"
        for steps in bad
        if (problem := not_refused(lambda: subject.sigmas(schedule, steps))) is not None
    ]
    if accepted:
        return [failed(name, "; ".join(accepted) + " (need a DiffkitError/ValueError)")]
    return [passed(name, f"{', '.join(map(repr, bad))} rejected")]
