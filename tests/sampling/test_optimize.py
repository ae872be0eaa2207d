"""optimize_sigmas: σ grids fitted to one sampler on analytic data, checked on held-out noises.

Data: the conformance kit's Gaussian mixture (d = 4, exact denoiser) and its Gaussian (closed-form
ODE map); linear β schedule, T = 1000, runs from σ_max = σ_{T−1} with y = z·√(1 + σ_max²), scored
like bench/sampler_accuracy.py: RMS distance to the exact ODE endpoint over √tr Cov[x0].
Calibration noises use seed 1; the held-out batch is the benchmark's own (seed 0, 512 points).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

import diffkit
from diffkit.errors import ConfigError, UnknownNameError
from diffkit.sampling.optimize import (
    DEFAULT_STARTS,
    GOLDEN_EVALUATIONS,
    MIN_GAP_FRACTION,
    ReferenceWarning,
    optimize_sigmas,
    optimize_sigmas_report,
    reference_endpoint,
)
from diffkit.testing import problems
from diffkit.testing.denoisers import RecordingDenoiser, torch_from_numpy

STEPS = 10
BUILTIN = ("trailing", "exponential", "karras")  # the spacings to beat, with their defaults


def noises(seed: int, n: int) -> torch.Tensor:
    """Standard normal z [n, 4], float64."""
    return torch.randn(n, problems.DIM, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def exact_denoiser(name: str) -> RecordingDenoiser:
    """The data set's exact D(x, σ[B]) as the kit's accuracy checks drive samplers with it."""
    return RecordingDenoiser(torch_from_numpy(problems.data(name)))


class HeldOut:
    """Held-out starts y = z·√(1 + σ_max²) and their exact endpoints; ``error(sampler, sigmas)``."""

    def __init__(self, name: str, sigma_max: float, seed: int = 0, n: int = 512) -> None:
        self.name, self.data = name, problems.data(name)
        self.start = noises(seed, n) * math.sqrt(1 + sigma_max**2)
        self.exact = self.data.ode_solution(self.start.numpy(), sigma_max, 0.0)  # float64 [n, 4]
        self.scale = problems.scale(name)

    def error(self, sampler, sigmas: torch.Tensor) -> float:
        out = sampler(exact_denoiser(self.name), self.start.clone(), sigmas)
        return float(np.sqrt(np.mean(np.sum((out.numpy() - self.exact) ** 2, axis=-1)))) / self.scale


@pytest.fixture(scope="module")
def schedule():
    return diffkit.build("schedule", "linear")


@pytest.fixture(scope="module")
def mixture_held_out(schedule) -> HeldOut:
    return HeldOut("mixture", schedule.sigma_max)


@pytest.fixture(scope="module")
def fitted(schedule) -> dict:
    """Optimised 10-step grids for UniPC(order=3) and DPM-Solver++(2M), calibration seed 1, B = 256."""
    results = {}
    for label, name, options in (("unipc3", "unipc", {"order": 3}), ("dpmpp_2m", "dpmpp_2m", {})):
        sampler = diffkit.build("sampler", name, **options)
        denoiser = exact_denoiser("mixture")
        events = []
        tic = time.perf_counter()
        report = optimize_sigmas_report(
            denoiser, sampler=sampler, steps=STEPS, schedule=schedule, calibration=noises(1, 256),
            callback=events.append,
        )
        results[label] = {
            "sampler": sampler, "report": report, "seconds": time.perf_counter() - tic,
            "events": events, "problems": denoiser.problems,
        }
    return results


@pytest.mark.parametrize("label, bound", [("unipc3", 0.5), ("dpmpp_2m", 0.95)])
def test_optimized_grid_beats_builtin_spacings_on_held_out_noises(fitted, schedule, mixture_held_out, label, bound):
    """The fitted grid's held-out error is below the best built-in spacing's.

    Measured: UniPC-3 0.0132 vs 0.1049 (0.13×), DPM-Solver++(2M) 0.0989 vs 0.1173 (0.84×).
    """
    run = fitted[label]
    sampler, report = run["sampler"], run["report"]
    builtin = {sp: mixture_held_out.error(sampler, schedule.sigmas_for(STEPS, sp)) for sp in BUILTIN}
    best = min(builtin.values())
    ours = mixture_held_out.error(sampler, report.sigmas)
    print(
        f"\n{label}: held-out error {ours:.4f} vs best built-in {best:.4f} ({min(builtin, key=builtin.get)}); "
        f"ratio {ours / best:.3f}; calibration {report.initial_loss / report.scale:.4f} → "
        f"{report.loss / report.scale:.4f}; {report.sampler_runs} sampler runs, "
        f"{report.denoiser_calls} denoiser calls, {run['seconds']:.2f} s"
    )
    assert ours < bound * best
    assert report.loss < report.initial_loss
    assert run["problems"] == []  # every denoiser call kept the contract


def test_report_cost_is_bounded_and_counted(fitted):
    """Runs ≤ starts + (starts + sweeps − 1)·(2N − 3)·GOLDEN_EVALUATIONS; the callback sees every sweep."""
    for run in fitted.values():
        report, events = run["report"], run["events"]
        starts, moves = len(DEFAULT_STARTS), 2 * STEPS - 3
        assert report.sampler_runs <= starts + (starts + 4 - 1) * moves * GOLDEN_EVALUATIONS
        assert report.sweeps == 4 and len(report.start_losses) == starts
        assert [e["sweep"] for e in events] == [0, 0, 1, 2, 3]
        assert events[-1]["loss"] == report.loss and torch.equal(events[-1]["sigmas"], report.sigmas)
        assert [e["sampler_runs"] for e in events] == sorted(e["sampler_runs"] for e in events)
        assert events[-1]["sampler_runs"] == report.sampler_runs
        # the reference: (4·256 + 1) + (4·512 + 1) calls; every sampler run makes one call per step
        assert report.denoiser_calls == 3074 + STEPS * report.sampler_runs
        assert report.reference_error < 1e-5 * report.scale
        assert run["seconds"] < 15


def test_grid_is_valid(fitted, schedule):
    for run in fitted.values():
        sigmas = run["report"].sigmas
        assert sigmas.dtype == torch.float64 and sigmas.device.type == "cpu" and sigmas.shape == (STEPS + 1,)
        assert float(sigmas[0]) == schedule.sigma_max and float(sigmas[-1]) == 0.0
        assert bool((sigmas[1:] < sigmas[:-1]).all())
        assert float(sigmas[-2]) >= schedule.sigma_min
        log_gaps = torch.log(sigmas[:-2] / sigmas[1:-1])
        mean_gap = math.log(schedule.sigma_max / schedule.sigma_min) / STEPS
        assert float(log_gaps.min()) >= MIN_GAP_FRACTION * mean_gap * (1 - 1e-9)
        assert diffkit.schedules.spacings.user_sigmas(sigmas).equal(sigmas)  # what sample(sigmas=) accepts


def small_problem(linear, **overrides) -> dict:
    """A cheap configuration: 5 steps, 64 noises, 2 sweeps, a 64-step reference."""
    args = {
        "sampler": "dpmpp_2m", "steps": 5, "schedule": linear, "calibration": noises(3, 64),
        "reference_steps": 64, "sweeps": 2,
    }
    return {**args, **overrides}


def test_deterministic(schedule):
    first = optimize_sigmas(exact_denoiser("mixture"), **small_problem(schedule))
    second = optimize_sigmas(exact_denoiser("mixture"), **small_problem(schedule))
    assert torch.equal(first, second)


def test_gaussian_data_with_closed_form_endpoint(schedule):
    """Gaussian data: the reference matches the closed-form ODE map, and the fitted grid beats the built-ins."""
    data = problems.data("gaussian")
    high = schedule.sigma_max
    start = noises(5, 32) * math.sqrt(1 + high**2)
    ref = reference_endpoint(exact_denoiser("gaussian"), start, sigma_max=high, sigma_floor=1e-4, steps=256)
    exact = data.ode_solution(start.numpy(), high, 0.0)
    assert np.abs(ref.numpy() - exact).max() < 1e-6

    steps = 6
    sampler = diffkit.build("sampler", "dpmpp_2m")
    report = optimize_sigmas_report(
        exact_denoiser("gaussian"), sampler=sampler, steps=steps, schedule=schedule,
        calibration=noises(1, 128), reference_steps=128,
    )
    held_out = HeldOut("gaussian", high, seed=0, n=512)
    best = min(held_out.error(sampler, schedule.sigmas_for(steps, sp)) for sp in BUILTIN)
    ours = held_out.error(sampler, report.sigmas)
    print(f"\ngaussian, dpmpp_2m, {steps} steps: held-out {ours:.4f} vs best built-in {best:.4f} ({ours / best:.3f}×)")
    assert ours < 0.8 * best


def test_explicit_range_without_schedule_and_single_step():
    kwargs = {
        "sampler": "unipc", "sigma_max": 80.0, "sigma_min": 0.002, "calibration": noises(2, 16), "reference_steps": 128,
    }
    one = optimize_sigmas(exact_denoiser("gaussian"), steps=1, **kwargs)
    assert one.tolist() == [80.0, 0.0]
    grid = optimize_sigmas(exact_denoiser("gaussian"), steps=3, sweeps=1, initial="karras", **kwargs)
    assert grid.shape == (4,) and float(grid[0]) == 80.0 and float(grid[-1]) == 0.0
    assert bool((grid[1:] < grid[:-1]).all()) and float(grid[-2]) >= 0.002


def test_zero_sweeps_returns_the_best_start(schedule):
    report = optimize_sigmas_report(exact_denoiser("mixture"), **small_problem(schedule, sweeps=0))
    assert report.sweeps == 0 and report.loss == min(report.start_losses)
    assert torch.equal(report.sigmas, report.initial_sigmas)
    assert report.sampler_runs == 2  # one run per start (exponential, trailing)


def test_starting_grids(schedule):
    explicit = schedule.sigmas_for(5, "karras", rho=3.0)
    report = optimize_sigmas_report(exact_denoiser("mixture"), **small_problem(schedule, initial=explicit, sweeps=1))
    assert len(report.start_losses) == 1 and torch.equal(report.initial_sigmas, explicit)
    starts = ["karras", explicit.tolist(), "linspace"]
    report = optimize_sigmas_report(exact_denoiser("mixture"), **small_problem(schedule, initial=starts, sweeps=1))
    assert len(report.start_losses) == 3


def test_function_sampler_cond_and_float32(schedule):
    """A plain function (no generator keyword) works; cond reaches the denoiser; float32 noises work."""
    token = object()
    seen = []
    inner = exact_denoiser("mixture")

    def denoiser(x, sigma, cond=None):
        seen.append(cond is token)
        return inner(x, sigma)

    dpmpp_2m = diffkit.get("sampler", "dpmpp_2m")

    def sampler(denoiser, x, sigmas, cond=None):
        return dpmpp_2m(denoiser, x, sigmas, cond=cond)

    grid = optimize_sigmas(
        denoiser, **small_problem(schedule, sampler=sampler, cond=token, calibration=noises(3, 64).float())
    )
    assert all(seen) and grid.dtype == torch.float64 and bool((grid[1:] < grid[:-1]).all())


def test_reference_warning_when_not_converged(schedule):
    with pytest.warns(ReferenceWarning, match="raise reference_steps"):
        optimize_sigmas(exact_denoiser("mixture"), **small_problem(schedule, reference_steps=2, sweeps=0))


def _global_rng_sampler(denoiser, x, sigmas, cond=None):
    return x + torch.randn_like(x) * 0.01


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        ({"steps": 0}, ConfigError, "steps must be an integer ≥ 1"),
        ({"steps": 2.5}, ConfigError, "steps must be an integer"),
        ({"steps": True}, ConfigError, "steps must be an integer"),
        ({"reference_steps": 0}, ConfigError, "reference_steps must be an integer ≥ 1"),
        ({"sweeps": -1}, ConfigError, "sweeps must be an integer ≥ 0"),
        ({"schedule": None}, ConfigError, "pass schedule= or sigma_max= and sigma_min="),
        ({"sigma_min": 200.0}, ConfigError, "must be smaller than sigma_max"),
        ({"sigma_max": -1.0}, ConfigError, "sigma_max must be a positive finite number"),
        ({"sigma_min": float("nan")}, ConfigError, "sigma_min must be a positive finite number"),
        ({"calibration": torch.zeros(0, 4)}, ConfigError, "at least one noise"),
        ({"calibration": torch.zeros(8, 4, dtype=torch.int64)}, ConfigError, "floating"),
        ({"calibration": torch.full((8, 4), float("nan"))}, ConfigError, "finite"),
        ({"calibration": [[0.0] * 4]}, ConfigError, "must be a tensor"),
        ({"sampler": "euler_ancestral"}, ConfigError, "is stochastic"),
        ({"sampler": "ddpm"}, ConfigError, "is stochastic"),
        ({"sampler": _global_rng_sampler}, ConfigError, "is stochastic"),
        ({"sampler": 3}, ConfigError, "registered name or a sampler function"),
        ({"sampler": "no_such_sampler"}, UnknownNameError, "unknown sampler"),
        ({"initial": "no_such_spacing"}, UnknownNameError, "unknown initial spacing"),
        ({"initial": [157.0, 1.0, 0.0]}, ConfigError, "needs 6"),
        ({"initial": [100.0, 50.0, 10.0, 1.0, 0.1, 0.0]}, ConfigError, "not at sigma_max"),
        ({"initial": "leading"}, ConfigError, "not at sigma_max"),
        ({"initial": []}, ConfigError, "non-empty"),
    ],
)
def test_bad_input(schedule, overrides, error, match):
    with pytest.raises(error, match=match):
        optimize_sigmas(exact_denoiser("mixture"), **small_problem(schedule, **overrides))


def test_stochastic_sampler_with_options_rejected_and_deterministic_one_accepted(schedule):
    stochastic = diffkit.build("sampler", "ddim", eta=1.0)
    with pytest.raises(ConfigError, match="is stochastic"):
        optimize_sigmas(exact_denoiser("mixture"), **small_problem(schedule, sampler=stochastic))
    deterministic = diffkit.build("sampler", "ddim", eta=0.0)
    grid = optimize_sigmas(exact_denoiser("mixture"), **small_problem(schedule, sampler=deterministic, sweeps=1))
    assert grid.shape == (6,)


def test_timestep_spacing_start_needs_schedule():
    with pytest.raises(ConfigError, match="needs schedule="):
        optimize_sigmas(
            exact_denoiser("mixture"), sampler="unipc", steps=4, sigma_max=80.0, sigma_min=0.01,
            calibration=noises(1, 8), initial="trailing",
        )


def test_on_a_flow_schedule_it_starts_from_the_flow_grid_and_beats_it():
    """On ``flow`` (shift 3) the default starts are exponential and diffusers' uniform-t grid
    (no VP ``trailing``), every run starts at the t = 1 level, and the fit beats the flow
    schedule's grids on held-out noises. The σ-form data problem is the same as on a VP
    table: only the σ range (up to t = 1) differs."""
    flow = diffkit.build("schedule", "flow", shift=3.0)
    steps = 6
    sampler = diffkit.build("sampler", "dpmpp_2m")
    zero = optimize_sigmas_report(exact_denoiser("mixture"), sampler=sampler, steps=steps, schedule=flow,
                                  calibration=noises(1, 128), sweeps=0)
    assert len(zero.start_losses) == 2
    assert torch.equal(zero.initial_sigmas, flow.sigmas_for(steps)) == (zero.start_losses[1] < zero.start_losses[0])
    report = optimize_sigmas_report(exact_denoiser("mixture"), sampler=sampler, steps=steps, schedule=flow,
                                    calibration=noises(1, 128))
    assert float(report.sigmas[0]) == flow.sigma_max and float(report.sigmas[-1]) == 0.0
    held_out = HeldOut("mixture", flow.sigma_max)
    builtin = {sp: held_out.error(sampler, flow.sigmas_for(steps, sp)) for sp in ("uniform", "exponential", "karras")}
    ours = held_out.error(sampler, report.sigmas)
    print(f"\nflow (shift 3), dpmpp_2m, {steps} steps: held-out {ours:.4f} vs {builtin}")
    assert ours < 0.9 * min(builtin.values())


def test_a_network_with_trainable_weights_builds_no_autograd_graph(schedule):
    """A denoiser module with requires_grad weights (a pipeline's, straight from training) is run
    without autograd: thousands of calls would otherwise keep every activation alive (an OOM on
    a real UNet) and the grid would carry a graph."""
    weight = torch.nn.Parameter(torch.tensor(0.9, dtype=torch.float64))
    seen = []

    def denoiser(y, sigma, cond=None):
        seen.append(torch.is_grad_enabled())
        return weight * exact_denoiser("gaussian")(y, sigma)

    report = optimize_sigmas_report(denoiser, **small_problem(schedule, sweeps=1))
    assert seen and not any(seen) and not report.sigmas.requires_grad
    start = noises(3, 8) * 10.0
    out = reference_endpoint(denoiser, start, sigma_max=10.0, sigma_floor=0.01, steps=4)
    assert not out.requires_grad
