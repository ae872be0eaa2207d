"""Pieces every built-in sampler shares: σ validation, the denoiser call, noise, callbacks.

Samplers work in σ form: x = x0 + σ·ε (Karras et al. 2022), x of shape [B, ...].
The σ sequence is read once into Python floats (float64), so no step needs a
device→host sync to branch on σ, and step coefficients are computed in float64.
The contract's types (``Denoiser``, ``Generator``, …) live in :mod:`diffkit.samplers.contract`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from diffkit.errors import ConfigError, ShapeError
from diffkit.samplers.contract import Callback, Denoiser, Generator, NoiseSampler
from diffkit.validators import check_flag, is_integer, is_real  # noqa: F401 (check_flag, is_integer: re-exported)

HALF_DTYPES = (torch.float16, torch.bfloat16)
SEED_MAX = 2**64 - 1  # torch.Generator.manual_seed keeps 64 bits
META_SIGMAS = (
    "sigmas are on the meta device, which holds shapes but no values; pass the noise levels as numbers "
    "or as a CPU tensor"
)



def as_generator(generator: Any, *, what: str = "generator") -> Generator:
    """The noise source a sampler takes, from what a user may pass as ``generator``.

    * None: torch's global generator;
    * a ``torch.Generator``: used as it is;
    * a list or tuple of ``torch.Generator``: one per sample (the caller checks the count);
    * an integer seed in 0 … 2**64 − 1: a fresh CPU generator seeded with it.

    Negative seeds are refused although ``manual_seed`` takes them: torch wraps them modulo
    2**64 (−1 is the seed 2**64 − 1), so two different numbers would give one noise stream.
    Floats, strings, bools and seeds beyond 64 bits are a :class:`ConfigError` naming the range.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if is_integer(generator):
        if not 0 <= generator <= SEED_MAX:
            why = " (a negative seed is refused: torch would wrap it onto a positive one)" if generator < 0 else ""
            raise ConfigError(f"{what} seed must be an integer in 0 … 2**64−1 = {SEED_MAX}, got {generator}{why}")
        return torch.Generator().manual_seed(int(generator))
    if isinstance(generator, (list, tuple)) and generator and all(isinstance(g, torch.Generator) for g in generator):
        return list(generator)
    shown = repr(generator) if len(repr(generator)) <= 60 else repr(generator)[:59] + "…"
    raise ConfigError(
        f"{what} must be None, an integer seed in 0 … 2**64−1, a torch.Generator or a non-empty list of them "
        f"(one per sample), got {shown} ({type(generator).__name__})"
    )


def float32_state(sampler: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Decorator: a float16/bfloat16 ``x`` is integrated in float32 and returned in its own dtype.

    One step's change is often below half precision's resolution (bfloat16 keeps 8 bits), so
    a many-step loop run in half precision stalls: with 1000 steps every built-in sampler
    drifted to twice the data's standard deviation. The solver state (and what the denoiser
    receives) is float32 instead; the network may still compute in half precision under
    autocast. Other dtypes pass through untouched.
    """

    @functools.wraps(sampler)
    def run(denoiser: Denoiser, x: torch.Tensor, sigmas: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        if x.dtype not in HALF_DTYPES:
            return sampler(denoiser, x, sigmas, *args, **kwargs)
        return sampler(denoiser, x.float(), sigmas, *args, **kwargs).to(x.dtype)

    return run


def sigma_levels(sigmas: torch.Tensor | Sequence[float]) -> list[float]:
    """Validate a σ sequence and return it as Python floats.

    Valid: 1-D, at least two entries, finite, strictly decreasing, last exactly 0.
    """
    # a Python list stays float64 (torch.as_tensor would round it to float32)
    s = sigmas.detach() if isinstance(sigmas, torch.Tensor) else torch.as_tensor(sigmas, dtype=torch.float64)
    if s.is_meta:
        raise ConfigError(META_SIGMAS)
    if s.ndim != 1 or s.numel() < 2:
        raise ConfigError(f"sigmas must be a 1-D sequence of at least 2 values ending at 0, got shape {tuple(s.shape)}")
    levels = s.to("cpu", torch.float64).tolist()
    bad = [i for i, v in enumerate(levels) if not math.isfinite(v)]
    if bad:
        raise ConfigError(f"sigmas must be finite; sigmas[{bad[0]}] = {levels[bad[0]]}")
    if levels[-1] != 0:
        raise ConfigError(f"sigmas must end at 0, got sigmas[-1] = {levels[-1]}")
    for i in range(len(levels) - 1):
        if not levels[i] > levels[i + 1]:
            raise ConfigError(
                f"sigmas must be strictly decreasing, but sigmas[{i}] = {levels[i]} and "
                f"sigmas[{i + 1}] = {levels[i + 1]}"
            )
    return levels


def sigma_batch(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """σ as the [B] tensor a denoiser receives: on x's device, in x's dtype but at least float32."""
    return torch.full((x.shape[0],), sigma, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)


def denoise(denoiser: Denoiser, x: torch.Tensor, sigma: float, cond: Any) -> torch.Tensor:
    """D(x, σ, cond) with σ broadcast to shape [B]; the result must be shaped like x."""
    denoised = denoiser(x, sigma_batch(x, sigma), cond)
    if denoised.shape != x.shape:
        raise ShapeError(
            f"the denoiser returned shape {tuple(denoised.shape)} for input of shape "
            f"{tuple(x.shape)}; it must return the x0 estimate, shaped like its input"
        )
    return denoised.to(x.dtype)


def randn_like(x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """Standard normal noise shaped like ``x``.

    ``generator`` may be one ``torch.Generator`` or a list with one per sample (row k drawn
    from generator k only, so a sample does not change with the batch size). Noise is drawn
    on the generator's device, in float32 for half types, then moved to x's device/dtype.
    """
    if generator is None:
        return torch.randn(x.shape, dtype=_draw_dtype(x), device=x.device).to(x.dtype)
    if isinstance(generator, torch.Generator):
        return _draw(x.shape, generator, x)
    generators = list(generator)
    if len(generators) != x.shape[0]:
        raise ConfigError(f"got {len(generators)} generators for a batch of {x.shape[0]}; pass one per sample")
    return torch.stack([_draw(x.shape[1:], g, x) for g in generators])


def _draw_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _draw(shape: torch.Size, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    noise = torch.randn(shape, generator=generator, device=generator.device, dtype=_draw_dtype(like))
    return noise.to(device=like.device, dtype=like.dtype)


def default_noise_sampler(x: torch.Tensor, generator: Generator) -> NoiseSampler:
    """A ``noise_sampler(sigma, sigma_next)`` drawing fresh N(0, I) noise from ``generator``."""
    return lambda sigma, sigma_next: randn_like(x, generator)


def check_eta(eta: float) -> float:
    """η must be a finite number ≥ 0."""
    if not is_real(eta) or not math.isfinite(eta) or eta < 0:
        raise ConfigError(f"eta must be a finite number ≥ 0 (0 = deterministic), got {eta!r}")
    return float(eta)


def check_s_noise(s_noise: float) -> float:
    """s_noise (the noise multiplier of k-diffusion's samplers) must be a finite number ≥ 0."""
    ok = not isinstance(s_noise, bool) and isinstance(s_noise, (int, float))
    if not ok or not math.isfinite(s_noise) or s_noise < 0:
        raise ConfigError(f"s_noise must be a finite number ≥ 0 (1 = the sampler's own noise), got {s_noise!r}")
    return float(s_noise)


def check_eta_s_noise(eta: float, s_noise: float) -> tuple[float, float]:
    """The options of the ancestral and SDE samplers: η and s_noise, each a finite number ≥ 0."""
    return check_eta(eta), check_s_noise(s_noise)


def report(
    callback: Callback | None, x: torch.Tensor, i: int, sigma: float, denoised: torch.Tensor,
    sigma_hat: float | None = None,
) -> None:
    """Call the per-step callback as k-diffusion does: keys x, i, sigma, sigma_hat, denoised.

    Called after step i's first denoiser evaluation and before its update: ``x`` is the sample
    that evaluation saw (the state entering the step, at ``sigma_hat``) and ``denoised`` its
    output. ``sigma_hat`` is the raised noise level a churned step actually started from (EDM
    Alg. 2); it defaults to ``sigma``.
    """
    if callback is not None:
        info = {"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma if sigma_hat is None else sigma_hat}
        callback({**info, "denoised": denoised})


def to_d(x: torch.Tensor, sigma: float, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE slope dy/dσ = (y − D(y, σ))/σ (Karras et al. 2022, eq. 3)."""
    return (x - denoised) / sigma


def ancestral_sigmas(sigma: float, sigma_next: float, eta: float) -> tuple[float, float]:
    """(σ_down, σ_up) of an ancestral step σ → σ_next with DDIM's η (eq. 16, σ form).

    σ_up is clamped to σ_next so σ_down is never the root of a negative number.
    """
    if eta == 0 or sigma_next == 0:
        return sigma_next, 0.0
    sigma_up = min(sigma_next, eta * sigma_next * math.sqrt(sigma**2 - sigma_next**2) / sigma)
    return math.sqrt(sigma_next**2 - sigma_up**2), sigma_up



StepRule = Callable[[float, float], "tuple[float, float]"]


def ancestral_loop(
    denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor | Sequence[float], rule: StepRule, *,
    cond: Any, generator: Generator, callback: Callback | None, noise_sampler: NoiseSampler | None,
) -> torch.Tensor:
    """The loop shared by ancestral samplers: per step σ → σ',

        D = denoiser(y, σ);   (keep, σ_up) = rule(σ, σ');   y' = D + keep·(y − D) + σ_up·z

    ``keep`` is the fraction of the current noise direction (y − D) that survives
    (σ_down/σ for DDIM, σ'²/σ² for the DDPM posterior mean); z ~ N(0, I) is drawn only
    when σ_up > 0.
    """
    levels = sigma_levels(sigmas)
    noise = noise_sampler or default_noise_sampler(x, generator)
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:])):
        denoised = denoise(denoiser, x, sigma, cond)
        report(callback, x, i, sigma, denoised)
        keep, sigma_up = rule(sigma, sigma_next)
        x = torch.lerp(denoised, x, keep)  # D + keep·(y − D), one fused kernel
        if sigma_up > 0:
            x = x.add_(noise(sigma, sigma_next), alpha=sigma_up)
    return x
