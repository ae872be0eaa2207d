"""Optimized step placement: the N noise levels that make one sampler most accurate.

In the spirit of "Align Your Steps" (Sabour et al. 2024), but simpler and model-agnostic:
the levels are chosen to minimise the sampler's discretisation error directly,

    J(σ_1 … σ_{N−1}) = √( mean_b ‖S(y_b; σ_0 … σ_N) − Φ(y_b)‖² )              (the objective)

where y_b [B, ...] are the calibration starts, S the N-step sampler on the grid
σ_0 = σ_max > σ_1 > … > σ_{N−1} > σ_N = 0, and Φ a fine reference solution of the same
probability-flow ODE dy/dσ = (y − D(y, σ))/σ from σ_max to σ = 0. Only the N − 1 interior
levels move; σ_0 and the final 0 are fixed.

Starts. ``calibration`` holds standard normal noises z; each run starts at y = z·√(1 + σ_max²),
the σ form of the VP prior x_T = z (y = x_T/√ᾱ_T and 1/ᾱ = 1 + σ²), as ``bench/sampler_accuracy.py``
does. (A VE/EDM prior y = σ_max·z differs from it by O(1/σ_max²) relative.)

Reference Φ. Classical RK4 in s = log σ, where the ODE reads dy/ds = y − D(y, e^s): the
right-hand side stays O(|y|) at every scale, so uniform steps in s (an exponential grid in σ)
are accurate from σ_max down to σ_floor = σ_min/100, and a last jump y ← D(y, σ_floor) reaches
σ = 0 with an O(σ_floor²) error. It is a high-order solver independent of the sampler being
tuned, so the tuned grid cannot inherit the sampler's own bias as its target. It is run twice:
with ``reference_steps`` steps, and with twice the steps down to σ_floor/4; the finer run is Φ,
and the two must agree to 1e-3 of the endpoints' spread, else :class:`ReferenceWarning`.

Parametrisation. The free variables are u_i = log σ_i, i = 1 … N − 1, with u_0 = log σ_max
fixed. Every move keeps u_{i−1} − u_i ≥ g (g = :data:`MIN_GAP_FRACTION` × the mean log gap
log(σ_max/σ_min)/N) and u_{N−1} ≥ log σ_min, so every grid tried is strictly decreasing.

Search (derivative-free, deterministic, no scipy): cyclic coordinate descent in two bases at
once. For each i (top-down on even sweeps, bottom-up on odd ones) it minimises J along

    a level move   u_i ← u_i + δ                  (one level; two neighbouring gaps trade length)
    a tail move    u_k ← u_k + δ for all k ≥ i    (one log gap g_i = u_{i−1} − u_i alone changes)

each by a golden-section search (:data:`GOLDEN_EVALUATIONS` sampler runs) for δ in
[−r, r] ∩ the constraints, keeping δ = 0 unless a trial is strictly better, so J never rises.
Level moves alone stall in the narrow valleys where neighbouring levels must move together;
the gap basis moves them together. r starts at one mean log gap and halves after each sweep.
With several starting grids (default: ``exponential`` and ``trailing``, or ``uniform`` on a
flow schedule) each gets one sweep,
and the best continues. Cost: ≤ (2N − 3)·GOLDEN_EVALUATIONS sampler runs per sweep per path,
plus 12·reference_steps + 2 denoiser calls for the reference; :class:`SigmaOptimization`
reports the exact counts.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from diffkit import registry
from diffkit.errors import ConfigError, UnknownNameError
from diffkit.samplers.common import denoise
from diffkit.samplers.contract import Callback, Denoiser, SamplerFn
from diffkit.samplers.probe import accepts_keyword, is_stochastic
from diffkit.schedules.base import DiscreteSchedule
from diffkit.schedules.flow import FLOW_SPACING, FlowSchedule
from diffkit.schedules.spacings import SIGMA_SPACINGS, SPACINGS, check_sigma_range, user_sigmas
from diffkit.validators import is_integer

Start = str | torch.Tensor | Sequence[float]

# The smallest log gap log(σ_i/σ_{i+1}) a move may leave, as a fraction of the mean log gap
# log(σ_max/σ_min)/N: multistep samplers divide by these gaps, and a pair of nearly equal
# levels fitted to a few calibration noises generalises worst.
MIN_GAP_FRACTION = 0.25
# Sampler runs of one golden-section line search (one move, one sweep).
GOLDEN_EVALUATIONS = 6
# The search window's radius is multiplied by this after every sweep.
RADIUS_SHRINK = 0.5
# The starting grids tried when ``initial`` is not given ("trailing" only with a schedule).
DEFAULT_STARTS: tuple[str, ...] = ("exponential", "trailing")
# σ_floor = σ_min · REFERENCE_FLOOR: where the reference ODE solution stops before its last jump.
REFERENCE_FLOOR = 1e-2
# The reference must agree with its 2× check to this fraction of the endpoints' spread.
REFERENCE_TOLERANCE = 1e-3
# 1/φ, the golden-section shrink factor.
_INV_PHI = (math.sqrt(5.0) - 1.0) / 2.0


class ReferenceWarning(UserWarning):
    """The fine reference solution did not pass its convergence check."""


@dataclass(frozen=True)
class SigmaOptimization:
    """What :func:`optimize_sigmas_report` found, and what it cost.

    Attributes:
        sigmas: the optimised grid, float64 CPU [steps + 1], strictly decreasing, σ_0 = σ_max, last 0.
        initial_sigmas: the starting grid the optimised one descends from, same form.
        loss: J on the calibration batch for ``sigmas`` (RMS distance to the reference, absolute).
        initial_loss: J for ``initial_sigmas``.
        start_losses: J of every starting grid tried, in the order given.
        scale: RMS distance of the reference endpoints from their mean; loss/scale is the error
            relative to the data's spread (the benchmark's unit).
        reference_error: RMS difference between the reference and its 2× check (absolute).
        sampler_runs: sampler runs on the calibration batch (one per distinct grid evaluated).
        denoiser_calls: every denoiser call made (batched over the calibration), reference included.
        sweeps: coordinate sweeps done on the returned path.
    """

    sigmas: torch.Tensor
    initial_sigmas: torch.Tensor
    loss: float
    initial_loss: float
    start_losses: tuple[float, ...]
    scale: float
    reference_error: float
    sampler_runs: int
    denoiser_calls: int
    sweeps: int


def optimize_sigmas(
    denoiser: Denoiser, *, sampler: str | SamplerFn, steps: int, schedule: str | DiscreteSchedule | None = None,
    sigma_max: float | None = None, sigma_min: float | None = None, calibration: torch.Tensor,
    reference_steps: int = 256, sweeps: int = 4, cond: Any = None, initial: Start | Sequence[Start] | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """The ``steps``-step σ grid that minimises ``sampler``'s error from the ``calibration`` noises.

    The objective, the reference and the search are described in :mod:`diffkit.sampling.optimize`;
    this returns ``optimize_sigmas_report(...).sigmas``, whose report also has the losses and
    the cost. Run it once per (model, sampler, steps) and reuse the grid with ``sigmas=``.

    Args:
        denoiser: ``D(x, sigma[B], cond) -> x0 estimate`` (σ form).
        sampler: a registered sampler name (default options), a sampler function, or a
            ``diffkit.build("sampler", name, **options)`` partial. It must be deterministic.
        steps: N ≥ 1, the number of sampler steps (N + 1 levels including the final 0).
        schedule: a registered schedule name or schedule object; supplies σ_max and σ_min
            (its table's ends) where they are not given, and the timestep spacings' grids.
        sigma_max: σ_0, where every run starts (default: the schedule's largest σ).
        sigma_min: the lowest level the search may place (σ_{N−1} ≥ σ_min) and the end of the
            σ spacings used as starts (default: the schedule's smallest σ).
        calibration: standard normal noises z [B, ...], B ≥ 1 (a few hundred is typical); runs
            start at y = z·√(1 + σ_max²) (VP x_T = z), on z's device and in z's dtype.
        reference_steps: RK4 steps of the reference solution (≥ 1; its check takes twice as many).
        sweeps: coordinate sweeps (≥ 0; 0 returns the best starting grid).
        cond: passed to the denoiser and the sampler unchanged.
        initial: the starting grid, or a list of them (each gets one sweep, the best goes on).
            A grid is a spacing name — ``"exponential"``, ``"karras"``, ``"logsnr_uniform"``
            (between σ_max and σ_min) or ``"trailing"``, ``"linspace"``, ``"leading"`` (the
            schedule's; it must start at σ_max; a flow schedule has ``"uniform"`` instead) — or
            N + 1 explicit levels from σ_max to 0. Default: ``exponential`` and, where it starts
            at σ_max, the schedule's own grid: ``trailing`` on a VP table, ``uniform`` on ``flow``.
        callback: called after every sweep with
            ``{"start", "sweep", "sigmas", "loss", "sampler_runs"}`` (start: index of the path).

    Returns:
        float64 CPU tensor [steps + 1]: strictly decreasing, first σ_max, last 0.

    Raises:
        ConfigError: steps, reference_steps or sweeps not an integer in range; an invalid σ
            range or none given; an empty, non-floating or non-finite calibration batch; a
            stochastic sampler; a starting grid of the wrong length or not starting at σ_max.
        UnknownNameError: an unknown sampler, schedule or spacing name.
    """
    return optimize_sigmas_report(
        denoiser, sampler=sampler, steps=steps, schedule=schedule, sigma_max=sigma_max,
        sigma_min=sigma_min, calibration=calibration, reference_steps=reference_steps,
        sweeps=sweeps, cond=cond, initial=initial, callback=callback,
    ).sigmas


@torch.no_grad()  # thousands of denoiser calls: a network's autograd graph would hold every activation
def optimize_sigmas_report(
    denoiser: Denoiser, *, sampler: str | SamplerFn, steps: int, schedule: str | DiscreteSchedule | None = None,
    sigma_max: float | None = None, sigma_min: float | None = None, calibration: torch.Tensor,
    reference_steps: int = 256, sweeps: int = 4, cond: Any = None, initial: Start | Sequence[Start] | None = None,
    callback: Callback | None = None,
) -> SigmaOptimization:
    """:func:`optimize_sigmas` with its report: the grid, the losses before and after, the cost."""
    steps = _check_count("steps", steps, 1)
    reference_steps = _check_count("reference_steps", reference_steps, 1)
    sweeps = _check_count("sweeps", sweeps, 0)
    if isinstance(schedule, str):
        schedule = registry.build("schedule", schedule)
    high, low = _sigma_range(schedule, sigma_max, sigma_min)
    z = _check_calibration(calibration)
    run_sampler = _deterministic_sampler(sampler)
    starts = _starting_grids(initial, steps, schedule, high, low)

    counter = _CountingDenoiser(denoiser)
    start = z * math.sqrt(1.0 + high * high)  # y = z·√(1 + σ_max²): VP x_T = z in σ form, [B, ...]
    floor = low * REFERENCE_FLOOR
    coarse = reference_endpoint(counter, start, sigma_max=high, sigma_floor=floor, steps=reference_steps, cond=cond)
    target = reference_endpoint(
        counter, start, sigma_max=high, sigma_floor=floor / 4, steps=2 * reference_steps, cond=cond
    )
    scale = _rms(target - target.mean(dim=0, keepdim=True))
    reference_error = _rms(coarse - target)  # ≈ the coarse run's error; the finer one is the target
    if not reference_error <= REFERENCE_TOLERANCE * (scale if scale > 0 else _rms(target)):  # B = 1: no spread
        warnings.warn(
            f"the reference ODE solution has not converged: {reference_steps} and {2 * reference_steps} "
            f"RK4 steps differ by {reference_error:.3g} (RMS), {reference_error / max(scale, 1e-300):.3g} of "
            f"the endpoints' spread (tolerance {REFERENCE_TOLERANCE:g}); raise reference_steps",
            ReferenceWarning,
            stacklevel=2,
        )

    objective = _Objective(run_sampler, counter, start, target, high, cond)
    log_top = math.log(high)
    log_bottom = min([math.log(low)] + [math.log(float(g[-2])) for g in starts if steps > 1])
    gap = MIN_GAP_FRACTION * (log_top - log_bottom) / steps
    radius = (log_top - log_bottom) / steps  # the first window: one mean log gap
    paths = [_Path(objective, g, k, log_top, log_bottom, gap, radius) for k, g in enumerate(starts)]
    start_losses = tuple(p.loss for p in paths)
    for sweep in range(sweeps):
        if steps == 1:  # no interior level to place
            break
        if sweep == 1:  # after one sweep from every start, only the best path goes on (ties: the first)
            paths = [min(paths, key=lambda p: p.loss)]
        for path in paths:
            path.sweep(sweep)
            if callback is not None:
                callback(
                    {"start": path.start_index, "sweep": sweep, "sigmas": path.grid(),
                     "loss": path.loss, "sampler_runs": objective.runs}
                )
    best = min(paths, key=lambda p: p.loss)
    return SigmaOptimization(
        sigmas=best.grid(),
        initial_sigmas=best.initial,
        loss=best.loss,
        initial_loss=best.initial_loss,
        start_losses=start_losses,
        scale=scale,
        reference_error=reference_error,
        sampler_runs=objective.runs,
        denoiser_calls=counter.calls,
        sweeps=best.sweeps,
    )


# -- the search ------------------------------------------------------------------------------


class _Path:
    """One descent from one starting grid: the free levels u [N − 1], J(u) and the window radius.

    Args:
        objective: J.
        initial: the starting grid [N + 1] (σ_0 = σ_max, last 0).
        start_index: its position among the starts (for the callback).
        log_top, log_bottom: log σ_max and the lowest log σ_{N−1} allowed.
        gap: the smallest log gap a move may leave.
        radius: the first sweep's window radius in log σ.
    """

    def __init__(
        self, objective: _Objective, initial: torch.Tensor, start_index: int,
        log_top: float, log_bottom: float, gap: float, radius: float,
    ) -> None:
        self.objective, self.initial, self.start_index = objective, initial, start_index
        self.log_top, self.log_bottom, self.gap, self.radius = log_top, log_bottom, gap, radius
        self.levels = initial[1:-1].tolist()  # σ_i, i = 1 … N − 1 (unmoved levels stay bit-exact)
        self.u = [math.log(v) for v in self.levels]  # u_i = log σ_i
        self.loss = self.initial_loss = objective(self.levels)
        self.sweeps = 0

    def grid(self) -> torch.Tensor:
        return _grid(self.objective.high, self.levels)

    def sweep(self, index: int) -> None:
        """One cyclic sweep: a level move and a tail move per level, then the window halves."""
        n = len(self.u)
        # Gauss–Seidel order alternates (top-down, then bottom-up) so no level is always last
        for i in range(n) if index % 2 == 0 else range(n - 1, -1, -1):
            self._block_move(i, i + 1)  # level move: u_i alone
            if i + 1 < n:
                self._block_move(i, n)  # tail move: u_i … u_{N−1} together (the gap g_i alone)
        self.radius *= RADIUS_SHRINK
        self.sweeps += 1

    def _block_move(self, first: int, stop: int) -> None:
        """Minimise J(u + δ·1_{first ≤ k < stop}) over δ by golden-section search; keep δ = 0 unless better.

        δ is limited to [−r, r] and by the constraints at the block's ends: the gap above
        u_first and the gap below u_{stop−1} (or log σ_min for the last level) stay ≥ g. The
        interval is widened to contain δ = 0, so a starting grid whose gaps are already below g
        can only move apart.
        """
        u, n = self.u, len(self.u)
        upper = (u[first - 1] if first > 0 else self.log_top) - self.gap - u[first]
        lower = (u[stop] + self.gap if stop < n else self.log_bottom) - u[stop - 1]
        a, b = max(min(lower, 0.0), -self.radius), min(max(upper, 0.0), self.radius)
        if not b > a:
            return

        def moved(delta: float) -> list[float]:  # the levels σ_k after the move
            return [math.exp(v + delta) if first <= k < stop else s for k, (v, s) in enumerate(zip(u, self.levels))]

        delta, loss = _golden_section(lambda d: self.objective(moved(d)), a, b)
        if loss < self.loss:
            self.levels, self.loss = moved(delta), loss
            self.u = [math.log(v) for v in self.levels]


def _golden_section(f: Callable[[float], float], a: float, b: float) -> tuple[float, float]:
    """(x, f(x)) for the best of GOLDEN_EVALUATIONS golden-section points in (a, b).

    The points c < d divide [a, b] in the golden ratio; each round drops the end beyond the
    worse of the two and places one new point, so the bracket shrinks by 1/φ per evaluation.
    """
    c, d = b - _INV_PHI * (b - a), a + _INV_PHI * (b - a)
    fc, fd = f(c), f(d)
    best = (c, fc) if fc <= fd else (d, fd)
    for _ in range(GOLDEN_EVALUATIONS - 2):
        if fc <= fd:  # the minimum is in [a, d]
            b, d, fd = d, c, fc
            c = b - _INV_PHI * (b - a)
            fc = f(c)
            new = (c, fc)
        else:  # the minimum is in [c, b]
            a, c, fc = c, d, fd
            d = a + _INV_PHI * (b - a)
            fd = f(d)
            new = (d, fd)
        if new[1] < best[1]:
            best = new
    return best


class _Objective:
    """J(σ_1 … σ_{N−1}): RMS distance of the sampler's output on [σ_max, σ_1, …, σ_{N−1}, 0] to the target.

    Caches J per grid (a line search may revisit one) and counts the sampler runs.
    """

    def __init__(
        self, run_sampler: SamplerFn, denoiser: Denoiser, start: torch.Tensor, target: torch.Tensor,
        high: float, cond: Any,
    ) -> None:
        self.run_sampler, self.denoiser, self.cond = run_sampler, denoiser, cond
        self.start, self.target, self.high = start, target, high  # y [B, ...], Φ(y) [B, ...], σ_max
        self.runs = 0
        self._cache: dict[tuple[float, ...], float] = {}

    def __call__(self, levels: Sequence[float]) -> float:
        key = tuple(levels)
        if key not in self._cache:
            self.runs += 1
            out = self.run_sampler(self.denoiser, self.start.clone(), _grid(self.high, levels), cond=self.cond)
            loss = _rms(out - self.target)
            self._cache[key] = loss if math.isfinite(loss) else math.inf  # a NaN never wins
        return self._cache[key]


def _grid(high: float, levels: Sequence[float]) -> torch.Tensor:
    """[σ_max, σ_1, …, σ_{N−1}, 0] as float64 CPU [N + 1]."""
    return torch.tensor([high, *levels, 0.0], dtype=torch.float64)


def _rms(diff: torch.Tensor) -> float:
    """√(mean_b ‖diff_b‖²) over the batch dimension of diff [B, ...], in float64."""
    return float(diff.detach().to(torch.float64).reshape(diff.shape[0], -1).pow(2).sum(dim=1).mean().sqrt())


# -- the reference solution --------------------------------------------------------------------


@torch.no_grad()
def reference_endpoint(
    denoiser: Denoiser, y: torch.Tensor, *, sigma_max: float, sigma_floor: float, steps: int, cond: Any = None
) -> torch.Tensor:
    """Where the probability-flow ODE takes y [B, ...] from σ_max to σ = 0: x0 [B, ...].

    Classical RK4 in s = log σ on dy/ds = y − D(y, e^s), ``steps`` uniform steps from σ_max
    down to ``sigma_floor`` (4 denoiser calls each, 4·steps + 1 in all), then the jump
    y ← D(y, σ_floor) to σ = 0, whose error is O(σ_floor²/λ) for a data variance λ along a
    direction. The error of the steps is O(h⁴), h = log(σ_max/σ_floor)/steps.
    """
    steps = _check_count("steps", steps, 1)
    if not (0 < sigma_floor < sigma_max < math.inf):
        raise ConfigError(
            f"need 0 < sigma_floor < sigma_max < ∞, got sigma_floor={sigma_floor}, sigma_max={sigma_max}"
        )

    def velocity(point: torch.Tensor, s: float) -> torch.Tensor:  # dy/ds = y − D(y, σ = e^s)
        return point - denoise(denoiser, point, math.exp(s), cond)

    top, bottom = math.log(sigma_max), math.log(sigma_floor)
    for k in range(steps):
        s, s_next = top + (bottom - top) * k / steps, top + (bottom - top) * (k + 1) / steps
        h = s_next - s
        k1 = velocity(y, s)
        k2 = velocity(y + 0.5 * h * k1, s + 0.5 * h)
        k3 = velocity(y + 0.5 * h * k2, s + 0.5 * h)
        k4 = velocity(y + h * k3, s_next)
        y = y + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
    return denoise(denoiser, y, sigma_floor, cond)


class _CountingDenoiser:
    """Passes calls through to the user's denoiser, counting them."""

    def __init__(self, denoiser: Denoiser) -> None:
        self.denoiser, self.calls = denoiser, 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        self.calls += 1
        return self.denoiser(x, sigma, cond)


# -- argument checks ---------------------------------------------------------------------------


def _check_count(name: str, value: Any, minimum: int) -> int:
    if not is_integer(value) or value < minimum:
        raise ConfigError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def _sigma_range(schedule: DiscreteSchedule | None, sigma_max: Any, sigma_min: Any) -> tuple[float, float]:
    """(σ_max, σ_min): the given values, else the schedule's table ends; positive, finite, ordered."""
    if schedule is not None and not hasattr(schedule, "sigmas"):
        raise ConfigError(f"schedule must be a registered name or a schedule object, got {type(schedule).__name__}")
    missing = [n for n, v in (("sigma_max", sigma_max), ("sigma_min", sigma_min)) if v is None]
    if missing and schedule is None:
        raise ConfigError(f"pass schedule= or {' and '.join(n + '=' for n in missing)}: the σ range is unknown")
    high = float(schedule.sigmas[-1]) if sigma_max is None else sigma_max
    low = float(schedule.sigmas[0]) if sigma_min is None else sigma_min
    low, high = check_sigma_range(low, high)
    return high, low


def _check_calibration(calibration: Any) -> torch.Tensor:
    if not isinstance(calibration, torch.Tensor):
        raise ConfigError(f"calibration must be a tensor of noises z [B, ...], got {type(calibration).__name__}")
    if calibration.ndim < 1 or calibration.shape[0] == 0 or calibration.numel() == 0:
        raise ConfigError(
            f"calibration must hold at least one noise z [B ≥ 1, ...], got shape {tuple(calibration.shape)}"
        )
    if not calibration.is_floating_point():
        raise ConfigError(f"calibration must be a floating tensor, got {calibration.dtype}")
    if not bool(torch.isfinite(calibration).all()):
        raise ConfigError("calibration must be finite (standard normal noises)")
    return calibration


def _deterministic_sampler(sampler: Any) -> SamplerFn:
    """The sampler function (a name is built with default options); a stochastic one is an error.

    Stochastic means: two runs with generators seeded differently disagree (the conformance
    kit's test, :func:`diffkit.samplers.probe.is_stochastic`).
    """
    if isinstance(sampler, str):
        fn = registry.build("sampler", sampler)
        label = sampler
    elif callable(sampler):
        fn = sampler
        label = getattr(getattr(sampler, "func", sampler), "__name__", repr(sampler))
    else:
        raise ConfigError(f"sampler must be a registered name or a sampler function, got {type(sampler).__name__}")
    probe = fn
    if not accepts_keyword(fn, "generator"):  # no generator: only the global RNG could make it random

        def probe(
            denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, generator: Any = None, **kw: Any
        ) -> torch.Tensor:
            return fn(denoiser, x, sigmas, **kw)

    if is_stochastic(probe):
        raise ConfigError(
            f"sampler {label} is stochastic (two runs with different generators differ); optimize_sigmas "
            "fits a deterministic sampler to the probability-flow ODE: use a deterministic one, e.g. "
            "'unipc', 'dpmpp_2m', or eta=0 where the sampler has it"
        )

    def run(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, cond: Any = None) -> torch.Tensor:
        return fn(denoiser, x, sigmas) if cond is None else fn(denoiser, x, sigmas, cond=cond)

    return run


def _starting_grids(
    initial: Any, steps: int, schedule: DiscreteSchedule | None, high: float, low: float
) -> list[torch.Tensor]:
    """The starting grids [steps + 1] named by ``initial`` (see :func:`optimize_sigmas`)."""
    if initial is None:
        # the default: exponential, and the schedule's own grid where it starts at σ_max —
        # trailing on a VP table, diffusers' shifted uniform-t grid on a flow schedule
        grids = [_starting_grid("exponential", steps, schedule, high, low)]
        if schedule is not None and steps <= getattr(schedule, "num_train_timesteps", 0):
            own = schedule.sigmas_for(steps, FLOW_SPACING if isinstance(schedule, FlowSchedule) else "trailing")
            if math.isclose(float(own[0]), high, rel_tol=1e-9) and steps > 1:
                grids.append(_starting_grid(own, steps, schedule, high, low))
        return grids
    if isinstance(initial, (str, torch.Tensor)) or _is_levels(initial):
        return [_starting_grid(initial, steps, schedule, high, low)]
    if not isinstance(initial, Sequence) or len(initial) == 0:
        raise ConfigError(
            f"initial must be a spacing name, a grid of levels or a non-empty list of them, got {initial!r}"
        )
    return [_starting_grid(one, steps, schedule, high, low) for one in initial]


def _is_levels(value: Any) -> bool:
    """Whether ``value`` is a non-empty sequence of plain numbers (one explicit grid)."""
    return (
        isinstance(value, Sequence) and len(value) > 0
        and all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in value)
    )


def _starting_grid(
    initial: Any, steps: int, schedule: DiscreteSchedule | None, high: float, low: float
) -> torch.Tensor:
    """One starting grid [steps + 1] from a spacing name or explicit levels; σ_0 = σ_max exactly."""
    if isinstance(initial, str):
        if initial in SIGMA_SPACINGS:
            head = SIGMA_SPACINGS[initial](steps, low, high)  # [N], σ_max … σ_min
            grid = torch.cat([head, head.new_zeros(1)])
        elif initial in SPACINGS or (initial == FLOW_SPACING and isinstance(schedule, FlowSchedule)):
            if schedule is None:
                raise ConfigError(
                    f"initial={initial!r} needs schedule= (only {', '.join(SIGMA_SPACINGS)} place their "
                    "steps from sigma_min and sigma_max alone)"
                )
            grid = schedule.sigmas_for(steps, initial)
        else:
            raise UnknownNameError("initial spacing", initial, SPACINGS)
    else:
        grid = user_sigmas(initial)
    if grid.numel() != steps + 1:
        raise ConfigError(f"a starting grid has {grid.numel()} levels; steps={steps} needs {steps + 1} (ending at 0)")
    if not math.isclose(float(grid[0]), high, rel_tol=1e-9):
        raise ConfigError(
            f"a starting grid begins at σ = {float(grid[0]):.6g}, not at sigma_max = {high:.6g}; "
            "every run starts at σ_max, so the grid must too"
        )
    grid = grid.clone()
    grid[0] = high
    return grid
