"""The analytic data sets samplers are measured on, with cached exact answers.

Two data sets in d = 4, shown to samplers as images of shape [B, 1, 2, 2]:

``gaussian``  N(μ, Σ) with Σ = Q diag(1.5, 0.6, 0.1, 0.01) Qᵀ: anisotropic (condition
              number 150) and correlated (Q a fixed rotation mixing every axis).
``mixture``   three components: a broad one with covariance 0.3·Σ and two tight ones
              (isotropic std 0.05, and diagonal stds 0.1/0.03/0.05/0.08), means 1–2 apart,
              so the posterior mean switches sharply between modes at small σ.
"""

from __future__ import annotations

import functools

import numpy as np

from diffkit.testing.grids import SIGMA_MAX
from diffkit_reference.analytic import GaussianData, GaussianMixtureData

POINT_SHAPE: tuple[int, ...] = (1, 2, 2)  # d = 4 as a 1-channel 2×2 image
DIM = 4
NAMES: tuple[str, ...] = ("gaussian", "mixture")

AnalyticData = GaussianData | GaussianMixtureData


def _rotation() -> np.ndarray:
    """A fixed 4×4 rotation mixing every axis (QR of a fixed, well-conditioned matrix)."""
    a = np.array(
        [[2.0, 1.0, 0.5, -0.3], [0.4, 1.5, -1.0, 0.8], [-0.7, 0.2, 1.8, 0.6], [0.3, -0.9, 0.4, 1.2]]
    )
    q, _ = np.linalg.qr(a)
    return q


def _anisotropic_cov() -> np.ndarray:
    q = _rotation()
    return q @ np.diag([1.5, 0.6, 0.1, 0.01]) @ q.T


@functools.cache
def data(name: str) -> AnalyticData:
    """The data set called ``name`` (one of :data:`NAMES`)."""
    if name == "gaussian":
        return GaussianData([0.5, -0.3, 0.2, 0.1], _anisotropic_cov())
    if name == "mixture":
        return GaussianMixtureData(
            [0.5, 0.3, 0.2],
            [[-1.0, 0.5, 0.0, 0.3], [1.0, 1.0, -0.5, 0.0], [0.8, -1.0, 0.6, -0.4]],
            [0.3 * _anisotropic_cov(), 0.05**2, [0.1**2, 0.03**2, 0.05**2, 0.08**2]],
        )
    raise KeyError(f"unknown analytic data set {name!r}; known: {', '.join(NAMES)}")


def scale(name: str) -> float:
    """The data's RMS distance from its mean, √tr Cov[x0]; errors are reported relative to it."""
    return float(np.sqrt(np.trace(data(name).covariance)))


@functools.cache
def noisy_starts(name: str, n: int, seed: int = 0) -> np.ndarray:
    """n exact draws of the noisy marginal at σ_max: y = x0 + σ_max·ε, float64 [n, d]."""
    rng = np.random.default_rng(seed)
    x0 = data(name).sample(n, rng)
    return x0 + SIGMA_MAX * rng.standard_normal(x0.shape)


@functools.cache
def exact_endpoints(name: str, n: int, seed: int = 0) -> np.ndarray:
    """Where the probability-flow ODE takes :func:`noisy_starts` at σ = 0, float64 [n, d].

    Closed form for the Gaussian; RK4 in log σ (1000 steps, error ≈ 3e-8) for the mixture.
    """
    dataset, starts = data(name), noisy_starts(name, n, seed)
    if isinstance(dataset, GaussianData):
        return dataset.ode_solution(starts, SIGMA_MAX, 0.0)
    return dataset.ode_solution(starts, SIGMA_MAX, 0.0, steps=1000)


@functools.cache
def whitened_fourth_moments(name: str, n: int = 200_000, seed: int = 1) -> np.ndarray:
    """Var[u_i u_j] for whitened data u = L⁻¹(x0 − μ) (Σ = L Lᵀ), shape [d, d].

    The standard error of a sample covariance entry from n draws is √(Var[u_i u_j]/n);
    estimated once from a large exact sample (for a Gaussian it is 1 + δ_ij).
    """
    dataset = data(name)
    u = whiten(name, dataset.sample(n, np.random.default_rng(seed)))
    products = u[:, :, None] * u[:, None, :]  # [n, d, d]
    return products.var(axis=0)


def whiten(name: str, x: np.ndarray) -> np.ndarray:
    """u = L⁻¹(x − μ) with Σ = L Lᵀ, so the data has mean 0 and covariance I; [n, d] → [n, d]."""
    dataset = data(name)
    chol = np.linalg.cholesky(dataset.covariance)
    return np.linalg.solve(chol, (x - dataset.mean).T).T
