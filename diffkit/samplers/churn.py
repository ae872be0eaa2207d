"""EDM's "churn" (Karras et al. 2022, Alg. 2, lines 4–6) and the loop of the samplers that use it.

k-diffusion's semantics: at step i of N, when s_tmin ≤ σ_i ≤ s_tmax,

    γ_i = min(s_churn/N, √2 − 1),   σ̂ = σ_i (1 + γ_i),   ŷ = y + s_noise · √(σ̂² − σ_i²) · z

with z ~ N(0, I); otherwise γ_i = 0 and nothing is drawn. The ODE step then starts from
(ŷ, σ̂). With s_churn = 0 (the default) every sampler using it is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
import torch

from diffkit.errors import ConfigError
from diffkit.samplers.common import (
    Callback,
    Denoiser,
    Generator,
    NoiseSampler,
    default_noise_sampler,
    denoise,
    report,
    sigma_levels,
)

MAX_GAMMA = math.sqrt(2.0) - 1.0  # EDM caps γ so that σ̂ ≤ √2·σ: at most doubling the variance
_RANGE_MESSAGE = "s_tmax ({}) must be ≥ s_tmin ({}): churn applies to s_tmin ≤ σ ≤ s_tmax"


def _number(name: str, value: Any, *, allow_inf: bool = False) -> float:
    """``value`` as a float ≥ 0 (finite unless ``allow_inf``), else a :class:`ConfigError`."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and not math.isnan(value)
    if ok and value >= 0 and (allow_inf or math.isfinite(value)):
        return float(value)
    kind = "a number ≥ 0 (may be inf)" if allow_inf else "a finite number ≥ 0"
    raise ConfigError(f"{name} must be {kind}, got {value!r}")


def check_churn(s_churn: float, s_tmin: float, s_tmax: float, s_noise: float) -> tuple[float, float, float, float]:
    """Validate EDM's churn options; returns them as floats."""
    s_churn, s_tmin = _number("s_churn", s_churn), _number("s_tmin", s_tmin)
    s_tmax, s_noise = _number("s_tmax", s_tmax, allow_inf=True), _number("s_noise", s_noise)
    if s_tmax < s_tmin:
        raise ConfigError(_RANGE_MESSAGE.format(s_tmax, s_tmin))
    return s_churn, s_tmin, s_tmax, s_noise


def _validate(instance: "ChurnOptions", attribute: attrs.Attribute, value: Any) -> None:
    _number(attribute.name, value, allow_inf=attribute.name == "s_tmax")


def _validate_range(instance: "ChurnOptions", attribute: attrs.Attribute, value: Any) -> None:
    _validate(instance, attribute, value)
    if value < instance.s_tmin:
        raise ConfigError(_RANGE_MESSAGE.format(value, instance.s_tmin))


@attrs.frozen(kw_only=True)
class ChurnOptions:
    """Options of :func:`euler`, :func:`~diffkit.samplers.heun.heun` and :func:`~diffkit.samplers.heun.dpm2`
    (EDM Alg. 2's stochasticity; all defaults give the deterministic ODE solver)."""

    s_churn: float = attrs.field(default=0.0, validator=_validate)
    """S_churn ≥ 0: total churn over the N steps; γ = min(S_churn/N, √2 − 1). 0 = deterministic."""
    s_tmin: float = attrs.field(default=0.0, validator=_validate)
    """S_tmin ≥ 0: churn only steps with σ ≥ S_tmin."""
    s_tmax: float = attrs.field(default=math.inf, validator=_validate_range)
    """S_tmax ≥ S_tmin (may be inf): churn only steps with σ ≤ S_tmax."""
    s_noise: float = attrs.field(default=1.0, validator=_validate)
    """S_noise ≥ 0: scale of the churn noise (EDM uses slightly above 1 to offset denoiser bias)."""


def churn_gamma(sigma: float, steps: int, s_churn: float, s_tmin: float, s_tmax: float) -> float:
    """γ of EDM Alg. 2, line 4: min(S_churn/N, √2 − 1) inside [S_tmin, S_tmax], else 0."""
    if s_churn > 0 and s_tmin <= sigma <= s_tmax:
        return min(s_churn / steps, MAX_GAMMA)
    return 0.0


def churn(
    x: torch.Tensor, sigma: float, gamma: float, s_noise: float, noise: NoiseSampler
) -> tuple[torch.Tensor, float]:
    """EDM Alg. 2, lines 5–6: (ŷ, σ̂) with σ̂ = σ(1 + γ), ŷ = y + S_noise·√(σ̂² − σ²)·z.

    z is requested as ``noise(σ, σ̂)`` (the interval the noise level is raised over), and only
    when γ > 0 and S_noise > 0; otherwise x is returned unchanged and nothing is drawn.
    """
    sigma_hat = sigma * (1.0 + gamma)
    if gamma > 0 and s_noise > 0:
        x = x + (s_noise * math.sqrt(sigma_hat**2 - sigma**2)) * noise(sigma, sigma_hat)
    return x, sigma_hat


# step(ŷ, D(ŷ, σ̂), σ̂, σ', evaluate) -> y' where evaluate(y, σ) = D(y, σ)
ChurnedStep = Callable[[torch.Tensor, torch.Tensor, float, float, Callable[[torch.Tensor, float], torch.Tensor]], torch.Tensor]


def churned_loop(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    step: ChurnedStep,
    *,
    cond: Any,
    generator: Generator,
    callback: Callback | None,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
    noise_sampler: NoiseSampler | None,
) -> torch.Tensor:
    """The loop of EDM Alg. 2: per step σ → σ', churn to (ŷ, σ̂), evaluate D(ŷ, σ̂), then ``step``.

    ``step`` is the ODE method (Euler, Heun, DPM-Solver-2); it may evaluate the denoiser
    again through its ``evaluate`` argument. Churn noise is drawn as ``noise(σ, σ̂)``.
    """
    s_churn, s_tmin, s_tmax, s_noise = check_churn(s_churn, s_tmin, s_tmax, s_noise)
    levels = sigma_levels(sigmas)  # σ_0 > … > σ_N = 0 as Python floats: no device sync per step
    steps = len(levels) - 1  # N, the γ denominator
    noise = noise_sampler or default_noise_sampler(x, generator)  # z ~ N(0, I), [B, ...]

    def evaluate(y: torch.Tensor, sigma: float) -> torch.Tensor:
        return denoise(denoiser, y, sigma, cond)

    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        # churn: raise the noise level σ → σ̂ with fresh noise (a no-op when γ = 0)
        x, sigma_hat = churn(x, sigma, churn_gamma(sigma, steps, s_churn, s_tmin, s_tmax), s_noise, noise)
        denoised = evaluate(x, sigma_hat)  # D(ŷ, σ̂), [B, ...]
        x = step(x, denoised, sigma_hat, sigma_next, evaluate)
        report(callback, x, i, sigma, denoised, sigma_hat)
    return x
