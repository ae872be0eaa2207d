"""A diffkit plugin registering Heun's sampler (Karras et al. 2022, "Elucidating the
Design Space of Diffusion-Based Generative Models", Alg. 2 with S_churn = 0).

σ form: y = x0 + σ·ε and the probability-flow ODE dy/dσ = (y − D(y, σ))/σ. One step
σ → σ' takes an Euler predictor and, unless σ' = 0, the trapezoidal corrector:

    d  = (y − D(y, σ))/σ,        ỹ = y + (σ' − σ)·d
    d' = (ỹ − D(ỹ, σ'))/σ',      y' = y + (σ' − σ)·(d + d')/2

On a flow-matching model (a denoiser whose ``path`` is ``"flow"``, e.g. ``diffkit.FlowDenoiser``)
sampling starts at t = 1, σ = ∞ (in practice 2³⁰), where the σ trapezoid's first step is
useless: its correction grows with σ. There the trapezoid is taken in flow time t = σ/(1 + σ)
on x_t = y/(1 + σ), whose slope is the velocity v = (x_t − D)/t (diffusers'
FlowMatchHeunDiscreteScheduler); the Euler predictor is the same step in either variable:

    v  = (x_t − D(y, σ))/t,      ỹ = as above
    v' = (x̃_t − D(ỹ, σ'))/t',    y' = (1 + σ')·(x_t + (t' − t)·(v + v')/2)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

import diffkit


def heun_step(denoiser, x, sigma: float, sigma_next: float, denoised, ones, cond: Any, flow: bool):
    """One step σ → σ' from y = ``x`` with D(y, σ) = ``denoised``; torch tensors or numpy arrays alike."""
    x_euler = denoised + (sigma_next / sigma) * (x - denoised)  # y + (σ' − σ)·d, exact at σ' = 0
    if sigma_next == 0:  # the corrector would divide by σ' = 0: finish with Euler
        return x_euler
    denoised_next = denoiser(x_euler, sigma_next * ones, cond)
    if not flow:
        d, d_next = (x - denoised) / sigma, (x_euler - denoised_next) / sigma_next
        return x + (sigma_next - sigma) * (d + d_next) / 2
    t, t_next = sigma / (1 + sigma), sigma_next / (1 + sigma_next)
    x_t, x_t_euler = x / (1 + sigma), x_euler / (1 + sigma_next)
    v, v_next = (x_t - denoised) / t, (x_t_euler - denoised_next) / t_next
    return (1 + sigma_next) * (x_t + (t_next - t) * (v + v_next) / 2)


def heun(denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Any = None, generator=None, callback=None) -> torch.Tensor:
    """Heun's second-order sampler (Karras et al. 2022, Alg. 2, deterministic); in flow time on a flow model."""
    levels = sigmas.detach().to("cpu", torch.float64).tolist()  # read once: no sync per step
    ones = x.new_ones(x.shape[0])
    flow = getattr(denoiser, "path", None) == "flow"
    for i in range(len(levels) - 1):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = denoiser(x, sigma * ones, cond)
        if callback is not None:  # as k-diffusion: the state entering step i, before the update
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        x = heun_step(denoiser, x, sigma, sigma_next, denoised, ones, cond, flow)
    return x


def heun_numpy(denoiser, x: np.ndarray, sigmas: np.ndarray, *, cond: Any = None, **_: Any) -> np.ndarray:
    """The same method in float64 numpy: the reference twin ``diffkit check`` compares against."""
    x = np.asarray(x, dtype=np.float64)
    ones = np.ones(x.shape[0])
    flow = getattr(denoiser, "path", None) == "flow"
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        x = heun_step(denoiser, x, float(sigma), float(sigma_next), denoiser(x, sigma * ones, cond), ones, cond, flow)
    return x


@diffkit.hookimpl
def diffkit_register_samplers(samplers) -> None:
    samplers.add("example_heun", heun, reference=heun_numpy, order=2, paper="Karras et al. 2022, Alg. 2")
