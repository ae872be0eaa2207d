"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework"), B(h) = bh2, σ form.

Data prediction (``predict_x0``), notation as in :mod:`diffkit.samplers.dpmpp_multistep`:
λ = −log σ, a step σ_s → σ_t has h = log(σ_s/σ_t), and D_0 = D(y_s, σ_s). Earlier values
D_k sit at σ_k = sigmas[i − k], with r_k = (λ_k − λ_s)/h = log(σ_s/σ_k)/h < 0.

UniP-p (predictor, eq. 9 with B(h) = e^{−h} − 1 = σ_t/σ_s − 1, "bh2"), divided by α_t:

    y_t = (σ_t/σ_s) y_s + (1 − σ_t/σ_s) · (D_0 + Σ_{k<p} ρ_k (D_k − D_0)/r_k)

UniC-p (corrector, eq. 11): once D_t = D(y_t, σ_t) is known — the next step's evaluation,
so correcting costs nothing — the step is re-taken from y_s with D_t in the sum:

    y_t^c = (σ_t/σ_s) y_s + (1 − σ_t/σ_s) · (D_0 + Σ_{k<p} ρ^c_k (D_k − D_0)/r_k + ρ^c_p (D_t − D_0))

The ρ solve the order conditions R ρ = b with R_{jk} = r_k^j (r_p = 1 for D_t) and
b_j = j!·φ_{j+1}(−h)/φ_1(−h) (= j!·ĥφ_{j+1}(ĥ)/B(h), ĥ = −h); UniP-p uses the first p − 1 rows and
columns. As in the authors' code and diffusers, UniP-2 takes ρ = 1/2 and UniC-1 ρ^c = 1/2.
The corrected y_t is the next predictor's start; D_t (from the uncorrected y_t) joins the
history. No corrector follows the final step, and the step into σ = 0 is UniP-1, which is
exactly y = D_0 there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from diffkit.errors import ConfigError
from diffkit.samplers.common import check_flag, denoise, float32_state, report, sigma_levels
from diffkit.samplers.contract import Callback, Denoiser, Generator
from diffkit.samplers.dpmpp_multistep import advance, phi
from diffkit.validators import is_integer

ORDERS = (1, 2, 3)


def check_unipc(order: int, lower_order_final: bool) -> None:
    """:func:`unipc`'s options: the order p (of UniP-p; UniC-p then has order p + 1) is 1, 2 or 3."""
    if not is_integer(order) or order not in ORDERS:
        raise ConfigError(f"order must be one of 1, 2 or 3, got {order!r}")
    check_flag("lower_order_final", lower_order_final)


def _solve(matrix: list[list[float]], rhs: list[float]) -> list[float]:
    """x with matrix·x = rhs for a small dense system (Gaussian elimination, partial pivoting)."""
    n = len(rhs)
    rows = [list(row) + [value] for row, value in zip(matrix, rhs)]  # augmented [n, n + 1]
    for col in range(n):
        pivot = max(range(col, n), key=lambda r: abs(rows[r][col]))
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(col + 1, n):
            factor = rows[r][col] / rows[col][col]
            rows[r] = [a - factor * b for a, b in zip(rows[r], rows[col])]
    solution = [0.0] * n
    for r in reversed(range(n)):
        known = sum(rows[r][c] * solution[c] for c in range(r + 1, n))
        solution[r] = (rows[r][n] - known) / rows[r][r]
    return solution


def unipc_weights(order: int, h: float, rks: Sequence[float]) -> tuple[list[float], list[float]]:
    """Weights of one UniPC-p step (bh2) on [D_0, D_1, …, D_{p−1}] (predictor) and on
    [D_0, …, D_{p−1}, D_t] (corrector), each summing to 1 − σ_t/σ_s.

    Args:
        order: p, 1 … 3.
        h: this step in λ, log(σ_s/σ_t) > 0.
        rks: r_k = log(σ_s/σ_k)/h for k = 1 … p − 1 (σ_k: k steps back).
    """
    c1 = -math.expm1(-h)  # 1 − σ_t/σ_s = −B(h)
    # b_j = j!·ĥφ_{j+1}(ĥ)/B(h), ĥ = −h, B(h) = e^ĥ − 1 = ĥφ_1(ĥ) (bh2), j = 1 … p
    b = [math.factorial(j) * phi(j + 1, -h) / phi(1, -h) for j in range(1, order + 1)]
    nodes = [*rks, 1.0]  # r_1 … r_{p−1}, and r_p = 1 for D_t
    # predictor: R[:p−1, :p−1] ρ = b[:p−1]
    if order == 1:
        rho_p: list[float] = []
    elif order == 2:
        rho_p = [0.5]
    else:
        rho_p = _solve([[r**j for r in rks] for j in range(order - 1)], b[: order - 1])
    # corrector: R ρ^c = b over all p nodes
    rho_c = [0.5] if order == 1 else _solve([[r**j for r in nodes] for j in range(order)], b)

    def collect(rho: list[float], r: list[float]) -> list[float]:
        # (1 − σ_t/σ_s)(D_0 + Σ ρ_k (D_k − D_0)/r_k), written per D
        per_value = [c1 * rho_k / r_k for rho_k, r_k in zip(rho, r)]
        return [c1 - sum(per_value), *per_value]

    return collect(rho_p, rks), collect(rho_c, nodes)


@float32_state
def unipc(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    cond: Any = None, generator: Generator = None, callback: Callback | None = None,
    order: int = 2, lower_order_final: bool = True,
) -> torch.Tensor:
    """UniPC (Zhao et al. 2023), bh2, data prediction: UniP-p predictor, UniC-p corrector.

    One D per step. Step i uses order min(p, i + 1) (warm-up), and with ``lower_order_final``
    at most N − i; the last step into σ = 0 is first order and is not corrected.
    Deterministic; ``generator`` is accepted and unused. The callback's ``x`` is the
    predicted (not yet corrected) next state, as diffusers' ``prev_sample``.

    Args:
        order: p of UniP-p (1, 2 or 3): the predictor uses p values of D, the corrector p + 1.
        lower_order_final: step i of N uses order at most N − i (diffusers' rule, at any N), so
            the last steps drop order; the step into σ = 0 is first order either way.
    """
    check_unipc(order, lower_order_final)
    levels = sigma_levels(sigmas)
    steps = len(levels) - 1
    history: list[torch.Tensor] = []  # D at earlier levels, newest first (D_0 after insertion)
    start = x  # y_s, where the last predictor started (the corrector re-takes that step)
    pending: tuple[float, list[float]] | None = None  # (σ_t/σ_s, corrector weights) of the last step
    for i in range(steps):
        sigma, sigma_next = levels[i], levels[i + 1]
        denoised = denoise(denoiser, x, sigma, cond)  # D_t of the last step = D_0 of this one
        report(callback, x, i, sigma, denoised)
        if pending is not None:
            # UniC: y_t^c = (σ_t/σ_s) y_s + Σ_k w_k D_k + w_t D_t
            ratio, weights = pending
            x = advance(start, ratio, weights, [*history[: len(weights) - 1], denoised])
        history = [denoised, *history][:order]
        p = min(order, i + 1)  # warm-up: UniP-p needs p values of D
        if lower_order_final:
            p = min(p, steps - i)
        if sigma_next == 0:
            # last step: UniP-1 into σ = 0 is y = D_0 (B(h) = −1, no log 0); no corrector follows
            x, pending = denoised, None
        else:
            h = math.log(sigma / sigma_next)
            rks = [math.log(sigma / levels[i - k]) / h for k in range(1, p)]
            predictor, corrector = unipc_weights(p, h, rks)
            start, pending = x, (sigma_next / sigma, corrector)
            # UniP: y_t = (σ_t/σ_s) y_s + Σ_k w_k D_k
            x = advance(x, sigma_next / sigma, predictor, history)
    return x
