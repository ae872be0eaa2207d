"""Checks of a noise schedule: its ᾱ and σ tables and the σ grids of every spacing.

A schedule (see :mod:`diffkit.hookspecs`) has ``num_train_timesteps`` T, float64 tables
``alphas_cumprod`` (ᾱ_t, [T]) and ``sigmas`` (σ_t = √((1 − ᾱ_t)/ᾱ_t), [T]) and
``sigmas_for(steps, spacing, *, steps_offset=0)`` returning a float64 CPU tensor [steps + 1],
strictly decreasing and ending at exactly 0. The spacings checked are the schedule's
``GRID_SPACINGS`` (those placed on its own time axis; the flow schedule's ``uniform`` and the σ
spacings) or, on a VP table, the timestep spacings; a grid of T + 1 steps must be refused by a
timestep spacing, of more than :data:`~diffkit.schedules.spacings.MAX_SIGMA_STEPS` by any.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from diffkit.errors import DiffkitError
from diffkit.schedules.spacings import MAX_SIGMA_STEPS
from diffkit.testing.report import CheckResult, failed, passed, verdict

SPACINGS = ("leading", "trailing", "linspace")
"""The timestep spacings: what a VP table is checked with."""
# ᾱ may be floored before σ is computed (zero-terminal-SNR schedules floor ᾱ at 2⁻²⁴);
# σ is compared with √((1 − ᾱ)/ᾱ) only where ᾱ is above this.
SIGMA_CHECK_FLOOR = 1e-6
SIGMA_RTOL = 1e-9
# a bad step count may raise any of these (TypeError is fair for 2.5)
BAD_STEP_ERRORS = (DiffkitError, ValueError, TypeError)


def _table(schedule: Any, attribute: str) -> torch.Tensor:
    table = getattr(schedule, attribute, None)
    if table is None:
        raise AttributeError(f"the schedule has no {attribute!r} table")
    return torch.as_tensor(table).detach().to("cpu", torch.float64)


def check_alphas_cumprod(schedule: Any) -> list[CheckResult]:
    """ᾱ_t: shape [T], finite, strictly decreasing, in (0, 1] (the last may be 0: zero terminal SNR)."""
    name = "alphas_cumprod"
    abar, steps = _table(schedule, "alphas_cumprod"), int(schedule.num_train_timesteps)
    problems = []
    if tuple(abar.shape) != (steps,):
        return [failed(name, f"shape {list(abar.shape)} (need [{steps}])")]
    if not bool(torch.isfinite(abar).all()):
        problems.append("non-finite entries")
    if float(abar.max()) > 1 or float(abar[:-1].min()) <= 0 or float(abar[-1]) < 0:
        problems.append(f"values outside (0, 1]: min {float(abar.min()):.3g}, max {float(abar.max()):.6g}")
    rises = int((abar[1:] >= abar[:-1]).sum())
    if rises:
        problems.append(f"{rises} non-decreasing steps (ᾱ must fall strictly with t)")
    if problems:
        return [failed(name, "; ".join(problems))]
    return [passed(name, f"T = {steps}, ᾱ from {float(abar[0]):.6g} down to {float(abar[-1]):.3g}", float(abar[-1]))]


def check_sigma_table(schedule: Any) -> list[CheckResult]:
    """σ_t: shape [T], finite, positive, increasing, equal to √((1 − ᾱ_t)/ᾱ_t) where ᾱ_t is not floored."""
    name = "sigma_table"
    sigma, abar = _table(schedule, "sigmas"), _table(schedule, "alphas_cumprod")
    steps = int(schedule.num_train_timesteps)
    if tuple(sigma.shape) != (steps,):
        return [failed(name, f"shape {list(sigma.shape)} (need [{steps}])")]
    if not bool(torch.isfinite(sigma).all()) or float(sigma.min()) <= 0:
        return [failed(name, f"σ must be finite and > 0; min {float(sigma.min()):.3g}, max {float(sigma.max()):.3g}")]
    if not bool((sigma[1:] > sigma[:-1]).all()):
        return [failed(name, "σ_t must increase strictly with t")]
    kept = abar > SIGMA_CHECK_FLOOR
    expected = ((1 - abar[kept]) / abar[kept]).sqrt()
    gap = float(((sigma[kept] - expected).abs() / expected).max())
    detail = (f"σ from {float(sigma[0]):.4g} to {float(sigma[-1]):.4g}; max relative gap to "
              f"√((1−ᾱ)/ᾱ) {gap:.1e} (need ≤ {SIGMA_RTOL:g})")
    return [verdict(name, gap <= SIGMA_RTOL, detail, gap)]


def grid_problems(sigmas: Any, steps: int, table: torch.Tensor) -> list[str]:
    if not isinstance(sigmas, torch.Tensor):
        return [f"returned {type(sigmas).__name__}, not a tensor"]
    problems = []
    if sigmas.dtype != torch.float64 or sigmas.device.type != "cpu":
        problems.append(f"{sigmas.dtype} on {sigmas.device} (need float64 on the CPU)")
    if tuple(sigmas.shape) != (steps + 1,):
        return problems + [f"shape {list(sigmas.shape)} (need [{steps + 1}])"]
    s = sigmas.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(s).all()):
        problems.append("non-finite σ")
    if float(s[-1]) != 0.0:
        problems.append(f"last σ is {float(s[-1]):.3g} (need exactly 0)")
    if not bool((s[1:] < s[:-1]).all()):
        problems.append("not strictly decreasing")
    head = s[:-1]
    lo, hi = float(table.min()) * (1 - 1e-9), float(table.max()) * (1 + 1e-9)
    if float(head.min()) < lo or float(head.max()) > hi:
        problems.append(f"σ outside the table's range [{lo:.4g}, {hi:.4g}]")
    return problems


def check_sigmas_for(schedule: Any) -> list[CheckResult]:
    """For every spacing and steps in (1, 2, 7, 50, T): a valid decreasing σ grid ending at 0."""
    steps_t = int(schedule.num_train_timesteps)
    table = _table(schedule, "sigmas")
    counts = sorted({1, 2, min(7, steps_t), min(50, steps_t), steps_t})
    return [
        grids_result(f"sigmas_for[{spacing}]", lambda steps: schedule.sigmas_for(steps, spacing), counts, table)
        for spacing in _spacings(schedule)
    ]


def _spacings(schedule: Any) -> tuple[str, ...]:
    return tuple(getattr(schedule, "GRID_SPACINGS", SPACINGS))


def grids_result(name: str, make_grid: Callable[[int], Any], counts: list[int], table: torch.Tensor) -> CheckResult:
    """One result for ``make_grid(steps)`` at every count: each a valid grid (:func:`grid_problems`)."""
    problems = []
    for steps in counts:
        try:
            grid = make_grid(steps)
        except Exception as exc:  # noqa: BLE001 - report which call failed
            problems.append(f"steps={steps}: raised {type(exc).__name__}: {exc}")
            continue
        problems += [f"steps={steps}: {p}" for p in grid_problems(grid, steps, table)]
    if problems:
        return failed(name, "; ".join(problems[:3]))
    return passed(name, f"valid grids for steps {', '.join(map(str, counts))}")


def check_bad_steps(schedule: Any) -> list[CheckResult]:
    """steps = 0, −1, 2.5 and T + 1 must raise (DiffkitError, ValueError or TypeError) for every spacing."""
    name = "bad_steps"
    steps_t = int(schedule.num_train_timesteps)
    spacings = _spacings(schedule)
    silent = [
        f"{spacing}, steps={steps}: {problem}"
        for spacing in spacings
        for steps in (0, -1, 2.5, steps_t + 1 if spacing in SPACINGS else MAX_SIGMA_STEPS + 1)
        if (problem := not_refused(lambda: schedule.sigmas_for(steps, spacing))) is not None
    ]
    if silent:
        return [failed(name, "; ".join(silent[:4]) + " (need a DiffkitError/ValueError)")]
    return [passed(name, f"0, -1, 2.5 and too many steps rejected for {', '.join(spacings)}")]


def not_refused(call: Callable[[], Any]) -> str | None:
    """None when ``call()`` raises one of :data:`BAD_STEP_ERRORS`; else what it did instead."""
    try:
        call()
    except BAD_STEP_ERRORS:
        return None
    except Exception as exc:  # noqa: BLE001 - the wrong kind of error
        return f"raised {type(exc).__name__}"
    return "accepted"
