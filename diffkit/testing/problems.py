"""The analytic problems samplers are measured on: data sets, the path they are seen through, exact answers.

Two data sets in d = 4, shown to samplers as images of shape [B, 1, 2, 2]:

``gaussian``  N(μ, Σ) with Σ = Q diag(1.5, 0.6, 0.1, 0.01) Qᵀ: anisotropic (condition
              number 150) and correlated (Q a fixed rotation mixing every axis).
``mixture``   three components: a broad one with covariance 0.3·Σ and two tight ones
              (isotropic std 0.05, and diagonal stds 0.1/0.03/0.05/0.08), means 1–2 apart,
              so the posterior mean switches sharply between modes at small σ.

Each is seen through two probability paths (:class:`Problem`); both are the same σ-form ODE
dy/dσ = (y − D(y, σ))/σ, they differ in where it starts, on which grid and through which denoiser:

``sigma``     (``gaussian``, ``mixture``): EDM's start σ = 80 on Karras ρ = 7 grids, the exact
              σ-form denoiser D(y, σ) = E[x0 | y] called directly.
``flow``      (``flow_gaussian``, ``flow_mixture``): a flow-matching model (SD3, Flux). The start
              is t = 1, pure noise (σ = :data:`~diffkit.schedules.FLOW_SIGMA_MAX` = 2³⁰), the grid
              is uniform in t with SD3's shift 3 (:func:`~diffkit.testing.grids.flow_sigmas`), and
              the sampler calls a :class:`~diffkit.FlowDenoiser` around the exact velocity network
              v(x_t, t·T) = E[ε − x0 | x_t], so samplers that read the denoiser's ``path`` (``heun``)
              take their flow-time steps. The first step spans log σ from 20.8 down to ≈ 3.8.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import attrs
import numpy as np
import torch

from diffkit.sampling.denoisers import FlowDenoiser
from diffkit.schedules.flow import FLOW_SIGMA_MAX, FlowSchedule
from diffkit.testing.denoisers import RecordingDenoiser, exact_velocity, torch_from_numpy
from diffkit.testing.grids import FLOW_SHIFT, SIGMA_MAX, convergence_sigmas, flow_sigmas, moment_sigmas
from diffkit_reference.analytic import GaussianData, GaussianMixtureData

POINT_SHAPE: tuple[int, ...] = (1, 2, 2)  # d = 4 as a 1-channel 2×2 image
DIM = 4
DATA_NAMES: tuple[str, ...] = ("gaussian", "mixture")
PATHS: tuple[str, ...] = ("sigma", "flow")

OBSERVABLE_ORDER: dict[str, float] = {"sigma": 2.0, "flow": 1.5}
"""The highest convergence order each path's grids can show at 64–256 steps, by path.

σ path: the last step jumps from σ_min = 1/N to 0, a floor falling as N⁻² (caps at 2).
Flow path: uniform t does not refine in λ = −log σ at either end — near t = 1 (σ ≈ 3N/i) and
near t = 0 (σ ≈ 3k/N) the k-th step spans log(1 + 1/k) whatever N is — so the error of a
second-order method falls as N⁻² only asymptotically, with log N factors, and slowly: measured
at 64/128/256 steps, ``dpmpp_3m`` shows 1.65 (with ``d2_weight="taylor"`` 1.42, reaching 1.8 at
256–1024 steps), ``dpmpp_2m`` 1.60, ``heun`` in flow time 1.76, ``unipc`` 2.07
(docs/samplers.md). A cap of 1.5 still
requires 1.2 of every declared second-order method, far above the ≈ 0 of a biased step.
"""

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
    """The data set called ``name`` (one of :data:`DATA_NAMES`)."""
    if name == "gaussian":
        return GaussianData([0.5, -0.3, 0.2, 0.1], _anisotropic_cov())
    if name == "mixture":
        return GaussianMixtureData(
            [0.5, 0.3, 0.2],
            [[-1.0, 0.5, 0.0, 0.3], [1.0, 1.0, -0.5, 0.0], [0.8, -1.0, 0.6, -0.4]],
            [0.3 * _anisotropic_cov(), 0.05**2, [0.1**2, 0.03**2, 0.05**2, 0.08**2]],
        )
    raise KeyError(f"unknown analytic data set {name!r}; known: {', '.join(DATA_NAMES)}")


def scale(name: str) -> float:
    """The data's RMS distance from its mean, √tr Cov[x0]; errors are reported relative to it."""
    return float(np.sqrt(np.trace(data(name).covariance)))


@functools.cache
def noisy_starts(name: str, n: int, seed: int = 0, sigma_max: float = SIGMA_MAX) -> np.ndarray:
    """n exact draws of the noisy marginal at σ_max: y = x0 + σ_max·ε, float64 [n, d]."""
    rng = np.random.default_rng(seed)
    x0 = data(name).sample(n, rng)
    return x0 + sigma_max * rng.standard_normal(x0.shape)


RK4_STEPS_PER_UNIT = 50
"""RK4 steps per unit of log σ in the mixture's reference solve (error ≈ 3e-8 of the data's scale)."""


@functools.cache
def exact_endpoints(name: str, n: int, seed: int = 0, sigma_max: float = SIGMA_MAX) -> np.ndarray:
    """Where the probability-flow ODE takes :func:`noisy_starts` at σ = 0, float64 [n, d].

    Closed form for the Gaussian; RK4 in log σ for the mixture, 50 steps per unit of log σ down
    to its stopping σ ≈ 1e-7 (1000 steps from σ = 80, 1800 from 2³⁰; halving the step changes
    the endpoints by < 1e-7 of the data's scale).
    """
    dataset, starts = data(name), noisy_starts(name, n, seed, sigma_max)
    if isinstance(dataset, GaussianData):
        return dataset.ode_solution(starts, sigma_max, 0.0)
    steps = int(np.ceil(RK4_STEPS_PER_UNIT * (np.log(sigma_max) - np.log(1e-7))))
    return dataset.ode_solution(starts, sigma_max, 0.0, steps=steps)


@attrs.frozen
class Problem:
    """A data set seen through a probability path: where samplers start, their grids, their denoiser.

    Attributes:
        data_name: a key of :func:`data` (``"gaussian"``, ``"mixture"``).
        path: ``"sigma"`` (start σ = 80, Karras grids, the σ-form denoiser) or ``"flow"`` (start at
            t = 1, shifted uniform-t grids, a FlowDenoiser around the exact velocity).
    """

    data_name: str = attrs.field(validator=attrs.validators.in_(DATA_NAMES))
    path: str = attrs.field(validator=attrs.validators.in_(PATHS))

    @property
    def name(self) -> str:
        """``gaussian``, ``mixture``, ``flow_gaussian``, ``flow_mixture``: how check groups name it."""
        return self.data_name if self.path == "sigma" else f"{self.path}_{self.data_name}"

    @property
    def observable_order(self) -> float:
        """The highest convergence order this problem's grids can show (:data:`OBSERVABLE_ORDER`)."""
        return OBSERVABLE_ORDER[self.path]

    @property
    def sigma_max(self) -> float:
        """The start of every grid: 80, or 2³⁰ for t = 1 on the flow path."""
        return SIGMA_MAX if self.path == "sigma" else FLOW_SIGMA_MAX

    def convergence_grid(self, steps: int) -> torch.Tensor:
        """The convergence check's grid: last nonzero σ ≈ c/N, so the final step's floor falls as N⁻²."""
        return convergence_sigmas(steps) if self.path == "sigma" else flow_sigmas(steps)

    def moment_grid(self, steps: int) -> torch.Tensor:
        """The moment check's grid for stochastic samplers."""
        return moment_sigmas(steps) if self.path == "sigma" else flow_sigmas(steps)

    def starts(self, n: int, seed: int = 0) -> np.ndarray:
        """n exact draws of the noisy marginal at :attr:`sigma_max`, float64 [n, d]."""
        return noisy_starts(self.data_name, n, seed, self.sigma_max)

    def endpoints(self, n: int, seed: int = 0) -> np.ndarray:
        """The exact ODE endpoints of :meth:`starts`, float64 [n, d]."""
        return exact_endpoints(self.data_name, n, seed, self.sigma_max)

    def denoiser(self) -> RecordingDenoiser:
        """The exact denoiser of this problem, recording how the sampler calls it."""
        dataset = data(self.data_name)
        if self.path == "sigma":
            return RecordingDenoiser(torch_from_numpy(dataset))
        schedule = FlowSchedule(shift=FLOW_SHIFT)
        flow: Callable[..., torch.Tensor] = FlowDenoiser(exact_velocity(dataset, schedule), schedule)
        return RecordingDenoiser(lambda x, sigma: flow(x, sigma), path=FlowDenoiser.path)


PROBLEMS: dict[str, Problem] = {p.name: p for p in (Problem(d, path) for path in PATHS for d in DATA_NAMES)}
"""Every accuracy problem by name: ``gaussian``, ``mixture``, ``flow_gaussian``, ``flow_mixture``."""
NAMES: tuple[str, ...] = tuple(PROBLEMS)


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
