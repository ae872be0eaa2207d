"""DPM-Solver++ multistep samplers (Lu et al. 2022, "DPM-Solver++"), data prediction, in σ form.

Notation. With y = x0 + σ·ε the VP quantities are α = 1/√(1+σ²), σ_VP = σ·α, so the
half-log-SNR is λ = log(α/σ_VP) = −log σ and a step σ → σ' has h = λ' − λ = log(σ/σ').
Divided by α', the exact solution of the probability-flow ODE for the data prediction D
(DPM-Solver++ eq. 8–9), with D expanded in λ around the current level, is

    y' = e^{−h} y + Σ_k h^{k+1} φ_{k+1}(−h) D^{(k)}(λ),     e^{−h} = σ'/σ,

with φ_1(z) = (e^z − 1)/z, φ_{k+1}(z) = (φ_k(z) − 1/k!)/z. A multistep method estimates the
λ-derivatives D^{(k)} from the denoised values of earlier steps:

    order 1, DPM-Solver++(1) = DDIM:  y' = (σ'/σ) y + hφ_1 · D_0            (hφ_1(−h) = 1 − σ'/σ)
    order 2, DPM-Solver++(2M), Alg. 2: y' = (σ'/σ) y + hφ_1 · (D_0 + (D_0 − D_1)/(2 r_0))
    order 3, DPM-Solver++(3M):         y' = (σ'/σ) y + h (φ_1 D_0 + φ_2 Δ1 + φ_3 Δ2)

where D_j is the denoised value j steps back, h_j the λ-step that ended there, r_j = h_j/h,
Δ1 ≈ h D' and Δ2 ≈ h² D'' (divided differences; see :func:`dpmpp_weights`). Every update is a
weighted sum y' = (σ'/σ) y + Σ_j w_j D_j with float64 weights summing to 1 − σ'/σ.

The step into σ' = 0 is always first order: there h = ∞ and every formula's limit is
y' = D_0 (no log 0 is taken).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from diffkit.samplers.common import check_flag, denoise, float32_state, report, sigma_levels
from diffkit.samplers.contract import Callback, Denoiser, Generator

# diffusers' rule for `lower_order_final`: below this many steps the last steps drop order.
LOWER_ORDER_FINAL_BELOW = 15


def phi(k: int, z: float) -> float:
    """φ_k(z) = Σ_{j≥0} z^j/(j+k)! of exponential integrators (φ_0 = e^z), in float64.

    The recursion φ_{k+1}(z) = (φ_k(z) − 1/k!)/z cancels catastrophically for small |z|, so
    there the Taylor series is summed instead (|z| < 1: 30 terms reach float64 round-off).
    """
    if abs(z) >= 1.0:
        value = math.exp(z)
        for j in range(k):
            value = (value - 1.0 / math.factorial(j)) / z
        return value
    total, term = 0.0, 1.0 / math.factorial(k)  # term_j = z^j/(j+k)!
    for j in range(30):
        total += term
        term *= z / (j + k + 1)
    return total


def dpmpp_weights(order: int, h: float, h_back: Sequence[float], *, taylor: bool = True) -> list[float]:
    """Weights w_j on D_j (j steps back) of one DPM-Solver++ multistep update, σ form.

    Args:
        order: 1, 2 or 3 (needs ``order − 1`` entries of ``h_back``).
        h: this step in λ, log(σ/σ') > 0.
        h_back: earlier λ-steps, newest first: h_back[0] ended at the current σ.
        taylor: order 3 only. True: Δ2 = 2(D1_0 − D1_1)/(r_0 + r_1) ≈ h²D'', the Taylor term,
            so the method is third order. False: diffusers'/k-diffusion's Δ2, half of that,
            which leaves an O(h³) local error (the method is then second order).

    Returns [w_0, …, w_{order−1}] with Σ w_j = hφ_1(−h) = 1 − σ'/σ.
    """
    c1 = -math.expm1(-h)  # hφ_1(−h) = 1 − σ'/σ
    if order == 1:
        # DPM-Solver++(1): y' = (σ'/σ) y + (1 − σ'/σ) D_0
        return [c1]
    r0 = h_back[0] / h
    if order == 2:
        # DPM-Solver++(2M) (Alg. 2, midpoint form): D_0 + (D_0 − D_1)/(2 r_0)
        half = 0.5 / r0
        return [c1 * (1 + half), -c1 * half]
    # DPM-Solver++(3M): D1_0 = (D_0 − D_1)/r_0, D1_1 = (D_1 − D_2)/r_1 (≈ h D' at two midpoints)
    #   Δ1 = D1_0 + r_0/(r_0 + r_1)·(D1_0 − D1_1) ≈ h D',   Δ2 = 2(D1_0 − D1_1)/(r_0 + r_1) ≈ h² D''
    r1 = h_back[1] / h
    a, b = 1 / r0, 1 / r1
    g = r0 / (r0 + r1)
    q = (2.0 if taylor else 1.0) / (r0 + r1)
    p1, p2, p3 = h * phi(1, -h), h * phi(2, -h), h * phi(3, -h)
    # y' = (σ'/σ) y + hφ_1 D_0 + hφ_2 Δ1 + hφ_3 Δ2, collected per D_j
    w0 = p1 + p2 * (1 + g) * a + p3 * q * a
    w1 = -p2 * ((1 + g) * a + g * b) - p3 * q * (a + b)
    w2 = p2 * g * b + p3 * q * b
    return [w0, w1, w2]


def advance(x: torch.Tensor, ratio: float, weights: Sequence[float], values: Sequence[torch.Tensor]) -> torch.Tensor:
    """y' = (σ'/σ) y + Σ_j w_j D_j (``values`` may be longer than ``weights``).

    The order of the sums matters for a float16/bfloat16 y: the D-terms are summed first;
    a short step (σ'/σ ≥ 1/2, y' close to y) is then taken as y + [(σ'/σ − 1) y + Σ w_j D_j],
    so y is rounded once per step instead of once per term (over 1000 float16 steps: 3e-2
    instead of 4e-1 off the float64 result); a long step adds the already small (σ'/σ) y.
    """
    combined = weights[0] * values[0]
    for w, value in zip(weights[1:], values[1:]):
        combined = combined + w * value
    if ratio >= 0.5:
        return x + ((ratio - 1.0) * x + combined)  # short step: round y once, by its change
    return ratio * x + combined  # long step: (σ'/σ) y is small next to y


def _dpmpp_multistep(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor | Sequence[float], *,
    max_order: int, lower_order_final: bool, taylor: bool, cond: Any, callback: Callback | None,
) -> torch.Tensor:
    """The DPM-Solver++ multistep loop shared by :func:`dpmpp_2m` and :func:`dpmpp_3m`."""
    levels = sigma_levels(sigmas)  # float64 Python floats, read once
    steps = len(levels) - 1
    # multistep history, local to this call: D at earlier levels, newest first, each [B, ...]
    history: list[torch.Tensor] = []
    h_back: list[float] = []  # the λ-steps that ended at those levels, newest first
    for i in range(steps):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = denoise(denoiser, x, sigma, cond)  # D_0 = D(y, σ), [B, ...]
        if sigma_next == 0:
            # last step: DPM-Solver++(1) into σ' = 0, whose limit σ'/σ → 0 is y' = D_0
            x = denoised
            h = math.inf
        else:
            h = math.log(sigma / sigma_next)
            # warm-up: order k needs k − 1 earlier values of D
            order = min(max_order, i + 1)
            if lower_order_final and steps < LOWER_ORDER_FINAL_BELOW and i == steps - 2:
                order = min(order, 2)  # diffusers: second-to-last step at most second order
            # y' = (σ'/σ) y + Σ_j w_j D_j over D_0 and the order − 1 newest earlier values
            weights = dpmpp_weights(order, h, h_back, taylor=taylor)
            x = advance(x, sigma_next / sigma, weights, [denoised, *history])
        report(callback, x, i, sigma, denoised)
        # keep what the next step can use: max_order − 1 values of D and their λ-steps
        history = [denoised, *history][: max_order - 1]
        h_back = [h, *h_back][: max_order - 1]
    return x


def check_dpmpp_3m(lower_order_final: bool, match_dpm_solver_code: bool) -> None:
    """:func:`dpmpp_3m`'s options: two flags."""
    check_flag("lower_order_final", lower_order_final)
    check_flag("match_dpm_solver_code", match_dpm_solver_code)


@float32_state
def dpmpp_2m(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    cond: Any = None, generator: Generator = None, callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): second-order multistep, one D per step.

    The first step is DPM-Solver++(1) (no history yet), and so is the last step into σ = 0,
    which returns that step's D. Deterministic; ``generator`` is accepted and unused.

    """
    return _dpmpp_multistep(
        denoiser, x, sigmas, max_order=2, lower_order_final=False, taylor=True, cond=cond, callback=callback
    )


@float32_state
def dpmpp_3m(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    cond: Any = None, generator: Generator = None, callback: Callback | None = None,
    lower_order_final: bool = True, match_dpm_solver_code: bool = False,
) -> torch.Tensor:
    """DPM-Solver++(3M): third-order multistep DPM-Solver++ (Lu et al. 2022), one D per step.

    Orders per step: 1, 2, then 3; the last step into σ = 0 is first order; with
    ``lower_order_final`` and fewer than 15 steps the second-to-last step is second order.
    Deterministic; ``generator`` is accepted and unused.

    Args:
        lower_order_final: with fewer than 15 steps, take the second-to-last step at second
            order (diffusers' rule). The last step, into σ = 0, is first order either way.
        match_dpm_solver_code: weight the second difference Δ2 as DPM-Solver's reference code
            does (and diffusers and k-diffusion after it): half its Taylor value. Reproduces
            their samples exactly, but the method is then only second order as the step count
            grows (see docs/samplers.md).
    """
    check_dpmpp_3m(lower_order_final, match_dpm_solver_code)
    return _dpmpp_multistep(
        denoiser, x, sigmas, max_order=3, lower_order_final=lower_order_final, taylor=not match_dpm_solver_code,
        cond=cond, callback=callback,
    )
