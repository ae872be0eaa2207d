"""Denoisers the kit drives samplers with, each recording how the sampler called it.

The denoiser call contract (``diffkit.hookspecs``): ``denoiser(x, sigma, cond)`` with x of
shape [B, ...] and sigma a floating tensor of shape [B] on x's device; it returns the x0
estimate shaped like x. :class:`RecordingDenoiser` notes every departure from that contract
(and still answers, so one check can report all problems at once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch


class PosteriorMean(Protocol):
    """Anything with ``denoise(y [n, d], sigma [n]) -> E[x0 | y] [n, d]`` in float64 numpy."""

    def denoise(self, y: np.ndarray, sigma: np.ndarray) -> np.ndarray: ...


def call_problem(x: Any, sigma: Any) -> str | None:
    """What is wrong with one denoiser call ``(x, sigma)``, or None if nothing."""
    if not isinstance(x, torch.Tensor):
        return f"x passed as {type(x).__name__}, not a tensor"
    if not isinstance(sigma, torch.Tensor):
        return f"sigma passed as {type(sigma).__name__}, not a tensor of shape [batch]"
    if tuple(sigma.shape) != (x.shape[0],):
        return f"sigma of shape {list(sigma.shape)} for a batch of {x.shape[0]} (need [{x.shape[0]}])"
    if not sigma.is_floating_point():
        return f"sigma of dtype {sigma.dtype} (need a floating dtype)"
    if sigma.device != x.device:
        return f"sigma on {sigma.device} but x on {x.device}"
    return None


class RecordingDenoiser:
    """Wraps ``fn(x, sigma[B]) -> x0`` and records contract problems and input dtypes.

    Attributes:
        calls: how many times the sampler called it.
        problems: distinct descriptions of contract violations, in order of appearance.
        dtypes: the dtypes of x it received.
        path: the probability path the denoiser reports (``"flow"`` for a flow-matching model,
            as :class:`~diffkit.FlowDenoiser` does; None for the σ form), read by samplers
            such as ``heun`` that step in the path's own time.
    """

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], path: str | None = None) -> None:
        self.fn = fn
        self.path = path
        self.calls = 0
        self.problems: list[str] = []
        self.dtypes: set[torch.dtype] = set()

    def __call__(self, x: torch.Tensor, sigma: Any, cond: Any = None) -> torch.Tensor:
        self.calls += 1
        problem = call_problem(x, sigma)
        if problem is not None and problem not in self.problems:
            self.problems.append(problem)
        self.dtypes.add(x.dtype)
        sigma = torch.as_tensor(sigma, device=x.device)
        if sigma.numel() == 1:  # tolerate a scalar σ so the other checks can still run
            sigma = sigma.reshape(1).expand(x.shape[0])
        return self.fn(x, sigma.reshape(x.shape[0]))


def isotropic_gaussian(mean: float = 0.0, std: float = 0.5) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The exact denoiser of x0 ~ N(mean, std²·I) in torch, any shape/dtype/device.

    D(x, σ) = mean + s²/(s² + σ²)·(x − mean), σ broadcast from [B] to [B, 1, 1, …].
    """
    var = std * std

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        s = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))  # [B, 1, ..., 1]
        return mean + var / (var + s * s) * (x - mean)

    return denoise


def torch_from_numpy(data: PosteriorMean) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A torch denoiser computing ``data.denoise`` in float64 numpy; x [B, ...] is flattened to [B, d]."""

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        y = x.detach().to("cpu", torch.float64).reshape(x.shape[0], -1).numpy()  # [B, d]
        s = sigma.detach().to("cpu", torch.float64).numpy()  # [B]
        out = torch.from_numpy(np.ascontiguousarray(data.denoise(y, s)))
        return out.reshape(x.shape).to(device=x.device, dtype=x.dtype)

    return denoise


def exact_velocity(data: PosteriorMean, schedule: Any) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The exact flow-matching velocity network ``v(x_t [B, ...], t·T [B])`` of analytic data, float64 numpy.

    On the path x_t = (1 − t)·x0 + t·ε the best velocity is v = E[ε − x0 | x_t] = (x_t − x̂0)/t with
    x̂0 = D(y, σ) the σ-form posterior mean at y = x_t/(1 − t) = (1 + σ)·x_t, σ = t/(1 − t)
    (``schedule``: a :class:`~diffkit.schedules.flow.FlowSchedule`, giving T and t = 1 as
    FLOW_SIGMA_MAX). :class:`~diffkit.FlowDenoiser` turns it back into x̂0 = x_t − t·v.
    """
    posterior = torch_from_numpy(data)

    def velocity(x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        sigma = schedule.t_to_sigma(timestep.detach().cpu())  # float64 [B]
        per_sample = sigma.reshape(-1, *([1] * (x_t.ndim - 1)))  # [B, 1, ..., 1]
        x = x_t.detach().cpu().to(torch.float64)
        t = per_sample / (1 + per_sample)
        v = (x - posterior((1 + per_sample) * x, sigma)) / t.clamp(min=1e-300)  # σ = 0: x̂0 = x_t whatever v is
        return v.to(device=x_t.device, dtype=x_t.dtype)

    return velocity


def numpy_denoiser(data: PosteriorMean) -> Callable[[np.ndarray, np.ndarray, Any], np.ndarray]:
    """The reference-twin contract ``denoiser_np(y [B, ...], sigma [B], cond) -> x0 [B, ...]``."""

    def denoise(y: np.ndarray, sigma: np.ndarray, cond: Any = None) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64)
        s = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (y.shape[0],))
        return data.denoise(y.reshape(y.shape[0], -1), s).reshape(y.shape)

    return denoise
