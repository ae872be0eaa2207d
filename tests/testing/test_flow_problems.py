"""The kit's flow problems are what they claim: a flow-matching model started at t = 1, on the flow grid,
with exact answers checked against the flow ODE written in t (``diffkit_reference.flow``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffkit_reference.flow as ref
from diffkit.schedules import FLOW_SIGMA_MAX
from diffkit.testing import problems
from diffkit.testing.grids import FLOW_SHIFT, flow_sigmas

FLOW = [problems.PROBLEMS["flow_gaussian"], problems.PROBLEMS["flow_mixture"]]


def numpy_velocity(data):
    """v(x_t, t) = (x_t − E[x0 | y])/t at y = x_t/(1 − t), σ = t/(1 − t): written from the reference alone."""

    def velocity(x_t: np.ndarray, t: float) -> np.ndarray:
        sigma = float(ref.sigma_from_t(t)) if t < 1 else FLOW_SIGMA_MAX
        x0 = data.denoise(x_t * (1 + sigma), np.full(len(x_t), sigma))
        return (x_t - x0) / t

    return velocity


@pytest.mark.parametrize("problem", FLOW, ids=lambda p: p.name)
def test_flow_endpoints_are_where_flow_euler_from_t_equals_one_converges(problem):
    """Flow Euler x ← x + (t' − t)·v in t, from x_1 = y/(1 + σ_max) (pure noise) on uniform t: its error
    against the σ-form endpoints falls like 1/N, so those endpoints are the t = 1 flow ODE's."""
    starts, exact = problem.starts(16), problem.endpoints(16)
    velocity = numpy_velocity(problems.data(problem.data_name))
    errors = []
    for steps in (512, 2048):
        ts = np.linspace(1.0, 0.0, steps + 1)
        out = ref.flow_euler_sample(velocity, starts / (1 + problem.sigma_max), ts)
        errors.append(np.median(np.linalg.norm(out - exact, axis=-1)) / problems.scale(problem.data_name))
    assert errors[1] < 2e-3, errors
    assert 3.0 < errors[0] / errors[1] < 5.5, errors  # first order: 4× for 4× the steps


def test_flow_grid_is_shifted_uniform_t_from_one_to_zero():
    for steps in (1, 7, 64):
        grid = flow_sigmas(steps)
        t = ref.shift_time(np.linspace(1.0, 0.0, steps + 1), FLOW_SHIFT)
        assert grid.dtype == torch.float64 and grid.shape == (steps + 1,)
        assert grid[0] == FLOW_SIGMA_MAX and grid[-1] == 0 and bool((grid[1:] < grid[:-1]).all())
        np.testing.assert_allclose(ref.t_from_sigma(grid[1:].numpy()), t[1:], rtol=1e-12, atol=0)


@pytest.mark.parametrize("problem", FLOW, ids=lambda p: p.name)
def test_flow_denoiser_is_a_flow_model_giving_the_exact_posterior_mean(problem):
    """The sampler sees a FlowDenoiser around the exact velocity network: path "flow", and D(y, σ) equal to
    E[x0 | y] to round-off at every σ of the grid, t = 1 included."""
    denoiser = problem.denoiser()
    assert denoiser.path == "flow"
    data = problems.data(problem.data_name)
    rng = np.random.default_rng(3)
    for sigma in flow_sigmas(16)[:-1].tolist():
        y = data.sample(8, rng) + sigma * rng.standard_normal((8, problems.DIM))
        got = denoiser(torch.from_numpy(y).reshape(8, *problems.POINT_SHAPE), torch.full((8,), sigma, dtype=torch.float64))
        want = data.denoise(y, np.full(8, sigma))
        np.testing.assert_allclose(got.reshape(8, -1).numpy(), want, rtol=0, atol=1e-9 * max(1.0, np.abs(want).max()))
    assert not denoiser.problems


def test_sigma_problems_keep_their_start_grid_and_plain_denoiser():
    gaussian = problems.PROBLEMS["gaussian"]
    assert gaussian.sigma_max == 80.0 and gaussian.denoiser().path is None
    assert float(gaussian.convergence_grid(16)[0]) == 80.0 and float(gaussian.convergence_grid(16)[-2]) == pytest.approx(1 / 16)
    assert problems.NAMES == ("gaussian", "mixture", "flow_gaussian", "flow_mixture")
