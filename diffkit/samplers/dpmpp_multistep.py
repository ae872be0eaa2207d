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
    order 3, DPM-Solver++(3M):         y' = (σ'/σ) y + h (φ_1 D_0 + φ_2 Δ1 + c·φ_3 Δ2)

where D_j is the denoised value j steps back, h_j the λ-step that ended there, r_j = h_j/h,
Δ1 ≈ h D' and Δ2 ≈ h² D'' (divided differences; see :func:`dpmpp_weights`). The weight c of
the second difference is the option ``d2_weight`` (:data:`D2_WEIGHTS`): c = ½ as in
DPM-Solver's reference code, and so in diffusers, k-diffusion and ComfyUI (``"dpm_solver"``,
the default: a second-order method), or c = 1, the Taylor term (``"taylor"``: third order).
Every update is a weighted sum y' = (σ'/σ) y + Σ_j w_j D_j with float64 weights summing to
1 − σ'/σ.

The step into σ' = 0 is always first order: there h = ∞ and every formula's limit is
y' = D_0 (no log 0 is taken).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from diffkit.errors import ConfigError, check_choice
from diffkit.samplers.common import check_flag, denoise, float32_state, report, sigma_levels
from diffkit.samplers.contract import Callback, Denoiser, Generator

# diffusers' rule for `lower_order_final`: below this many steps the last steps drop order.
LOWER_ORDER_FINAL_BELOW = 15

D2_WEIGHTS: tuple[str, ...] = ("dpm_solver", "taylor")
"""The weights of the second difference Δ2 ≈ h²D'' in a third-order DPM-Solver++ step.

``"dpm_solver"`` (the default of ``dpmpp_3m`` and ``dpmpp_3m_sde``): half the Taylor weight,
as DPM-Solver's reference code has it, and diffusers' ``DPMSolverMultistepScheduler``
(order 3), k-diffusion's ``sample_dpmpp_3m_sde`` and ComfyUI after it; the local error is then
O(h³), a second-order method. ``"taylor"``: the full Taylor weight, a third-order method
(docs/samplers.md has the derivation and the measured trade-off).
"""
DEFAULT_D2_WEIGHT = "dpm_solver"
_ALIAS = "match_dpm_solver_code"


def check_d2_weight(d2_weight: str, match_dpm_solver_code: bool | None = None) -> str:
    """The Δ2 weight (one of :data:`D2_WEIGHTS`) that ``d2_weight`` and the deprecated alias ask for.

    ``match_dpm_solver_code`` (deprecated; None = not given) is ``d2_weight="dpm_solver"`` when
    True and ``d2_weight="taylor"`` when False. Given with a ``d2_weight`` other than the
    default it must agree with it (an explicit ``"dpm_solver"`` cannot be told from the
    default, so there the alias decides). Validates only; :func:`resolve_d2_weight` also warns.
    """
    check_choice("d2_weight", d2_weight, D2_WEIGHTS)
    if match_dpm_solver_code is None:
        return d2_weight
    check_flag(_ALIAS, match_dpm_solver_code)
    alias = "dpm_solver" if match_dpm_solver_code else "taylor"
    if d2_weight != DEFAULT_D2_WEIGHT and d2_weight != alias:
        raise ConfigError(
            f"{_ALIAS}={match_dpm_solver_code} (deprecated) means d2_weight={alias!r}, which contradicts "
            f"d2_weight={d2_weight!r}; pass d2_weight alone (valid: {', '.join(D2_WEIGHTS)})"
        )
    return alias


def resolve_d2_weight(d2_weight: str, match_dpm_solver_code: bool | None, *, stacklevel: int = 4) -> bool:
    """True for the Taylor weight of Δ2, False for the reference code's half (:func:`check_d2_weight`).

    Warns with a :class:`DeprecationWarning` when the alias ``match_dpm_solver_code`` is given.
    """
    weight = check_d2_weight(d2_weight, match_dpm_solver_code)
    if match_dpm_solver_code is not None:
        warnings.warn(
            f"{_ALIAS} is deprecated: use d2_weight={weight!r} (d2_weight='dpm_solver', half the Taylor "
            "weight as in DPM-Solver's code, k-diffusion and diffusers, is now the default; "
            "d2_weight='taylor' is the third-order variant)",
            DeprecationWarning, stacklevel=stacklevel,
        )
    return weight == "taylor"


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
        taylor: order 3 only. True (``d2_weight="taylor"``): Δ2 = 2(D1_0 − D1_1)/(r_0 + r_1)
            ≈ h²D'', the Taylor term, so the method is third order. False
            (``d2_weight="dpm_solver"``): the reference code's Δ2, half of that, as in diffusers
            and k-diffusion, which leaves an O(h³) local error (the method is then second order).

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
        report(callback, x, i, sigma, denoised)
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
        # keep what the next step can use: max_order − 1 values of D and their λ-steps
        history = [denoised, *history][: max_order - 1]
        h_back = [h, *h_back][: max_order - 1]
    return x


def check_dpmpp_3m(
    lower_order_final: bool, d2_weight: str = DEFAULT_D2_WEIGHT, match_dpm_solver_code: bool | None = None
) -> None:
    """:func:`dpmpp_3m`'s options: a flag, a Δ2 weight of :data:`D2_WEIGHTS` (and its deprecated alias)."""
    check_flag("lower_order_final", lower_order_final)
    check_d2_weight(d2_weight, match_dpm_solver_code)


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
    lower_order_final: bool = True, d2_weight: str = DEFAULT_D2_WEIGHT, match_dpm_solver_code: bool | None = None,
) -> torch.Tensor:
    """DPM-Solver++(3M): multistep DPM-Solver++ with a second difference (Lu et al. 2022), one D per step.

    The update y' = (σ'/σ) y + h (φ_1 D_0 + φ_2 Δ1 + c·φ_3 Δ2) takes orders 1, 2, then 3 of the
    λ-expansion of D; the last step into σ = 0 is first order; with ``lower_order_final`` and
    fewer than 15 steps the second-to-last step is second order. By default c = ½ as in
    DPM-Solver's code: this is diffusers' ``DPMSolverMultistepScheduler(solver_order=3)``
    exactly, and a second-order method. Deterministic; ``generator`` is accepted and unused.

    Args:
        lower_order_final: with fewer than 15 steps, take the second-to-last step at second
            order (diffusers' rule). The last step, into σ = 0, is first order either way.
        d2_weight: the weight c of the second difference Δ2 ≈ h²D'' (:data:`D2_WEIGHTS`).
            ``"dpm_solver"``: c = ½, the reference code's, diffusers' and k-diffusion's weight
            (second order; at 10–50 steps within 0.4 % of the Taylor weight's error or better, up
            to 2× better, on the problems of docs/samplers.md).
            ``"taylor"``: c = 1, the Taylor term, third order (docs/samplers.md).
        match_dpm_solver_code: deprecated alias: True is ``d2_weight="dpm_solver"``, False is
            ``d2_weight="taylor"`` (a :class:`DeprecationWarning`; contradicting an explicit
            ``d2_weight="taylor"`` is an error).
    """
    check_flag("lower_order_final", lower_order_final)
    taylor = resolve_d2_weight(d2_weight, match_dpm_solver_code)
    return _dpmpp_multistep(
        denoiser, x, sigmas, max_order=3, lower_order_final=lower_order_final, taylor=taylor,
        cond=cond, callback=callback,
    )
