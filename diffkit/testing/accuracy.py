"""Accuracy on analytic data: convergence order for deterministic samplers, moments for stochastic ones.

Deterministic samplers integrate the probability-flow ODE dy/dσ = (y − D(y, σ))/σ, so as the
number of steps N grows their output must approach the ODE's exact endpoint (closed form for
a Gaussian, RK4 for a mixture; :mod:`diffkit_reference.analytic`). The error
e(N) = median over 32 start points of ‖x_N − x_exact‖ / √tr Cov[x0] should fall like N^(−p);
we fit p on the finest three N and require p ≥ :func:`required_order` and e(N_max) ≤
:data:`MAX_FINAL_ERROR`. The grid caps the observable order (σ_min = 1/N on the σ path, see
:mod:`diffkit.testing.grids`: at 2; the flow path's uniform-t grid: at 1.5, see
:data:`~diffkit.testing.problems.OBSERVABLE_ORDER`), so a sampler declaring order q must show
min(q, cap) − 0.3; one that declares nothing must show :data:`MIN_ORDER` (consistency). A method
with a systematic bias (e.g. steps 3% too long) has an error floor, so p → 0. The median, not the RMS: a few mixture trajectories start near the
boundary between two modes and, on coarse grids, land in the wrong mode (an O(1) error that
vanishes once N is large enough) — legitimate pre-asymptotic behaviour that would make an
RMS curve jump; the median measures the typical trajectory and is smooth in N.

Stochastic samplers have no pathwise limit; their samples must have the data's mean and
covariance. In whitened coordinates u = L⁻¹(x − μ) (Σ = L Lᵀ) the target is mean 0 and
covariance I, and each entry is compared with a bound  z·SE + slack:
  * SE from sampling: 1/√n for a mean entry, √(Var[u_i u_j]/n) for a covariance entry
    (Var[u_i u_j] estimated once from 2·10⁵ exact draws);
  * z = 4.5: two-sided p ≈ 7e-6 per entry, ≈ 1e-4 over the 14 entries of d = 4 (Bonferroni);
  * slack = C/N with C = 50 for the bias of a weak-first-order sampler after N steps:
    ancestral Euler and DDPM measure ≈ 25/N here (0.025 at N = 1000), so C is twice that.
Noise 10% too strong (variance +21%) moves the covariance by ≈ 0.2, above the ≈ 0.15 bound.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from diffkit.testing import problems
from diffkit.testing.budget import Budget
from diffkit.testing.problems import OBSERVABLE_ORDER, Problem
from diffkit.testing.report import CheckResult, failed, verdict
from diffkit.testing.subject import SamplerSubject

MIN_ORDER = 0.7
ORDER_SLACK = 0.3


def required_order(declared: float | None, observable: float = OBSERVABLE_ORDER["sigma"]) -> float:
    """The least observed order that passes, given the order a sampler declares (if any) and the
    most its problem's grids can show (:data:`~diffkit.testing.problems.OBSERVABLE_ORDER`)."""
    if declared is None:
        return MIN_ORDER
    return max(MIN_ORDER, min(float(declared), observable) - ORDER_SLACK)


MAX_FINAL_ERROR = 0.05  # relative median error at the finest grid (Euler at N = 256: ≈ 0.007)
EXACT = 1e-7  # an error this small everywhere means "exact"; no order can be measured
Z_SCORE = 4.5
SLACK_PER_STEP = 50.0  # slack = SLACK_PER_STEP / N


def _run(subject: SamplerSubject, problem: Problem, y0: np.ndarray, sigmas: torch.Tensor) -> np.ndarray:
    """Run the sampler from y0 [n, d] (float64, shown as [n, 1, 2, 2]) on the problem's denoiser; return x0 [n, d]."""
    denoiser = problem.denoiser()
    x = torch.from_numpy(y0.copy()).reshape(len(y0), *problems.POINT_SHAPE)
    out = subject(denoiser, x, sigmas, generator=torch.Generator().manual_seed(1234))
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        raise ValueError(f"sampler returned {getattr(out, 'shape', type(out))} for input {list(x.shape)}")
    return out.detach().to("cpu", torch.float64).reshape(len(y0), -1).numpy()


def observed_order(steps: list[int], errors: list[float]) -> float:
    """p in e ≈ C·N^(−p): minus the least-squares slope of log e against log N."""
    slope = np.polyfit(np.log(steps), np.log(np.maximum(errors, 1e-300)), 1)[0]  # an exact 0 stays finite
    return float(-slope)


def check_convergence(subject: SamplerSubject, name: str, budget: Budget) -> CheckResult:
    """Observed order and final error against the exact ODE endpoint on problem ``name`` (:data:`problems.NAMES`)."""
    check = f"convergence[{name}]"
    problem = problems.PROBLEMS[name]
    n = budget.convergence_points
    y0, exact = problem.starts(n), problem.endpoints(n)
    steps = list(budget.steps_for(problem.path))
    errors = []
    for count in steps:
        out = _run(subject, problem, y0, problem.convergence_grid(count))
        errors.append(float(np.median(np.linalg.norm(out - exact, axis=-1))) / problems.scale(problem.data_name))
    curve = ", ".join(f"{s}: {e:.2e}" for s, e in zip(steps, errors))
    if not all(math.isfinite(e) for e in errors):
        return failed(check, f"non-finite error (errors by steps {curve})")
    if max(errors) <= EXACT:
        return verdict(check, True, f"exact to {max(errors):.1e} at every step count", 0.0)
    order = observed_order(steps[-3:], errors[-3:])
    need = required_order(subject.order, problem.observable_order)
    claim = f", declared order {subject.order:g}" if subject.order is not None else ""
    ok = order >= need and errors[-1] <= MAX_FINAL_ERROR
    detail = (f"observed order {order:.2f} (need ≥ {need:.2f}{claim}); error at {steps[-1]} steps "
              f"{errors[-1]:.2e} (need ≤ {MAX_FINAL_ERROR}); errors by steps {curve}")
    return verdict(check, ok, detail, order)


def check_moments(subject: SamplerSubject, name: str, budget: Budget) -> CheckResult:
    """Whitened mean and covariance of the sampler's output against the data's, within z·SE + slack."""
    check = f"moments[{name}]"
    problem = problems.PROBLEMS[name]
    n, steps = budget.moment_samples, budget.moment_steps
    out = _run(subject, problem, problem.starts(n, seed=7), problem.moment_grid(steps))
    if not np.isfinite(out).all():
        return failed(check, "non-finite samples")
    u = problems.whiten(problem.data_name, out)  # [n, d], ideally mean 0 and covariance I
    mean_err = np.abs(u.mean(axis=0))  # [d]
    cov_err = np.abs(np.cov(u, rowvar=False) - np.eye(u.shape[1]))  # [d, d]
    slack = SLACK_PER_STEP / steps
    mean_bound = Z_SCORE / math.sqrt(n) + slack
    cov_bound = Z_SCORE * np.sqrt(problems.whitened_fourth_moments(problem.data_name) / n) + slack  # [d, d]
    worst_mean = float(np.max(mean_err / mean_bound))
    worst_cov_at = np.unravel_index(np.argmax(cov_err / cov_bound), cov_err.shape)
    worst_cov = float(cov_err[worst_cov_at] / cov_bound[worst_cov_at])
    i, j = (int(k) for k in worst_cov_at)
    detail = (f"{n} samples, {steps} steps, whitened: max |mean| {mean_err.max():.3f} (need ≤ {mean_bound:.3f}); "
              f"worst covariance entry [{i},{j}] off by {cov_err[i, j]:.3f} (need ≤ {cov_bound[i, j]:.3f})")
    return verdict(check, worst_mean <= 1 and worst_cov <= 1, detail, max(worst_mean, worst_cov))
