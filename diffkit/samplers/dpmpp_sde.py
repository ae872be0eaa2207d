"""DPM-Solver++ multistep SDE samplers (2M SDE, 3M SDE) in σ form, k-diffusion semantics.

Notation as in :mod:`diffkit.samplers.dpmpp_multistep`: λ = −log σ (half-log-SNR), a step
σ → σ' has h = log(σ/σ') > 0. With the noise scale η the solvers integrate (σ form, in λ)

    dy = −(1 + η)(y − D(y)) dλ + σ·√(2η) dW_λ

(Lu et al. 2022, "DPM-Solver++", §5 / the SDE variant of diffusers' PR #3344: η = 1 is the
reverse diffusion SDE, η = 0 the probability-flow ODE). With D expanded in λ around the
current level and x = (1 + η)h, the step is exact up to that expansion:

    y' = e^{−x} y + x·(φ_1(−x) D_0 + φ_2(−x) Δ1 + c·φ_3(−x) Δ2) + σ'·√(1 − e^{−2ηh}) · s_noise · z

with φ_k from :func:`~diffkit.samplers.dpmpp_multistep.phi`, Δ1 ≈ h·dD/dλ, Δ2 ≈ h²·d²D/dλ²
estimated from the denoised values of earlier steps, and e^{−x} = e^{−ηh}·σ'/σ. The weight c
of Δ2 is ``d2_weight`` (:data:`~diffkit.samplers.dpmpp_multistep.D2_WEIGHTS`): ½ by default,
as in k-diffusion's ``sample_dpmpp_3m_sde``, or 1, the Taylor term. The step into σ' = 0 is
y' = D_0 (the limit h → ∞; no log 0 and no noise).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from diffkit.errors import check_choice
from diffkit.samplers.common import (
    check_eta_s_noise,
    default_noise_sampler,
    denoise,
    float32_state,
    report,
    sigma_levels,
)
from diffkit.samplers.contract import Callback, Denoiser, Generator, NoiseSampler
from diffkit.samplers.dpmpp_multistep import DEFAULT_D2_WEIGHT, check_d2_weight, phi, resolve_d2_weight

SOLVER_TYPES = ("midpoint", "heun")


def check_dpmpp_2m_sde(eta: float, s_noise: float, solver_type: str) -> tuple[float, float]:
    """:func:`dpmpp_2m_sde`'s options: η and s_noise finite ≥ 0, a solver type of :data:`SOLVER_TYPES`."""
    check_choice("solver_type", solver_type, SOLVER_TYPES)
    return check_eta_s_noise(eta, s_noise)


def check_dpmpp_3m_sde(
    eta: float, s_noise: float, d2_weight: str = DEFAULT_D2_WEIGHT, match_dpm_solver_code: bool | None = None
) -> tuple[float, float]:
    """:func:`dpmpp_3m_sde`'s options: η and s_noise finite ≥ 0, a Δ2 weight (and its deprecated alias)."""
    check_d2_weight(d2_weight, match_dpm_solver_code)
    return check_eta_s_noise(eta, s_noise)


def _sde_weights(
    order: int, h: float, h_back: Sequence[float], eta: float, solver_type: str, taylor: bool
) -> list[float]:
    """Weights w_j on D_j (j steps back) of one step: y' = e^{−x} y + Σ_j w_j D_j (+ noise).

    Args:
        order: 1, 2 or 3 (needs ``order − 1`` entries of ``h_back``).
        h: this step in λ, log(σ/σ') > 0; x = (1 + η)h.
        h_back: earlier λ-steps, newest first: h_back[0] ended at the current σ.
        solver_type: order 2 only: ``"midpoint"`` or ``"heun"`` (k-diffusion's 2M SDE).
        taylor: order 3 only: Δ2 ≈ h²D'' (True, ``d2_weight="taylor"``) or k-diffusion's half
            of it (False, ``d2_weight="dpm_solver"``).

    Returns [w_0, …] with Σ w_j = 1 − e^{−x}, so a constant D is reproduced exactly.
    """
    xh = (1 + eta) * h
    c0 = -math.expm1(-xh)  # xφ_1(−x) = 1 − e^{−x}
    if order == 1:
        return [c0]
    # first divided difference: Δ1 = (D_0 − D_1)/r_0 ≈ h D', r_0 = h_back[0]/h
    a = h / h_back[0]
    if order == 2:
        # 2M SDE: midpoint weight (1 − e^{−x})/2 or heun weight xφ_2(−x) on Δ1
        c1 = 0.5 * c0 if solver_type == "midpoint" else xh * phi(2, -xh)
        return [c0 + c1 * a, -c1 * a]
    # 3M SDE: D1_0 = (D_0 − D_1)/r_0, D1_1 = (D_1 − D_2)/r_1,
    #   Δ1 = D1_0 + r_0/(r_0 + r_1)(D1_0 − D1_1) ≈ h D',  Δ2 = q(D1_0 − D1_1) with q = 2/(r_0 + r_1) ≈ h² D''
    r0, r1 = h_back[0] / h, h_back[1] / h
    b = 1 / r1
    g = r0 / (r0 + r1)
    q = (2.0 if taylor else 1.0) / (r0 + r1)
    c1, c2 = xh * phi(2, -xh), xh * phi(3, -xh)
    # collect c1·Δ1 + c2·Δ2 per D_j (D1_0 = a(D_0 − D_1), D1_1 = b(D_1 − D_2))
    w0 = c0 + c1 * (1 + g) * a + c2 * q * a
    w1 = -c1 * ((1 + g) * a + g * b) - c2 * q * (a + b)
    w2 = c1 * g * b + c2 * q * b
    return [w0, w1, w2]


def _dpmpp_sde(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor | Sequence[float], *,
    max_order: int, eta: float, s_noise: float, solver_type: str, taylor: bool,
    cond: Any, generator: Generator, callback: Callback | None, noise_sampler: NoiseSampler | None,
) -> torch.Tensor:
    """The loop shared by :func:`dpmpp_2m_sde` and :func:`dpmpp_3m_sde` (orders 1, 2, … up to max_order)."""
    levels = sigma_levels(sigmas)  # Python floats: coefficients in float64, no device sync per step
    noise = noise_sampler or default_noise_sampler(x, generator)
    history: list[torch.Tensor] = []  # D at earlier levels, newest first, each [B, ...]
    h_back: list[float] = []  # the λ-steps that ended at those levels, newest first
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        denoised = denoise(denoiser, x, sigma, cond)  # D_0 = D(y, σ), [B, ...]
        report(callback, x, i, sigma, denoised)
        if sigma_next == 0:
            # denoising step: the h → ∞ limit of every order, y' = D_0
            x = denoised
            h = math.inf
        else:
            h = math.log(sigma / sigma_next)  # λ' − λ with λ = −log σ
            order = min(max_order, len(history) + 1)  # warm-up: order k needs k − 1 earlier D
            weights = _sde_weights(order, h, h_back, eta, solver_type, taylor)
            # y' = e^{−(1+η)h} y + Σ_j w_j D_j
            x = math.exp(-(1 + eta) * h) * x + weights[0] * denoised
            for w, older in zip(weights[1:], history):
                x = x + w * older
            if eta > 0 and s_noise > 0:
                # the SDE's noise over the step: variance σ'²(1 − e^{−2ηh})
                x = x + (sigma_next * math.sqrt(-math.expm1(-2 * eta * h)) * s_noise) * noise(sigma, sigma_next)
        history = [denoised, *history][: max_order - 1]
        h_back = [h, *h_back][: max_order - 1]
    return x


@float32_state
def dpmpp_2m_sde(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    cond: Any = None, generator: Generator = None, callback: Callback | None = None,
    eta: float = 1.0, s_noise: float = 1.0, solver_type: str = "midpoint",
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) SDE (k-diffusion ``sample_dpmpp_2m_sde``; diffusers ``sde-dpmsolver++``, order 2).

    Step 0 is first order (no history), later steps second order, the last step into σ = 0
    returns D. With η = 0 it is the deterministic DPM-Solver++(2M) (``solver_type="midpoint"``).
    For results that converge as the step count grows, pass a Brownian-tree noise sampler
    (:class:`~diffkit.samplers.noise.BrownianTreeNoiseSampler`, k-diffusion's default).

    Args:
        eta: η ≥ 0, the noise scale (1: reverse SDE, 0: ODE).
        s_noise: multiplier of the added noise.
        solver_type: the second-order term: ``"midpoint"`` weights Δ1 by (1 − e^{−x})/2
            (k-diffusion's and diffusers' default); ``"heun"`` by xφ_2(−x), the exact Taylor weight.
        noise_sampler: ``(sigma, sigma_next) -> N(0, I) like x``; defaults to fresh draws from
            ``generator``. Called once per step with η·s_noise > 0, except the last.
    """
    eta, s_noise = check_dpmpp_2m_sde(eta, s_noise, solver_type)
    return _dpmpp_sde(
        denoiser, x, sigmas, max_order=2, eta=eta, s_noise=s_noise, solver_type=solver_type, taylor=True,
        cond=cond, generator=generator, callback=callback, noise_sampler=noise_sampler,
    )


@float32_state
def dpmpp_3m_sde(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    cond: Any = None, generator: Generator = None, callback: Callback | None = None,
    eta: float = 1.0, s_noise: float = 1.0, d2_weight: str = DEFAULT_D2_WEIGHT,
    match_dpm_solver_code: bool | None = None, noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DPM-Solver++(3M) SDE (k-diffusion ``sample_dpmpp_3m_sde``), one D per step.

    Orders per step: 1, 2 (the Taylor/"heun" weight), then the second difference; the last
    step into σ = 0 returns D. With η = 0 it is the deterministic DPM-Solver++(3M).

    By default the second difference Δ2 gets half its Taylor value, xφ_3(−x)/2, as in
    k-diffusion (and DPM-Solver's reference code): with the same noise this is k-diffusion's
    ``sample_dpmpp_3m_sde`` exactly, and its η = 0 solver is second order (an O(h³) local
    error). ``d2_weight="taylor"`` gives Δ2 ≈ h²D'' its full weight, a third-order η = 0 solver.

    Args:
        eta: η ≥ 0, the noise scale (1: reverse SDE, 0: ODE).
        s_noise: multiplier of the added noise.
        d2_weight: the weight of Δ2 (:data:`~diffkit.samplers.dpmpp_multistep.D2_WEIGHTS`):
            ``"dpm_solver"``, half the Taylor value (k-diffusion's; second order), or
            ``"taylor"``, the full value (third order; see docs/samplers.md).
        match_dpm_solver_code: deprecated alias: True is ``d2_weight="dpm_solver"``, False is
            ``d2_weight="taylor"`` (a :class:`DeprecationWarning`).
        noise_sampler: ``(sigma, sigma_next) -> N(0, I) like x``; defaults to fresh draws from
            ``generator``. Called once per step with η·s_noise > 0, except the last.
    """
    eta, s_noise = check_eta_s_noise(eta, s_noise)
    taylor = resolve_d2_weight(d2_weight, match_dpm_solver_code)
    return _dpmpp_sde(
        denoiser, x, sigmas, max_order=3, eta=eta, s_noise=s_noise, solver_type="heun",
        taylor=taylor, cond=cond, generator=generator, callback=callback, noise_sampler=noise_sampler,
    )
