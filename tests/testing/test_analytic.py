"""The exact denoisers and ODE solutions of ``diffkit_reference.analytic`` are what they claim."""

from __future__ import annotations

import numpy as np
import pytest

from diffkit_reference.analytic import GaussianData, GaussianMixtureData


def _rotation(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    return q


@pytest.fixture(scope="module")
def gaussian() -> GaussianData:
    """Anisotropic (λ from 0.02 to 2) and correlated, d = 3."""
    q = _rotation(3, 0)
    return GaussianData([0.4, -0.2, 1.0], q @ np.diag([2.0, 0.5, 0.02]) @ q.T)


@pytest.fixture(scope="module")
def mixture() -> GaussianMixtureData:
    """Two tight components and one broad, correlated one, d = 2."""
    return GaussianMixtureData(
        [0.5, 0.3, 0.2], [[-1.0, 0.5], [1.0, 1.0], [0.8, -1.0]], [[[0.3, 0.1], [0.1, 0.2]], 0.05**2, [0.1**2, 0.03**2]]
    )


def test_covariance_conveniences():
    assert np.array_equal(GaussianData(0.0, 2.0, dim=3).cov, 2.0 * np.eye(3))
    assert np.array_equal(GaussianData([1.0, 2.0], [1.0, 4.0]).cov, np.diag([1.0, 4.0]))
    assert np.array_equal(GaussianData(1.5, np.eye(2)).mean, [1.5, 1.5])
    with pytest.raises(ValueError, match="positive definite"):
        GaussianData([0.0, 0.0], [[1.0, 1.0], [1.0, 1.0]])


def test_gaussian_denoiser_is_the_bayes_formula(gaussian):
    y = np.random.default_rng(1).standard_normal((5, 3)) * 2
    sigma = np.array([0.1, 0.5, 1.0, 3.0, 30.0])  # one σ per row
    cov, mu = gaussian.cov, gaussian.mean
    for row, s in enumerate(sigma):
        expected = mu + cov @ np.linalg.solve(cov + s**2 * np.eye(3), y[row] - mu)
        np.testing.assert_allclose(gaussian.denoise(y[row], s), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gaussian.denoise(y, sigma)[3], gaussian.denoise(y[3], 3.0), rtol=1e-14)


def test_mixture_denoiser_matches_importance_sampled_posterior_mean(mixture):
    """E[x0 | y] = ∫ x0 p(x0) N(y; x0, σ²I) dx0 / ∫ p(x0) N(y; x0, σ²I) dx0, by Monte Carlo over the prior."""
    rng = np.random.default_rng(2)
    x0 = mixture.sample(400_000, rng)
    sigma = 0.6
    for y in ([0.0, 0.7], [1.2, -0.4], [-1.5, 0.2]):
        log_w = -0.5 * np.sum((np.asarray(y) - x0) ** 2, axis=1) / sigma**2
        w = np.exp(log_w - log_w.max())
        w /= w.sum()
        estimate = w @ x0
        # standard error of a self-normalised importance estimate ≈ √(Σ w²·(x0 − est)²)
        se = np.sqrt(np.sum(w[:, None] ** 2 * (x0 - estimate) ** 2, axis=0))
        np.testing.assert_array_less(np.abs(mixture.denoise(np.asarray(y), sigma) - estimate), 5 * se + 1e-12)


def test_one_component_mixture_equals_gaussian(gaussian):
    one = GaussianMixtureData([1.0], [gaussian.mean], [gaussian.cov])
    y = np.random.default_rng(3).standard_normal((16, 3)) * 40
    np.testing.assert_allclose(one.denoise(y, 0.7), gaussian.denoise(y, 0.7), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(one.ode_solution(y, 40.0), gaussian.ode_solution(y, 40.0), rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(
        one.ode_solution(y, 40.0, 0.3, steps=500), gaussian.ode_solution(y, 40.0, 0.3), rtol=1e-8, atol=1e-8
    )


def test_responsibilities_survive_far_away_points(mixture):
    far = np.array([[1e6, -1e6], [0.0, 3e3]])
    r = mixture.responsibilities(far, 1e-3)
    assert np.isfinite(r).all() and np.allclose(r.sum(axis=0), 1.0)
    assert np.isfinite(mixture.denoise(far, 1e-3)).all()


def _ode_residual(data, y: np.ndarray, sigma: float, h: float, **options) -> float:
    """max |dy/dσ − (y − D)/σ| with dy/dσ from a central difference of the solution through y."""
    forward = data.ode_solution(y, sigma, sigma + h, **options)
    backward = data.ode_solution(y, sigma, sigma - h, **options)
    derivative = (forward - backward) / (2 * h)
    return float(np.max(np.abs(derivative - (y - data.denoise(y, sigma)) / sigma)))


@pytest.mark.parametrize("sigma", [0.05, 0.4, 3.0, 50.0])
def test_gaussian_closed_form_satisfies_the_ode(gaussian, sigma):
    y = gaussian.sample(8, np.random.default_rng(4)) + sigma * np.random.default_rng(5).standard_normal((8, 3))
    h = 1e-4 * sigma
    assert _ode_residual(gaussian, y, sigma, h) < 1e-6 * (1 + np.abs(y).max() / sigma)


def test_mixture_solution_satisfies_the_ode(mixture):
    sigma = 0.5
    y = mixture.sample(8, np.random.default_rng(6)) + sigma * np.random.default_rng(7).standard_normal((8, 2))
    assert _ode_residual(mixture, y, sigma, 1e-3, steps=20) < 1e-5


def _assert_moments(samples: np.ndarray, mean: np.ndarray, cov: np.ndarray, z: float = 5.0) -> None:
    """Sample mean and covariance within z standard errors (SE of a covariance entry from the samples)."""
    n = len(samples)
    centred = samples - samples.mean(axis=0)
    se_mean = np.sqrt(np.diag(cov) / n)
    np.testing.assert_array_less(np.abs(samples.mean(axis=0) - mean), z * se_mean)
    products = centred[:, :, None] * centred[:, None, :]
    se_cov = products.std(axis=0) / np.sqrt(n)
    np.testing.assert_array_less(np.abs(np.cov(samples, rowvar=False) - cov), z * se_cov)


def test_gaussian_ode_carries_the_noisy_marginal_to_the_data(gaussian):
    """y ~ N(μ, Σ + σ_max²I) mapped to σ = 0 must be distributed as N(μ, Σ)."""
    rng = np.random.default_rng(8)
    sigma_max = 80.0
    y = gaussian.sample(100_000, rng) + sigma_max * rng.standard_normal((100_000, 3))
    _assert_moments(gaussian.ode_solution(y, sigma_max), gaussian.mean, gaussian.cov)


def test_mixture_ode_carries_the_noisy_marginal_to_the_data(mixture):
    rng = np.random.default_rng(9)
    sigma_max, n = 20.0, 8_000
    y = mixture.sample(n, rng) + sigma_max * rng.standard_normal((n, 2))
    _assert_moments(mixture.ode_solution(y, sigma_max, steps=200), mixture.mean, mixture.covariance)


def test_samples_have_the_stated_moments(gaussian, mixture):
    rng = np.random.default_rng(10)
    _assert_moments(gaussian.sample(100_000, rng), gaussian.mean, gaussian.cov)
    _assert_moments(mixture.sample(100_000, rng), mixture.mean, mixture.covariance)
