"""The Fréchet distance: against scipy's sqrtm formula, analytic Gaussians and invariances."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given
from hypothesis import strategies as st

from diffkit.demos.frechet import frechet_distance, frechet_distance_from_stats, gaussian_stats
from diffkit.errors import ShapeError


def _scipy_fid(a: np.ndarray, b: np.ndarray) -> float:
    """The usual FID code (pytorch-fid style): sqrtm of the non-symmetric product Σa Σb."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(sa @ sb)
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa) + np.trace(sb) - 2 * np.trace(covmean))


def _with_exact_moments(rng: np.random.Generator, n: int, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """n samples whose sample mean and (N−1) covariance are exactly ``mean`` and ``cov``."""
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(0)
    whiten = np.linalg.cholesky(np.cov(z, rowvar=False))
    z = np.linalg.solve(whiten, z.T).T  # sample covariance exactly I
    return z @ np.linalg.cholesky(cov).T + mean


def _random_spd(rng: np.random.Generator, f: int) -> np.ndarray:
    q, _ = np.linalg.qr(rng.standard_normal((f, f)))
    return (q * rng.uniform(0.1, 3.0, f)) @ q.T


@pytest.mark.parametrize(("n_a", "n_b", "f", "seed"), [(200, 300, 4, 0), (500, 150, 16, 1), (1000, 1000, 32, 2)])
def test_matches_the_scipy_sqrtm_formula(n_a, n_b, f, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n_a, f)) @ rng.standard_normal((f, f))
    b = rng.standard_normal((n_b, f)) @ rng.standard_normal((f, f)) + rng.standard_normal(f)
    expected = _scipy_fid(a, b)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8, abs=1e-8)


@given(
    n_a=st.integers(2, 60),
    n_b=st.integers(2, 60),
    f=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
    scale=st.floats(1e-2, 1e2),
)
def test_symmetric_and_non_negative(n_a, n_b, f, seed, scale):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n_a, f)) * scale
    b = rng.standard_normal((n_b, f)) * scale + 0.5 * scale
    d_ab, d_ba = frechet_distance(a, b), frechet_distance(b, a)
    assert d_ab >= 0.0
    assert d_ab == pytest.approx(d_ba, rel=1e-7, abs=1e-9 * scale**2 * f)


@pytest.mark.parametrize(("n", "f"), [(50, 8), (10, 32)])  # full rank, and rank-deficient (N < F)
def test_zero_for_identical_sets(n, f):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((n, f)) * 5 + 2
    scale = np.trace(np.cov(a, rowvar=False))
    assert frechet_distance(a, a) <= 1e-6 * scale
    assert frechet_distance(a, a[rng.permutation(n)]) <= 1e-6 * scale  # row order does not matter


def test_analytic_value_for_diagonal_gaussians():
    # commuting covariances: d² = ‖μa − μb‖² + Σ (√a_i − √b_i)²
    rng = np.random.default_rng(4)
    var_a, var_b = np.array([1.0, 4.0, 0.25, 9.0]), np.array([4.0, 1.0, 0.25, 1.0])
    mu_a, mu_b = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    a = _with_exact_moments(rng, 300, mu_a, np.diag(var_a))
    b = _with_exact_moments(rng, 500, mu_b, np.diag(var_b))
    expected = ((mu_a - mu_b) ** 2).sum() + ((np.sqrt(var_a) - np.sqrt(var_b)) ** 2).sum()  # 5 + (1 + 1 + 0 + 4) = 11
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(11.0)  # the hand-computed value


def test_analytic_value_for_isotropic_against_a_general_gaussian():
    # Σa = c·I: (Σa^{1/2} Σb Σa^{1/2})^{1/2} = √c · Σb^{1/2}, so
    # d² = ‖Δμ‖² + F·c + tr Σb − 2 √c Σ √λ_i(Σb)
    rng = np.random.default_rng(5)
    f, c = 6, 2.5
    sigma_b = _random_spd(rng, f)
    mu_a, mu_b = rng.standard_normal(f), rng.standard_normal(f)
    a = _with_exact_moments(rng, 400, mu_a, c * np.eye(f))
    b = _with_exact_moments(rng, 250, mu_b, sigma_b)
    lam = np.linalg.eigvalsh(sigma_b)
    expected = ((mu_a - mu_b) ** 2).sum() + f * c + lam.sum() - 2 * np.sqrt(c) * np.sqrt(lam).sum()
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance_from_stats(mu_a, c * np.eye(f), mu_b, sigma_b) == pytest.approx(expected, rel=1e-12)


def test_a_shift_adds_its_squared_length():
    # same covariance: d²(a + v, a) = ‖v‖², and shifting both sets changes nothing
    rng = np.random.default_rng(6)
    a = rng.standard_normal((100, 5)) @ rng.standard_normal((5, 5))
    b = rng.standard_normal((80, 5))
    v = np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    assert frechet_distance(a + v, a) == pytest.approx(v @ v, rel=1e-8)
    assert frechet_distance(a + v, b + v) == pytest.approx(frechet_distance(a, b), rel=1e-9)


def test_tensors_are_read_in_float64():
    rng = np.random.default_rng(7)
    a = rng.standard_normal((64, 10)).astype(np.float32)
    b = (rng.standard_normal((64, 10)) + 1).astype(np.float32)
    from_tensors = frechet_distance(torch.from_numpy(a), torch.from_numpy(b))
    assert from_tensors == frechet_distance(a.astype(np.float64), b.astype(np.float64))
    mu, sigma = gaussian_stats(torch.from_numpy(a))
    assert mu.dtype == np.float64 and sigma.shape == (10, 10)


def test_single_feature_column():
    # F = 1: d² = (μa − μb)² + (sa − sb)² with s the standard deviations
    a, b = np.array([[0.0], [2.0]]), np.array([[1.0], [5.0], [9.0]])
    expected = (1.0 - 5.0) ** 2 + (np.std(a, ddof=1) - np.std(b, ddof=1)) ** 2
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("a", "b", "match"),
    [
        (np.zeros(5), np.zeros((5, 1)), r"\[N, F\]"),
        (np.zeros((5, 2)), np.zeros((5, 3)), "same feature width"),
        (np.zeros((1, 2)), np.zeros((5, 2)), "at least 2 rows"),
        (np.full((3, 2), np.nan), np.zeros((5, 2)), "non-finite"),
    ],
)
def test_bad_inputs_are_shape_errors(a, b, match):
    with pytest.raises(ShapeError, match=match):
        frechet_distance(a, b)


def test_bad_stats_shapes_are_shape_errors():
    with pytest.raises(ShapeError, match="covariances"):
        frechet_distance_from_stats(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
