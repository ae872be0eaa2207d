"""``check_sampler``, ``check_schedule`` and ``check_spacing``: run every check and gather a :class:`Report`.

Checks come in named groups (one pytest method each in :mod:`diffkit.testing.contract`);
a group returns one or more results, and a group that raises becomes one failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from diffkit import registry
from diffkit.testing import accuracy, parity, problems, sampler_checks, schedule_checks, spacing_checks
from diffkit.testing.budget import FULL, QUICK, Budget
from diffkit.testing.report import CheckResult, Report, crashed
from diffkit.testing.spacing_checks import SpacingSubject, resolve_spacing
from diffkit.testing.subject import SamplerFn, SamplerSubject, resolve_sampler

SamplerGroup = Callable[[SamplerSubject, Budget], list[CheckResult]]
ScheduleGroup = Callable[[Any], list[CheckResult]]
SpacingGroup = Callable[[SpacingSubject], list[CheckResult]]


def _accuracy(data_name: str) -> SamplerGroup:
    """Convergence to the exact ODE endpoint (deterministic) or matching moments (stochastic)."""

    def run(subject: SamplerSubject, budget: Budget) -> list[CheckResult]:
        if subject.stochastic:
            return [accuracy.check_moments(subject, data_name, budget)]
        return [accuracy.check_convergence(subject, data_name, budget)]

    return run


def _ignore_budget(check: Callable[[SamplerSubject], list[CheckResult]]) -> SamplerGroup:
    return lambda subject, budget: check(subject)


SAMPLER_GROUPS: dict[str, SamplerGroup] = {
    "shape_dtype_device": _ignore_budget(sampler_checks.check_shape_dtype_device),
    "reproducible": _ignore_budget(sampler_checks.check_reproducible),
    "batch_invariant": _ignore_budget(sampler_checks.check_batch_invariant),
    "callback": _ignore_budget(sampler_checks.check_callback),
    "finite_extremes": _ignore_budget(sampler_checks.check_finite_extremes),
    "noise_sampler": _ignore_budget(sampler_checks.check_noise_sampler),
    **{f"accuracy[{name}]": _accuracy(name) for name in problems.NAMES},
    "reference_parity": _ignore_budget(parity.check_reference_parity),
}

SCHEDULE_GROUPS: dict[str, ScheduleGroup] = {
    "alphas_cumprod": schedule_checks.check_alphas_cumprod,
    "sigma_table": schedule_checks.check_sigma_table,
    "sigmas_for": schedule_checks.check_sigmas_for,
    "bad_steps": schedule_checks.check_bad_steps,
}

SPACING_GROUPS: dict[str, SpacingGroup] = {
    "grids": spacing_checks.check_grids,
    "hits_sigma_max": spacing_checks.check_hits_sigma_max,
    "timesteps": spacing_checks.check_timesteps,
    "bad_steps": spacing_checks.check_bad_steps,
}


def _timed(group: str, run: Callable[[], list[CheckResult]]) -> list[CheckResult]:
    """Run one group; a raise becomes a failure named after the group; time is shared among its results."""
    start = time.perf_counter()
    try:
        results = run()
    except Exception as exc:  # noqa: BLE001 - any raise is the subject's failure
        results = [crashed(group, exc)]
    share = (time.perf_counter() - start) / max(len(results), 1)
    return [attrs.evolve(r, seconds=share) for r in results]


def run_sampler_group(group: str, subject: SamplerSubject, *, quick: bool = False) -> list[CheckResult]:
    """The results of one sampler check group (a key of :data:`SAMPLER_GROUPS`)."""
    budget = QUICK if quick else FULL
    return _timed(group, lambda: SAMPLER_GROUPS[group](subject, budget))


def check_sampler(
    sampler: str | SamplerFn,
    *,
    options: Mapping[str, Any] | None = None,
    quick: bool = False,
    order: float | None = None,
) -> Report:
    """Run the sampler conformance checks.

    Args:
        sampler: a registered sampler name, or a bare function with the sampler contract
            (no metadata needed: deterministic vs stochastic is found by running it twice
            with different generators).
        options: keyword options passed to every call (e.g. ``{"eta": 1.0}``).
        quick: fewer steps and samples (about half the time; bounds adjust accordingly).
        order: the convergence order to require (default: the registry entry's ``order=``
            metadata; without either, first-order consistency).

    Returns:
        A :class:`Report`; ``report.ok`` is False when any check failed and
        ``print(report.format())`` shows each check with its measurement and bound.

    Raises:
        UnknownNameError: for an unknown sampler name or option name.
    """
    subject = resolve_sampler(sampler, options, order)
    notes = [f"options {subject.options}"] if subject.options else []
    try:
        notes.append(subject.kind)
    except Exception as exc:  # noqa: BLE001 - reported by every check that needs the kind
        notes.append(f"kind unknown: {type(exc).__name__}")
    results = [r for group in SAMPLER_GROUPS for r in run_sampler_group(group, subject, quick=quick)]
    return Report(subject=subject.label, results=results, notes=notes)


def resolve_schedule(schedule: Any, config: Mapping[str, Any] | None = None) -> tuple[Any, str]:
    """(schedule object, label) from a registered name (built with ``config``) or an object."""
    if isinstance(schedule, str):
        entry = registry.get_entry("schedule", schedule)
        built = registry.build("schedule", schedule, **dict(config or {}))
        suffix = f" {dict(config)}" if config else ""
        return built, f"schedule {schedule}{suffix} [{entry.origin.describe()}]"
    if config:
        raise TypeError("config applies only to a registered schedule name")
    return schedule, f"schedule {type(schedule).__name__}"


def run_schedule_group(group: str, schedule: Any) -> list[CheckResult]:
    """The results of one schedule check group (a key of :data:`SCHEDULE_GROUPS`)."""
    return _timed(group, lambda: SCHEDULE_GROUPS[group](schedule))


def check_schedule(schedule: Any, *, config: Mapping[str, Any] | None = None) -> Report:
    """Run the schedule conformance checks.

    Args:
        schedule: a registered schedule name or a schedule object (``num_train_timesteps``,
            ``alphas_cumprod``, ``sigmas``, ``sigmas_for``).
        config: keyword configuration when ``schedule`` is a name
            (e.g. ``{"rescale_zero_terminal_snr": True}``).

    Returns:
        A :class:`Report` with ``.ok``, ``.results`` and ``.format()``.
    """
    built, label = resolve_schedule(schedule, config)
    results = [r for group in SCHEDULE_GROUPS for r in run_schedule_group(group, built)]
    return Report(subject=label, results=results)




def run_spacing_group(group: str, subject: SpacingSubject) -> list[CheckResult]:
    """The results of one spacing check group (a key of :data:`SPACING_GROUPS`)."""
    return _timed(group, lambda: SPACING_GROUPS[group](subject))


def check_spacing(
    spacing: str | Callable[..., Any],
    *,
    options: Mapping[str, Any] | None = None,
    timesteps: Callable[..., Any] | None = None,
) -> Report:
    """Run the spacing conformance checks.

    Args:
        spacing: a registered spacing name, or a bare grid function
            ``fn(schedule, steps, **options) -> σ [steps + 1]``.
        options: the spacing's options for every call (e.g. ``{"rho": 5.0}``).
        timesteps: for a bare function placed at training timesteps, its
            ``fn(T, steps, **options) -> int64 [steps]`` (a registered name brings its own).

    Returns:
        A :class:`Report`: the grids on three schedules and five step counts (float64, strictly
        decreasing, ending at 0, inside the σ table), σ_0 = σ_max at steps = T, the timesteps
        (for timestep spacings) and the refusal of bad step counts.
    """
    subject = resolve_spacing(spacing, options, timesteps)
    results = [r for group in SPACING_GROUPS for r in run_spacing_group(group, subject)]
    return Report(subject=subject.label, results=results)
