"""Sampler twins: DDIM(eta=0) == Euler, DDPM small == DDIM(eta=1), Euler converges on Gaussian data."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import diffkit_reference as ref


def toy_denoiser(y, sigma, cond):
    """A smooth, nonlinear x0 estimate; sigma has shape [B].

    Like any sensible denoiser, D(y, sigma) -> y as sigma -> 0 with y - D = O(sigma), so the
    implied eps_hat = (y - D) / sigma stays bounded. (The VP twins compute 1 - abar from
    abar = 1 / (1 + sigma^2), which carries a relative error ~ 1e-16 / sigma^2; an unbounded
    eps_hat would amplify that at sigma ~ 1e-3.)
    """
    s = sigma.reshape(-1, *([1] * (y.ndim - 1)))
    out = (y + s**2 * np.tanh(y) + 0.3 * s * np.sin(3 * y)) / (1 + s**2)
    return out if cond is None else out + s / (1 + s) * cond


def karras_sigmas(n: int, sigma_min=0.002, sigma_max=80.0, rho=7.0) -> np.ndarray:
    ramp = np.linspace(0, 1, n)
    s = (sigma_max ** (1 / rho) + ramp * (sigma_min ** (1 / rho) - sigma_max ** (1 / rho))) ** rho
    return np.append(s, 0.0)


class RecordingNoise:
    """Replays a fixed noise sequence and records the (sigma, sigma_next) of each call."""

    def __init__(self, seed: int, shape):
        self.rng = np.random.default_rng(seed)
        self.shape = shape
        self.calls: list[tuple[float, float]] = []

    def __call__(self, sigma, sigma_next):
        self.calls.append((sigma, sigma_next))
        return self.rng.standard_normal(self.shape)


def _never(sigma, sigma_next):
    raise AssertionError("noise_sampler must not be called")


@settings(max_examples=20)
@given(st.integers(0, 2**32 - 1), st.integers(1, 40), st.booleans())
def test_ddim_eta0_equals_euler(seed, n, with_cond):
    rng = np.random.default_rng(seed)
    sigmas = karras_sigmas(n)
    x = rng.standard_normal((3, 4)) * sigmas[0]
    cond = rng.standard_normal((3, 4)) if with_cond else None
    a = ref.ddim_sample(toy_denoiser, x, sigmas, eta=0.0, noise_sampler=_never, cond=cond)
    b = ref.euler_sample(toy_denoiser, x, sigmas, cond=cond)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)


@settings(max_examples=20)
@given(st.integers(0, 2**32 - 1), st.integers(1, 30))
def test_ddpm_small_equals_ddim_eta1(seed, n):
    rng = np.random.default_rng(seed)
    sigmas = karras_sigmas(n, sigma_max=20.0)
    x = rng.standard_normal((2, 3)) * sigmas[0]
    noise_a, noise_b = RecordingNoise(seed, x.shape), RecordingNoise(seed, x.shape)
    a = ref.ddpm_sample(toy_denoiser, x, sigmas, variance="small", noise_sampler=noise_a)
    b = ref.ddim_sample(toy_denoiser, x, sigmas, eta=1.0, noise_sampler=noise_b)
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)
    # one draw per step except the final one into sigma = 0, in step order
    expected = [(float(s), float(t)) for s, t in zip(sigmas[:-2], sigmas[1:-1])]
    assert noise_a.calls == expected and noise_b.calls == expected


def test_denoiser_receives_sigma_batch():
    seen = []

    def d(y, sigma, cond):
        seen.append((sigma.dtype, sigma.shape, cond))
        return np.zeros_like(y)

    sigmas = np.array([2.0, 1.0, 0.0])
    ref.euler_sample(d, np.ones((5, 2)), sigmas, cond="c")
    assert seen == [(np.float64, (5,), "c")] * 2


def test_ddpm_large_uses_more_noise_than_small():
    """Same noise, "large" (beta) moves further from the deterministic path than "small" (beta~)."""
    sigmas = np.array([5.0, 2.0, 1.0, 0.5, 0.0])
    x = np.random.default_rng(0).standard_normal((1, 1000)) * 5
    zero = lambda s, t: np.zeros_like(x)  # noqa: E731
    mean_path = ref.ddpm_sample(toy_denoiser, x, sigmas, noise_sampler=zero)
    small = ref.ddpm_sample(toy_denoiser, x, sigmas, variance="small", noise_sampler=RecordingNoise(1, x.shape))
    large = ref.ddpm_sample(toy_denoiser, x, sigmas, variance="large", noise_sampler=RecordingNoise(1, x.shape))
    assert np.std(large - mean_path) > np.std(small - mean_path) > 0


# --- Gaussian data: exact denoiser and exact probability-flow solution -----------------------

MU, S, SIGMA_MAX = 0.3, 0.7, 10.0


def gauss_denoiser(y, sigma, cond):
    """E[x0 | y] for x0 ~ N(MU, S^2), y = x0 + sigma eps."""
    s = sigma.reshape(-1, *([1] * (y.ndim - 1)))
    return MU + S**2 / (S**2 + s**2) * (y - MU)


def exact_pf_solution(y):
    # dy/dsigma = (y - mu) sigma / (s^2 + sigma^2)  =>  (y - mu) / sqrt(s^2 + sigma^2) is constant
    return MU + (y - MU) * S / np.sqrt(S**2 + SIGMA_MAX**2)


def test_euler_converges_linearly_on_gaussian_data():
    y = np.random.default_rng(0).standard_normal((4, 8)) * np.sqrt(S**2 + SIGMA_MAX**2) + MU
    exact = exact_pf_solution(y)
    errors = []
    for n in (25, 50, 100, 200, 400):
        sigmas = np.linspace(SIGMA_MAX, 0.0, n + 1)
        errors.append(np.max(np.abs(ref.euler_sample(gauss_denoiser, y, sigmas) - exact)))
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all(ratios > 1.8) and np.all(ratios < 2.2), (errors, ratios)  # first order: halving h halves error
    assert errors[-1] < 0.05 * np.max(np.abs(exact - MU))
    # the DDIM twin is the same solver
    sigmas = np.linspace(SIGMA_MAX, 0.0, 401)
    np.testing.assert_allclose(ref.ddim_sample(gauss_denoiser, y, sigmas), ref.euler_sample(gauss_denoiser, y, sigmas), atol=1e-12)


def test_sampler_errors():
    x = np.ones((1, 2))
    with pytest.raises(ValueError, match="end at exactly 0"):
        ref.euler_sample(toy_denoiser, x, np.array([2.0, 1.0]))
    with pytest.raises(ValueError, match="strictly decreasing"):
        ref.euler_sample(toy_denoiser, x, np.array([1.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="finite"):
        ref.ddim_sample(toy_denoiser, x, np.array([np.inf, 1.0, 0.0]))
    with pytest.raises(ValueError, match="noise_sampler"):
        ref.ddim_sample(toy_denoiser, x, np.array([2.0, 1.0, 0.0]), eta=0.5)
    with pytest.raises(ValueError, match="noise_sampler"):
        ref.ddpm_sample(toy_denoiser, x, np.array([2.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match="variance"):
        ref.ddpm_sample(toy_denoiser, x, np.array([2.0, 0.0]), variance="learned")
    # a single step straight to 0 never needs noise
    out = ref.ddpm_sample(toy_denoiser, x, np.array([2.0, 0.0]), noise_sampler=_never)
    np.testing.assert_allclose(out, toy_denoiser(x, np.array([2.0]), None), atol=1e-14)
