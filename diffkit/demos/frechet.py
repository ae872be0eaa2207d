"""The Fréchet distance between Gaussians fitted to two feature sets (the FID formula).

Heusel et al. 2017 ("GANs trained by a two time-scale update rule…", eq. 6): with μ, Σ the
mean and covariance of each feature set,

    d² = ‖μa − μb‖² + tr(Σa + Σb − 2 (Σa^{1/2} Σb Σa^{1/2})^{1/2}),

the squared 2-Wasserstein distance between N(μa, Σa) and N(μb, Σb). The usual code takes
``scipy.linalg.sqrtm(Σa Σb)``, a square root of a non-symmetric matrix that may come back
complex. Here both roots are of symmetric positive semi-definite matrices, so symmetric
eigendecompositions (``numpy.linalg.eigh``) do it in float64: Σa^{1/2} = V diag(√λ) Vᵀ, and
tr((Σa^{1/2} Σb Σa^{1/2})^{1/2}) = Σ √λ_i over the eigenvalues of that symmetric product
(the same eigenvalues as Σa Σb, so the value equals the sqrtm-based one). Eigenvalues that
rounding pushed slightly below zero are clipped to zero.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from diffkit.errors import ShapeError


def _as_features(x: Any, name: str) -> np.ndarray:
    """An [N, F] float64 numpy copy of a tensor or array-like (N ≥ 2, finite)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    array = np.array(x, dtype=np.float64)
    if array.ndim != 2:
        raise ShapeError(f"{name} must be a feature matrix [N, F], got shape {array.shape}")
    if array.shape[0] < 2:
        raise ShapeError(f"{name} needs at least 2 rows (samples) to have a covariance, got {array.shape[0]}")
    if not np.isfinite(array).all():
        raise ShapeError(f"{name} has non-finite values (NaN or inf)")
    return array


def gaussian_stats(features: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean μ [F] and unbiased covariance Σ [F, F] (divisor N − 1) of features [N, F], float64."""
    x = _as_features(features, "features")
    return x.mean(axis=0), np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1])


def _sym_sqrt(matrix: np.ndarray) -> np.ndarray:
    """The PSD square root of a symmetric matrix: V diag(√max(λ, 0)) Vᵀ."""
    eigenvalues, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ vectors.T


def frechet_distance_from_stats(mu_a: Any, sigma_a: Any, mu_b: Any, sigma_b: Any) -> float:
    """The Fréchet distance between N(μa, Σa) and N(μb, Σb) (means [F], covariances [F, F]).

    Returns ‖μa − μb‖² + tr Σa + tr Σb − 2 tr((Σa^{1/2} Σb Σa^{1/2})^{1/2}), computed in
    float64 and clipped at 0 (a true distance is never negative; rounding can give −1e−12).
    """
    mu_a, mu_b = np.asarray(mu_a, dtype=np.float64), np.asarray(mu_b, dtype=np.float64)
    sigma_a, sigma_b = np.asarray(sigma_a, dtype=np.float64), np.asarray(sigma_b, dtype=np.float64)
    f = mu_a.shape[0] if mu_a.ndim == 1 else -1
    if f < 1 or mu_b.shape != (f,) or sigma_a.shape != (f, f) or sigma_b.shape != (f, f):
        raise ShapeError(
            "means must be [F] and covariances [F, F] with one F ≥ 1; got mu_a "
            f"{mu_a.shape}, mu_b {mu_b.shape}, sigma_a {sigma_a.shape}, sigma_b {sigma_b.shape}"
        )
    root_a = _sym_sqrt(sigma_a)
    middle = root_a @ sigma_b @ root_a  # Σa^{1/2} Σb Σa^{1/2}: symmetric PSD
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()  # tr((Σa^{1/2} Σb Σa^{1/2})^{1/2})
    diff = mu_a - mu_b
    value = diff @ diff + np.trace(sigma_a) + np.trace(sigma_b) - 2.0 * trace_sqrt
    return float(max(value, 0.0))


def frechet_distance(a: Any, b: Any) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` [Na, F] and ``b`` [Nb, F].

    ``a`` and ``b`` are tensors or arrays (any float dtype; computed in float64) with the same
    feature width F and at least two rows each. This is FID when the features are Inception
    pool features; :func:`diffkit.demos.digits.digits_fid` uses a small digits classifier's.
    """
    a = _as_features(a, "a")
    b = _as_features(b, "b")
    if a.shape[1] != b.shape[1]:
        raise ShapeError(f"a and b must have the same feature width, got {a.shape[1]} and {b.shape[1]}")
    return frechet_distance_from_stats(*gaussian_stats(a), *gaussian_stats(b))
