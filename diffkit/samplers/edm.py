"""The EDM family (Karras et al. 2022, Alg. 2): Euler, Heun and DPM-Solver-2 on the
probability-flow ODE, each with the optional "churn" that raises the noise level first.

σ form (x = x0 + σ·ε, x of shape [B, ...]); the probability-flow ODE is

    dy/dσ = d(y, σ) = (y − D(y, σ))/σ                          (Karras et al. 2022, eq. 3)

Churn (Alg. 2, lines 4–6, with k-diffusion's semantics): at step i of N, when
s_tmin ≤ σ_i ≤ s_tmax,

    γ_i = min(s_churn/N, √2 − 1),   σ̂ = σ_i (1 + γ_i),   ŷ = y + s_noise · √(σ̂² − σ_i²) · z

with z ~ N(0, I); otherwise γ_i = 0 and nothing is drawn. With s_churn = 0 (the default)
all three samplers are deterministic. Each step then starts from (ŷ, σ̂) with D = D(ŷ, σ̂),
h = σ' − σ̂:

    euler   y' = D + (σ'/σ̂)(ŷ − D)              = ŷ + h·d(ŷ, σ̂), exact at σ' = 0 and
                                                  bit-identical to DDIM with η = 0
    heun    y₂ = D + (σ'/σ̂)(ŷ − D)              Euler predictor at σ'
            y' = ŷ + h·(d(ŷ, σ̂) + d(y₂, σ'))/2   trapezoidal corrector (Alg. 2, lines 7–11)
    dpm2    σ_m = √(σ̂·σ')                       midpoint in log σ (= in λ = −log σ)
            y₂ = D + (σ_m/σ̂)(ŷ − D)             Euler to the midpoint
            y' = ŷ + h·d(y₂, σ_m)                the whole step with the midpoint slope
                                                  (k-diffusion's DPM-Solver-2; Lu et al. 2022, r₁ = ½)

Heun and DPM2 are second order with two denoiser calls per step, except the last step into
σ' = 0: d(·, 0) and log 0 are undefined there, so it is the Euler step y' = D.

Heun's trapezoid depends on the ODE's time variable. ``time="sigma"`` is the trapezoid in σ
above (EDM, k-diffusion's ``sample_heun``). ``time="flow"`` is the trapezoid in flow time
t = σ/(1 + σ) on x_t = y/(1 + σ) = (1 − t)·x0 + t·ε, whose slope is the velocity
v = (x_t − D)/t — diffusers' ``FlowMatchHeunDiscreteScheduler``:

    x₂ = x_t + (t' − t̂)·v(x_t, t̂)                 the same Euler predictor (Euler is DDIM in
                                                   either variable)
    x' = x_t + (t' − t̂)·(v(x_t, t̂) + v(x₂, t'))/2,   y' = (1 + σ')·x'

Both are second order on the same ODE but take different steps; only the t trapezoid has a
finite first step from t = 1 (σ = ∞). ``time="auto"`` (the default) picks ``"flow"`` for a
denoiser whose ``path`` is ``"flow"`` (:class:`~diffkit.sampling.denoisers.FlowDenoiser`, and
guidance wrapped around one) and ``"sigma"`` otherwise, so ``heun`` means on each model what
diffusers' Heun scheduler for that model family means.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from diffkit.errors import ConfigError, check_choice
from diffkit.samplers.common import default_noise_sampler, denoise, float32_state, report, sigma_levels, to_d
from diffkit.samplers.contract import Callback, Denoiser, Generator, NoiseSampler
from diffkit.validators import check_real

MAX_GAMMA = math.sqrt(2.0) - 1.0  # EDM caps γ so that σ̂ ≤ √2·σ: at most doubling the variance
HEUN_TIMES = ("auto", "sigma", "flow")  # the variable Heun's trapezoid is taken in (module docstring)


def check_churn(s_churn: float, s_tmin: float, s_tmax: float, s_noise: float) -> tuple[float, float, float, float]:
    """EDM's churn options as floats: s_churn, s_tmin, s_noise finite ≥ 0; s_tmax ≥ s_tmin (may be inf)."""
    s_churn, s_tmin = check_real("s_churn", s_churn, low=0), check_real("s_tmin", s_tmin, low=0)
    s_tmax, s_noise = check_real("s_tmax", s_tmax, low=0, finite=False), check_real("s_noise", s_noise, low=0)
    if s_tmax < s_tmin:
        raise ConfigError(f"s_tmax ({s_tmax}) must be ≥ s_tmin ({s_tmin}): churn applies to s_tmin ≤ σ ≤ s_tmax")
    return s_churn, s_tmin, s_tmax, s_noise


def check_heun(
    time: str = "auto", s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0
) -> tuple[str, float, float, float, float]:
    """Heun's options: ``time`` one of :data:`HEUN_TIMES`, and the churn options (:func:`check_churn`)."""
    return (check_choice("heun time", time, HEUN_TIMES), *check_churn(s_churn, s_tmin, s_tmax, s_noise))


def heun_time(denoiser: Denoiser, time: str) -> str:
    """``"sigma"`` or ``"flow"``: ``time`` itself, or for ``"auto"`` the denoiser's ``path``."""
    time = check_choice("heun time", time, HEUN_TIMES)
    if time != "auto":
        return time
    return "flow" if getattr(denoiser, "path", None) == "flow" else "sigma"


class Churn:
    """EDM Alg. 2, lines 4–6, for one run: ``churn(x, σ) -> (ŷ, σ̂)`` at each step of ``levels``.

    Holds the checked options, the σ levels as Python floats (no device sync per step), N (the
    γ denominator) and the noise source: z is requested as ``noise(σ, σ̂)``, the interval the
    level is raised over, and only when γ > 0 and s_noise > 0.
    """

    def __init__(
        self, x: torch.Tensor, sigmas: torch.Tensor, generator: Generator, noise_sampler: NoiseSampler | None,
        s_churn: float, s_tmin: float, s_tmax: float, s_noise: float,
    ) -> None:
        self.s_churn, self.s_tmin, self.s_tmax, self.s_noise = check_churn(s_churn, s_tmin, s_tmax, s_noise)
        self.levels = sigma_levels(sigmas)  # σ_0 > … > σ_N = 0
        self.noise = noise_sampler or default_noise_sampler(x, generator)  # z ~ N(0, I), [B, ...]

    def steps(self) -> list[tuple[int, float, float]]:
        """(i, σ_i, σ_{i+1}) for every step."""
        return [(i, s, s_next) for i, (s, s_next) in enumerate(zip(self.levels[:-1], self.levels[1:]))]

    def __call__(self, x: torch.Tensor, sigma: float) -> tuple[torch.Tensor, float]:
        """(ŷ, σ̂) with γ = min(s_churn/N, √2 − 1) inside [s_tmin, s_tmax], else (x, σ) unchanged."""
        inside = self.s_churn > 0 and self.s_tmin <= sigma <= self.s_tmax
        gamma = min(self.s_churn / (len(self.levels) - 1), MAX_GAMMA) if inside else 0.0
        sigma_hat = sigma * (1.0 + gamma)
        if gamma > 0 and self.s_noise > 0:
            x = x + (self.s_noise * math.sqrt(sigma_hat**2 - sigma**2)) * self.noise(sigma, sigma_hat)
        return x, sigma_hat


@float32_state
def euler(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    cond: Any = None, generator: Generator = None, callback: Callback | None = None,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """Euler's method on the probability-flow ODE with optional EDM churn (Karras et al. 2022, Alg. 2).

    Alg. 2 without the Heun correction; deterministic, and bit-identical to DDIM with η = 0,
    when s_churn = 0. Options (the contract's arguments: :mod:`diffkit.samplers`):

    Args:
        s_churn: S_churn ≥ 0, the total churn over the N steps (γ = min(S_churn/N, √2 − 1)).
        s_tmin, s_tmax: churn only steps with S_tmin ≤ σ ≤ S_tmax (S_tmax may be inf).
        s_noise: S_noise ≥ 0, the scale of the churn noise (EDM uses slightly above 1).
        noise_sampler: ``(sigma, sigma_hat) -> N(0, I) like x`` for the churn noise;
            defaults to ``generator``.
    """
    churn = Churn(x, sigmas, generator, noise_sampler, s_churn, s_tmin, s_tmax, s_noise)
    for i, sigma, sigma_next in churn.steps():
        x, sigma_hat = churn(x, sigma)  # (ŷ, σ̂); unchanged when γ = 0
        denoised = denoise(denoiser, x, sigma_hat, cond)  # D(ŷ, σ̂), [B, ...]
        report(callback, x, i, sigma, denoised, sigma_hat)
        x = torch.lerp(denoised, x, sigma_next / sigma_hat)  # D + (σ'/σ̂)(ŷ − D), as DDIM's
    return x


@float32_state
def heun(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    cond: Any = None, generator: Generator = None, callback: Callback | None = None,
    time: str = "auto", s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """Heun's 2nd-order method on the probability-flow ODE with optional churn (Karras et al. 2022, Alg. 2).

    Euler for the last step into σ = 0. Deterministic when s_churn = 0. Options as
    :func:`euler`'s, and ``time``: the trapezoid in ``"sigma"`` (EDM, k-diffusion), in
    ``"flow"`` time t = σ/(1 + σ) (diffusers' ``FlowMatchHeunDiscreteScheduler``), or
    ``"auto"``: flow for a flow-matching denoiser, else sigma (module docstring). Churn
    raises σ in σ form under both.
    """
    flow = heun_time(denoiser, time) == "flow"
    churn = Churn(x, sigmas, generator, noise_sampler, s_churn, s_tmin, s_tmax, s_noise)
    for i, sigma, sigma_next in churn.steps():
        x, sigma_hat = churn(x, sigma)
        denoised = denoise(denoiser, x, sigma_hat, cond)  # D(ŷ, σ̂), [B, ...]
        report(callback, x, i, sigma, denoised, sigma_hat)
        if sigma_next == 0:
            x = denoised  # Euler into σ = 0: ŷ + (0 − σ̂)(ŷ − D)/σ̂ = D
        else:
            x_2 = torch.lerp(denoised, x, sigma_next / sigma_hat)  # Euler predictor at σ' (either time)
            denoised_2 = denoise(denoiser, x_2, sigma_next, cond)
            if flow:
                x = _flow_trapezoid(x, denoised, sigma_hat, x_2, denoised_2, sigma_next)
            else:
                d, d_2 = to_d(x, sigma_hat, denoised), to_d(x_2, sigma_next, denoised_2)  # dy/dσ at both ends
                x = x + (0.5 * (sigma_next - sigma_hat)) * (d + d_2)
    return x


def _flow_trapezoid(
    y: torch.Tensor, denoised: torch.Tensor, sigma: float,
    y_2: torch.Tensor, denoised_2: torch.Tensor, sigma_next: float,
) -> torch.Tensor:
    """y' of the trapezoid in flow time from (y, σ) to σ' > 0, given D at both ends (module docstring)."""
    t, t_next = sigma / (1 + sigma), sigma_next / (1 + sigma_next)
    x_t, x_2 = y / (1 + sigma), y_2 / (1 + sigma_next)  # (1 − t)·y
    v, v_2 = (x_t - denoised) / t, (x_2 - denoised_2) / t_next  # velocities ε̂ − x̂0
    return (x_t + (0.5 * (t_next - t)) * (v + v_2)) * (1 + sigma_next)


@float32_state
def dpm2(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *,
    cond: Any = None, generator: Generator = None, callback: Callback | None = None,
    s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = math.inf, s_noise: float = 1.0,
    noise_sampler: NoiseSampler | None = None,
) -> torch.Tensor:
    """DPM-Solver-2 with the midpoint in log σ, as in k-diffusion (Lu et al. 2022), with optional churn.

    Euler for the last step into σ = 0. Deterministic when s_churn = 0. Options as
    :func:`euler`'s.
    """
    churn = Churn(x, sigmas, generator, noise_sampler, s_churn, s_tmin, s_tmax, s_noise)
    for i, sigma, sigma_next in churn.steps():
        x, sigma_hat = churn(x, sigma)
        denoised = denoise(denoiser, x, sigma_hat, cond)  # D(ŷ, σ̂), [B, ...]
        report(callback, x, i, sigma, denoised, sigma_hat)
        if sigma_next == 0:
            x = denoised  # Euler into σ = 0 (log σ' = −∞: no midpoint)
        else:
            sigma_mid = math.exp(0.5 * (math.log(sigma_hat) + math.log(sigma_next)))
            x_2 = torch.lerp(denoised, x, sigma_mid / sigma_hat)  # Euler to the log-σ midpoint
            d_2 = to_d(x_2, sigma_mid, denoise(denoiser, x_2, sigma_mid, cond))  # slope at (y₂, σ_m)
            x = x + (sigma_next - sigma_hat) * d_2
    return x
