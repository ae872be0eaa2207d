"""Exact denoisers for data whose posterior mean has a closed form (float64, numpy only).

Notation (σ form, Karras et al. 2022): a noisy point is y = x0 + σ·ε with ε ~ N(0, I), and the
ideal denoiser is D(y, σ) = E[x0 | y]. The probability-flow ODE (Karras et al. 2022, eq. 3
with σ(t) = t, s(t) = 1) is

    dy/dσ = (y − D(y, σ)) / σ,

and maps the noisy marginal p_σ = p_data * N(0, σ²I) at σ_from onto p_σ at σ_to; at σ_to = 0
it lands on the data. These are the yardsticks the conformance kit (``diffkit.testing``)
measures samplers against.

Shapes: points are arrays [..., d]; σ is a scalar or an array broadcastable to the batch
shape [...] (one σ per row), never carrying the trailing d axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["GaussianData", "GaussianMixtureData"]

F64 = NDArray[np.float64]


def _per_row(sigma: ArrayLike) -> F64:
    """σ as float64 with a trailing axis of 1, so it broadcasts against points [..., d]."""
    return np.asarray(sigma, dtype=np.float64)[..., None]


def _as_covariance(cov: ArrayLike, dim: int) -> F64:
    """A scalar (σ²·I), a vector (diagonal) or a matrix, returned as a symmetric [d, d] matrix."""
    c = np.asarray(cov, dtype=np.float64)
    if c.ndim == 0:
        c = np.eye(dim) * c
    elif c.ndim == 1:
        c = np.diag(c)
    if c.shape != (dim, dim):
        raise ValueError(f"covariance must be a scalar, [{dim}] or [{dim}, {dim}], got shape {c.shape}")
    if not np.all(np.isfinite(c)) or not np.allclose(c, c.T, rtol=1e-12, atol=1e-14):
        raise ValueError("covariance must be finite and symmetric")
    return 0.5 * (c + c.T)


class GaussianData:
    """Data x0 ~ N(μ, Σ) with its exact denoiser and exact probability-flow ODE map.

    Args:
        mean: μ, shape [d] (or a scalar, broadcast to ``dim``).
        cov: Σ as a scalar (Σ = c·I), a vector (diagonal) or an SPD matrix [d, d].
        dim: d, needed only when both ``mean`` and ``cov`` are scalars (default 1).

    Everything is computed in Σ's eigenbasis Σ = U diag(λ) Uᵀ, where the coordinates
    z = Uᵀ(y − μ) are independent and each is a one-dimensional problem.
    """

    def __init__(self, mean: ArrayLike, cov: ArrayLike, *, dim: int | None = None) -> None:
        m, c = np.asarray(mean, dtype=np.float64), np.asarray(cov, dtype=np.float64)
        d = m.shape[-1] if m.ndim == 1 else c.shape[-1] if c.ndim >= 1 else (dim or 1)
        if m.ndim > 1 or (dim is not None and dim != d):
            raise ValueError(f"mean must be a scalar or a vector [d]; got shape {m.shape} (dim={dim})")
        self.dim: int = d
        self.mean: F64 = np.broadcast_to(m, (d,)).copy()
        self.cov: F64 = _as_covariance(c, d)
        eigvals, eigvecs = np.linalg.eigh(self.cov)
        if eigvals[0] <= 0:
            raise ValueError(f"covariance must be positive definite; smallest eigenvalue {eigvals[0]:g}")
        self.eigvals: F64 = eigvals  # λ, shape [d], ascending
        self.eigvecs: F64 = eigvecs  # U, shape [d, d], columns are eigenvectors

    def _coords(self, y: ArrayLike) -> F64:
        """z = Uᵀ(y − μ), shape [..., d]."""
        return (np.asarray(y, dtype=np.float64) - self.mean) @ self.eigvecs

    def _point(self, z: F64) -> F64:
        """y = μ + U z, shape [..., d]."""
        return self.mean + z @ self.eigvecs.T

    def denoise(self, y: ArrayLike, sigma: ArrayLike) -> F64:
        """E[x0 | y] = μ + Σ(Σ + σ²I)⁻¹(y − μ); per coordinate z ↦ λ/(λ + σ²)·z."""
        return self.posterior(y, sigma)[1]

    def log_density(self, y: ArrayLike, sigma: ArrayLike) -> F64:
        """log N(y; μ, Σ + σ²I), shape [...] (the evidence of y at noise level σ)."""
        return self.posterior(y, sigma)[0]

    def posterior(self, y: ArrayLike, sigma: ArrayLike) -> tuple[F64, F64]:
        """(log N(y; μ, Σ + σ²I) [...], E[x0 | y] [..., d]) sharing one change of basis."""
        var = self.eigvals + _per_row(sigma) ** 2  # [..., d] marginal variances per coordinate
        z = self._coords(y)
        log_density = -0.5 * np.sum(z * z / var + np.log(2 * np.pi * var), axis=-1)
        return log_density, self._point((self.eigvals / var) * z)

    def ode_solution(self, y: ArrayLike, sigma_from: ArrayLike, sigma_to: ArrayLike = 0.0) -> F64:
        """The exact probability-flow ODE map of y from σ_from to σ_to.

        Derivation: y − D = U·(σ²/(λ + σ²))·z, so each eigen-coordinate obeys
            dz/dσ = σ z / (λ + σ²)   ⇔   d log z/dσ = ½ d log(λ + σ²)/dσ,
        hence z(σ) ∝ √(λ + σ²) and z(σ_to) = z(σ_from)·√((λ + σ_to²)/(λ + σ_from²)).
        """
        ratio = np.sqrt((self.eigvals + _per_row(sigma_to) ** 2) / (self.eigvals + _per_row(sigma_from) ** 2))
        return self._point(ratio * self._coords(y))

    def sample(self, n: int, rng: np.random.Generator) -> F64:
        """n draws of x0 ~ N(μ, Σ), shape [n, d]: μ + U·√λ·ξ with ξ ~ N(0, I)."""
        xi = rng.standard_normal((n, self.dim))
        return self._point(np.sqrt(self.eigvals) * xi)

    @property
    def covariance(self) -> F64:
        """Σ, shape [d, d]."""
        return self.cov


class GaussianMixtureData:
    """Data x0 ~ Σ_k w_k N(μ_k, Σ_k) with its exact denoiser and an accurate ODE solution.

    Args:
        weights: w_k ≥ 0, shape [K] (normalised to sum 1).
        means: μ_k, shape [K, d].
        covs: one covariance per component, each a scalar, a diagonal [d] or a matrix [d, d].
    """

    def __init__(self, weights: ArrayLike, means: ArrayLike, covs: Sequence[ArrayLike]) -> None:
        w = np.asarray(weights, dtype=np.float64)
        mu = np.asarray(means, dtype=np.float64)
        if w.ndim != 1 or mu.ndim != 2 or mu.shape[0] != w.shape[0] or len(covs) != w.shape[0]:
            raise ValueError("need weights [K], means [K, d] and K covariances")
        if np.any(w < 0) or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError("weights must be finite, ≥ 0 and not all 0")
        self.weights: F64 = w / w.sum()
        self.components: list[GaussianData] = [GaussianData(m, c) for m, c in zip(mu, covs)]
        self.dim: int = mu.shape[1]

    @property
    def mean(self) -> F64:
        """E[x0] = Σ_k w_k μ_k, shape [d]."""
        return sum(w * c.mean for w, c in zip(self.weights, self.components))

    @property
    def covariance(self) -> F64:
        """Cov[x0] = Σ_k w_k (Σ_k + μ_k μ_kᵀ) − μ μᵀ, shape [d, d]."""
        second = sum(w * (c.cov + np.outer(c.mean, c.mean)) for w, c in zip(self.weights, self.components))
        return second - np.outer(self.mean, self.mean)

    def _posteriors(self, y: ArrayLike, sigma: ArrayLike) -> tuple[F64, F64]:
        """(r [K, ...], component posterior means [K, ..., d]).

        r_k(y) = P(component k | y) at noise σ: a log-sum-exp softmax of
        log w_k + log N(y; μ_k, Σ_k + σ²I), so far-away points do not underflow to 0/0.
        """
        parts = [c.posterior(y, sigma) for c in self.components]
        logits = np.stack([np.log(w) + log_p for w, (log_p, _) in zip(self.weights, parts)])
        logits = logits - logits.max(axis=0, keepdims=True)
        r = np.exp(logits)
        return r / r.sum(axis=0, keepdims=True), np.stack([mean for _, mean in parts])

    def responsibilities(self, y: ArrayLike, sigma: ArrayLike) -> F64:
        """r_k(y) = P(component k | y) at noise σ, shape [K, ...]."""
        return self._posteriors(y, sigma)[0]

    def denoise(self, y: ArrayLike, sigma: ArrayLike) -> F64:
        """E[x0 | y] = Σ_k r_k(y) · E_k[x0 | y] (each term the component's Gaussian posterior mean)."""
        r, means = self._posteriors(y, sigma)  # [K, ...], [K, ..., d]
        return np.sum(r[..., None] * means, axis=0)

    def ode_solution(
        self, y: ArrayLike, sigma_from: float, sigma_to: float = 0.0, steps: int = 2000
    ) -> F64:
        """The probability-flow ODE map from σ_from to σ_to (either direction), integrated numerically.

        Classical RK4 in s = log σ, where the ODE reads dy/ds = y − D(y, e^s): in log σ the
        right-hand side stays O(|y|) at every scale, so a uniform grid of ``steps`` points is
        accurate from σ = 10⁴ down to tiny σ. σ_to = 0 is unreachable in log σ, so the
        integration stops at σ_stop = 10⁻⁶·√λ_min (λ_min: smallest eigenvalue of any Σ_k) and
        finishes with each component's exact map weighted by its responsibility at σ_stop;
        that last piece moves points by O(σ_stop²/λ_min) ≈ 10⁻¹², below float64 noise.
        """
        if not (0 < sigma_from < np.inf and 0 <= sigma_to < np.inf):
            raise ValueError(f"need 0 < sigma_from < ∞ and 0 ≤ sigma_to < ∞, got {sigma_from}, {sigma_to}")
        lam_min = min(c.eigvals[0] for c in self.components)
        stop = sigma_to if sigma_to > 0 else min(1e-6 * np.sqrt(lam_min), 1e-3 * sigma_from)
        s_grid = np.linspace(np.log(sigma_from), np.log(stop), steps + 1)
        y = np.asarray(y, dtype=np.float64)

        def velocity(point: F64, s: float) -> F64:  # dy/ds = y − D(y, σ = e^s)
            return point - self.denoise(point, np.exp(s))

        for s, s_next in zip(s_grid[:-1], s_grid[1:]):
            h = s_next - s
            k1 = velocity(y, s)
            k2 = velocity(y + 0.5 * h * k1, s + 0.5 * h)
            k3 = velocity(y + 0.5 * h * k2, s + 0.5 * h)
            k4 = velocity(y + h * k3, s_next)
            y = y + (h / 6.0) * (k1 + 2 * k2 + 2 * k3 + k4)
        if sigma_to > 0:
            return y
        r = self.responsibilities(y, stop)[..., None]  # [K, ..., 1]
        ends = np.stack([c.ode_solution(y, stop, 0.0) for c in self.components])  # [K, ..., d]
        return np.sum(r * ends, axis=0)

    def sample(self, n: int, rng: np.random.Generator) -> F64:
        """n draws of x0, shape [n, d]: a component k ~ w, then x0 ~ N(μ_k, Σ_k)."""
        k = rng.choice(len(self.weights), size=n, p=self.weights)
        out = np.empty((n, self.dim))
        for j, comp in enumerate(self.components):
            rows = np.flatnonzero(k == j)
            out[rows] = comp.sample(rows.size, rng)
        return out
