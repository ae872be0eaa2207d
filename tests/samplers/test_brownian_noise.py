"""BrownianTreeNoiseSampler: one Brownian path per seed, exact increments, strong convergence of SDE solvers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from diffkit.errors import ConfigError
from diffkit.samplers.dpmpp_sde import dpmpp_2m_sde
from diffkit.samplers.noise import BrownianTreeNoiseSampler, brownian_noise_sampler
from diffkit.testing.grids import karras_sigmas
from tests.analytic_models import denoiser_torch

TRANSFORMS = {"sigma": None, "log": math.log}


def _increment(ns: BrownianTreeNoiseSampler, a: float, b: float, transform=None) -> torch.Tensor:
    """W(t_b) − W(t_a), un-normalized: noise·√|t_b − t_a|."""
    f = transform or (lambda s: s)
    return ns(a, b) * math.sqrt(abs(f(b) - f(a)))


@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
def test_increments_over_disjoint_intervals_are_independent_standard_normals(transform):
    n = 20_000  # independent elements: one Brownian path each
    ns = BrownianTreeNoiseSampler(torch.zeros(n, dtype=torch.float64), 0.002, 80.0, seed=123, transform=transform)
    # a Karras grid plus two very short intervals (1e-6 relative) near the ends
    levels = karras_sigmas(12, 0.002, 80.0)[:-1].tolist()
    pairs = list(zip(levels[:-1], levels[1:])) + [(80.0, 80.0 * (1 - 1e-6)), (0.002 * (1 + 1e-6), 0.002)]
    z = torch.stack([ns(a, b) for a, b in pairs]).numpy()  # [intervals, n]
    assert np.abs(z.mean(axis=1)).max() < 5 / math.sqrt(n)
    assert np.abs(z.var(axis=1) - 1).max() < 5 * math.sqrt(2 / n)
    kurtosis = (z**4).mean(axis=1) / z.var(axis=1) ** 2
    assert np.abs(kurtosis - 3).max() < 5 * math.sqrt(24 / n)
    assert np.abs((np.abs(z) > 1.959964).mean(axis=1) - 0.05).max() < 5 * math.sqrt(0.05 * 0.95 / n)
    corr = np.corrcoef(z) - np.eye(len(pairs))
    assert np.abs(corr).max() < 5 / math.sqrt(n)


@pytest.mark.parametrize("transform", TRANSFORMS.values(), ids=TRANSFORMS.keys())
@given(points=st.lists(st.floats(0.01, 50.0), min_size=3, max_size=3, unique=True), seed=st.integers(0, 2**40))
def test_increments_add_up_exactly(transform, points, seed):
    a, b, c = points
    assume(min(abs(a - b), abs(b - c), abs(a - c)) > 1e-6 * max(points))  # distinct Brownian times
    ns = BrownianTreeNoiseSampler(torch.zeros(2, 5, dtype=torch.float64), 0.01, 50.0, seed=seed, transform=transform)
    whole = _increment(ns, a, c, transform)
    parts = _increment(ns, a, b, transform) + _increment(ns, b, c, transform)
    torch.testing.assert_close(whole, parts, rtol=0, atol=1e-12)


def test_the_path_does_not_depend_on_the_order_of_queries():
    grid = karras_sigmas(20, 0.01, 80.0)[:-1].tolist()
    forward = BrownianTreeNoiseSampler(torch.zeros(3, 4, dtype=torch.float64), 0.01, 80.0, seed=9)
    backward = BrownianTreeNoiseSampler(torch.zeros(3, 4, dtype=torch.float64), 0.01, 80.0, seed=9)
    steps = list(zip(grid[:-1], grid[1:]))
    a = [forward(s, t) for s, t in steps]
    b = [backward(s, t) for s, t in reversed(steps)][::-1]
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-12)


def test_same_seed_same_noise_and_different_seed_different_noise():
    x = torch.zeros(2, 3, 4, 4)
    make = lambda seed: BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=seed)  # noqa: E731
    assert torch.equal(make(5)(10.0, 3.0), make(5)(10.0, 3.0))
    assert not torch.equal(make(5)(10.0, 3.0), make(6)(10.0, 3.0))
    from_generator = lambda: BrownianTreeNoiseSampler(x, 0.03, 14.6, seed=torch.Generator().manual_seed(4))  # noqa: E731
    assert torch.equal(from_generator()(10.0, 3.0), from_generator()(10.0, 3.0))
    out = make(5)(10.0, 3.0)
    assert out.shape == x.shape and out.dtype == x.dtype


def test_a_samples_noise_does_not_depend_on_the_batch_it_is_in():
    batch = BrownianTreeNoiseSampler(torch.zeros(3, 2, 4, dtype=torch.float64), 0.03, 14.6, seed=[7, 8, 9])
    alone = BrownianTreeNoiseSampler(torch.zeros(1, 2, 4, dtype=torch.float64), 0.03, 14.6, seed=[8])
    for a, b in [(14.6, 9.0), (9.0, 2.5), (2.5, 0.03)]:
        assert torch.equal(batch(a, b)[1:2], alone(a, b))


def test_float32_sigmas_and_tensors_are_accepted():
    # k-diffusion passes float32 σ tensors: their ends miss the float64 range by a rounding
    sigmas = karras_sigmas(10, 0.002, 80.0).float()
    ns = brownian_noise_sampler(torch.zeros(4, 3), sigmas, seed=1)
    draws = [ns(s, t) for s, t in zip(sigmas[:-2], sigmas[1:-1])]
    assert all(torch.isfinite(d).all() for d in draws)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sigma_min": 1.0, "sigma_max": 1.0}, "sigma_min < sigma_max"),
        ({"sigma_min": 0.0, "sigma_max": 1.0, "transform": math.log}, "not a finite interval"),
        ({"seed": 1.5}, "must be an int or a torch.Generator"),
        ({"seed": [1, 2]}, "2 seeds for a batch of 3"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    args = {"sigma_min": 0.1, "sigma_max": 10.0, "seed": 0, **kwargs}
    with pytest.raises((ConfigError, ValueError), match=message):
        BrownianTreeNoiseSampler(torch.zeros(3, 2), args.pop("sigma_min"), args.pop("sigma_max"), **args)


def test_queries_outside_the_range_or_of_zero_length_are_rejected():
    ns = BrownianTreeNoiseSampler(torch.zeros(2), 0.1, 10.0, seed=0)
    with pytest.raises(ConfigError, match="outside the Brownian tree's range"):
        ns(20.0, 5.0)
    with pytest.raises(ConfigError, match="same Brownian time"):
        ns(5.0, 5.0)


# -- what the tree is for: SDE solvers that converge pathwise ------------------------------------


def test_dpmpp_2m_sde_with_brownian_noise_converges_as_the_step_count_grows():
    # one fixed path per sample: 50 and 100 steps solve the same SDE realisation, so they agree up
    # to discretisation; fresh per-step noise gives a different realisation for every step count
    n = 256
    seeds = list(range(n))
    x = torch.randn(n, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 80.0
    out, plain = {}, {}
    for steps in (50, 100):
        sigmas = karras_sigmas(steps, 0.01, 80.0)
        noise = BrownianTreeNoiseSampler(x, 0.01, 80.0, seed=seeds)
        out[steps] = dpmpp_2m_sde(denoiser_torch, x, sigmas, noise_sampler=noise)
        plain[steps] = dpmpp_2m_sde(denoiser_torch, x, sigmas, generator=torch.Generator().manual_seed(steps))
    rms = lambda d: float(d.pow(2).mean().sqrt())  # noqa: E731
    brownian_gap, plain_gap = rms(out[50] - out[100]), rms(plain[50] - plain[100])
    assert plain_gap > 0.5  # ≈ √2·(data std 0.7): two independent samples
    assert brownian_gap < 0.1 * plain_gap, (brownian_gap, plain_gap)
