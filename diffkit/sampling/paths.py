"""The σ form and the noise paths a network sees, and how a sampler's start is made from noise.

diffkit's samplers integrate the σ form y = x0 + σ·ε (Karras et al. 2022, eq. 1 with s(t) = 1).
A network trained on a noise path sees another scaling of the same point:

    VP path     x_t = α·x0 + σ_t·ε   with α = 1/√(1 + σ²):   x_t = y/√(1 + σ²)
    flow path   x_t = (1 − t)·x0 + t·ε with t = σ/(1 + σ):   x_t = y/(1 + σ)

so one σ names one point on every path. The start of sampling, y_0 at σ_0, is made from unit
noise z in one of two ways (``START_NOISE``):

    ``"sigma"``  y_0 = σ_0·z           k-diffusion's and diffkit's start (the x0 part is dropped;
                                       negligible when σ_0 is large)
    ``"path"``   x_T = z on the path:  y_0 = z·√(1 + σ_0²) (VP) or z·(1 + σ_0) (flow) — diffusers'
                                       ``latents=`` for DDIM, DPM-Solver, UniPC and FlowMatch
                                       schedulers (``init_noise_sigma`` = 1, or √(1 + σ_0²) in
                                       the σ form of the "leading" Euler family)
"""

from __future__ import annotations

import math
from typing import Any

import torch

from diffkit.errors import ConfigError, ShapeError, UnknownNameError

PATH_FORMS = ("vp", "flow")
START_NOISE = ("sigma", "path")


def to_path_form(y: torch.Tensor, sigma: float, form: str) -> torch.Tensor:
    """σ-form y → the sample of a path at σ: x_t = y/√(1 + σ²) (``"vp"``), y/(1 + σ) (``"flow"``), y (any other)."""
    if form == "vp":
        return y / math.sqrt(1.0 + sigma * sigma)
    if form == "flow":
        return y / (1.0 + sigma)
    return y


def from_path_form(x_t: torch.Tensor, sigma: float, form: str) -> torch.Tensor:
    """The inverse of :func:`to_path_form`: y = x_t·√(1 + σ²), x_t·(1 + σ) or x_t."""
    if form == "vp":
        return x_t * math.sqrt(1.0 + sigma * sigma)
    if form == "flow":
        return x_t * (1.0 + sigma)
    return x_t


def path_form_of(schedule: Any) -> str:
    """``"flow"`` for a flow-matching schedule, ``"vp"`` for a VP table."""
    from diffkit.schedules.flow import FlowSchedule

    return "flow" if isinstance(schedule, FlowSchedule) else "vp"


def check_noise(
    noise: Any, shape: tuple[int, ...], *, what: str = "noise", meaning: str = "unit Gaussian noise"
) -> torch.Tensor:
    """``noise`` as given for a start: a finite floating tensor of exactly ``shape``.

    ``what`` and ``meaning`` name the argument in the errors (``init``: "clean samples x0").
    """
    if not isinstance(noise, torch.Tensor):
        raise ConfigError(f"{what} must be a tensor of shape {list(shape)} ({meaning}), got {type(noise).__name__}")
    if not noise.dtype.is_floating_point:
        raise ConfigError(f"{what} must be a floating-point tensor, got dtype {noise.dtype}")
    if tuple(noise.shape) != tuple(shape):
        raise ShapeError(f"{what} has shape {list(noise.shape)}; the samples need {list(shape)} (n, *sample_shape)")
    if not bool(torch.isfinite(noise).all()):
        raise ConfigError(f"{what} holds NaN or ±inf; pass finite {meaning}")
    return noise


def start_sample(z: torch.Tensor, sigma_0: float, start: str, form: str) -> torch.Tensor:
    """The sampler's first y_0 at σ_0 from unit noise z (module docstring): σ_0·z, or z read as x_T on the path."""
    if start == "sigma":
        return z * sigma_0
    if start == "path":
        return from_path_form(z, sigma_0, form)
    raise UnknownNameError("start_noise", start, START_NOISE)
