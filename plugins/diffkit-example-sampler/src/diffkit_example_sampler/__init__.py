"""A diffkit plugin registering Heun's sampler (Karras et al. 2022, "Elucidating the
Design Space of Diffusion-Based Generative Models", Alg. 2 with S_churn = 0).

σ form: y = x0 + σ·ε and the probability-flow ODE dy/dσ = (y − D(y, σ))/σ. One step
σ → σ' takes an Euler predictor and, unless σ' = 0, the trapezoidal corrector:

    d  = (y − D(y, σ))/σ,        ỹ = y + (σ' − σ)·d
    d' = (ỹ − D(ỹ, σ'))/σ',      y' = y + (σ' − σ)·(d + d')/2
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

import diffkit


def heun(denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Any = None, generator=None, callback=None) -> torch.Tensor:
    """Heun's second-order sampler (Karras et al. 2022, Alg. 2, deterministic)."""
    levels = sigmas.detach().to("cpu", torch.float64).tolist()  # read once: no sync per step
    ones = x.new_ones(x.shape[0])
    for i in range(len(levels) - 1):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = denoiser(x, sigma * ones, cond)
        d = (x - denoised) / sigma
        x_euler = x + (sigma_next - sigma) * d
        if sigma_next == 0:  # the corrector would divide by σ' = 0: finish with Euler
            x = x_euler
        else:
            d_next = (x_euler - denoiser(x_euler, sigma_next * ones, cond)) / sigma_next
            x = x + (sigma_next - sigma) * (d + d_next) / 2
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
    return x


def heun_numpy(denoiser, x: np.ndarray, sigmas: np.ndarray, *, cond: Any = None, **_: Any) -> np.ndarray:
    """The same method in float64 numpy: the reference twin ``diffkit check`` compares against."""
    x = np.asarray(x, dtype=np.float64)
    ones = np.ones(x.shape[0])
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        d = (x - denoiser(x, sigma * ones, cond)) / sigma
        x_euler = x + (sigma_next - sigma) * d
        if sigma_next == 0:
            x = x_euler
        else:
            d_next = (x_euler - denoiser(x_euler, sigma_next * ones, cond)) / sigma_next
            x = x + (sigma_next - sigma) * (d + d_next) / 2
    return x


@diffkit.hookimpl
def diffkit_register_samplers(samplers) -> None:
    samplers.add("example_heun", heun, reference=heun_numpy, order=2, paper="Karras et al. 2022, Alg. 2")
