"""Linear multistep (Adams–Bashforth on a variable σ grid), as k-diffusion's ``sample_lms``.

σ form (x = x0 + σ·ε, x of shape [B, ...]), dy/dσ = d(y, σ) = (y − D(y, σ))/σ. Step i keeps
the last k = min(i + 1, order) slopes d_i, d_{i−1}, …, d_{i−k+1} (at σ_i, σ_{i−1}, …), replaces
d(σ) on [σ_i, σ_{i+1}] by the polynomial p through them and integrates it exactly:

    y_{i+1} = y_i + Σ_j b_j d_{i−j},   b_j = ∫_{σ_i}^{σ_{i+1}} ℓ_j(s) ds,
    ℓ_j(s) = Π_{m≠j} (s − σ_{i−m}) / (σ_{i−j} − σ_{i−m})     (Lagrange basis, j, m < k)

The history starts empty, so the first steps are of order 1, 2, … up to ``order``. The
last step into σ = 0 needs no special case: p only uses σ > 0 and is integrated to 0.
One denoiser call per step.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from numpy.polynomial import Polynomial

from diffkit.errors import ConfigError
from diffkit.samplers.common import denoise, float32_state, report, sigma_levels, to_d
from diffkit.samplers.contract import Callback, Denoiser, Generator
from diffkit.validators import is_integer


def check_order(order: Any) -> int:
    """The LMS order must be an integer ≥ 1."""
    if not is_integer(order) or order < 1:
        raise ConfigError(f"order must be an integer ≥ 1 (the number of past slopes; 4 is usual), got {order!r}")
    return int(order)


def lms_coefficients(levels: list[float], i: int, k: int) -> list[float]:
    """b_0 … b_{k−1} of the step σ_i → σ_{i+1} for the slopes at σ_i, σ_{i−1}, …, σ_{i−k+1}.

    Exact (numpy.polynomial in float64) in the scaled variable τ = (s − σ_i)/h, h = σ_{i+1} − σ_i,
    which maps the step onto [0, 1] and the past nodes onto τ_j = (σ_{i−j} − σ_i)/h ≤ 0, so that
    b_j = h·∫_0^1 ℓ_j(τ) dτ stays well conditioned whatever the scale of σ.
    """
    h = levels[i + 1] - levels[i]
    nodes = [(levels[i - j] - levels[i]) / h for j in range(k)]  # τ_0 = 0, τ_1 < 0, …
    coeffs = []
    for j in range(k):
        others = nodes[:j] + nodes[j + 1 :]
        # ℓ_j(τ) = Π_{m≠j} (τ − τ_m)/(τ_j − τ_m): 1 at τ_j, 0 at the other nodes
        numerator = Polynomial.fromroots(others) if others else Polynomial([1.0])
        basis = numerator / math.prod(nodes[j] - t for t in others)
        integral = basis.integ()  # antiderivative, zero at τ = 0
        coeffs.append(h * float(integral(1.0)))
    return coeffs


@float32_state
def lms(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    cond: Any = None, generator: Generator = None, callback: Callback | None = None,
    order: int = 4,
) -> torch.Tensor:
    """Linear multistep (Adams–Bashforth) on the σ grid with exact coefficients, as k-diffusion's sample_lms.

    Deterministic; ``order`` past slopes per step (fewer during the first ``order − 1`` steps).

    Args:
        generator: unused (the method is deterministic); accepted for the common contract.
        order: how many past slopes to combine (≥ 1; 1 is Euler), the method's order; the
            first ``order − 1`` steps use fewer.
    """
    order = check_order(order)
    levels = sigma_levels(sigmas)  # σ_0 > … > σ_N = 0 as Python floats: no device sync per step
    slopes: list[torch.Tensor] = []  # d_i, d_{i−1}, … newest first, at most `order`, each [B, ...]
    for i, sigma in enumerate(levels[:-1]):
        denoised = denoise(denoiser, x, sigma, cond)  # D(y_i, σ_i), [B, ...]
        report(callback, x, i, sigma, denoised)
        slopes = [to_d(x, sigma, denoised), *slopes[: order - 1]]
        # linear multistep: y' = y + Σ_j b_j d_{i−j}, b_j from the Lagrange basis on [σ_i, σ_{i+1}];
        # the j = 0 term is folded in as D + (1 + b_0/σ_i)(y − D): with one slope that is the
        # Euler step, and y never cancels against y − D on the final step (x0 ≪ y at large σ)
        coeffs = lms_coefficients(levels, i, len(slopes))
        x = torch.lerp(denoised, x, 1.0 + coeffs[0] / sigma)
        for coeff, slope in zip(coeffs[1:], slopes[1:]):
            x = x + coeff * slope
    return x
