"""Parity with the sampler's float64 numpy reference twin (registered as ``reference=``).

Both run from the same x on the same σ grid with the same exact mixture denoiser (torch and
numpy faces of one :class:`~diffkit_reference.analytic.GaussianMixtureData`). Stochastic ones
get identical noise: each side has its own ``noise_sampler`` drawing standard normals from a
numpy generator with the same seed, so the k-th call on either side returns the same array.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from diffkit import registry
from diffkit.samplers.probe import accepts_keyword
from diffkit.testing import problems
from diffkit.testing.denoisers import RecordingDenoiser, numpy_denoiser, torch_from_numpy
from diffkit.testing.grids import karras_sigmas
from diffkit.testing.report import CheckResult, skipped, verdict
from diffkit.testing.subject import SamplerSubject

PARITY_RTOL = 1e-6  # max |torch − numpy| / max |numpy|, both float64
BATCH = 8
NOISE_SEED = 5


def _numpy_stream(shape: tuple[int, ...]) -> Callable[[float, float], np.ndarray]:
    """A noise_sampler(sigma, sigma_next) returning successive N(0, I) draws [shape] from a fixed seed."""
    rng = np.random.default_rng(NOISE_SEED)
    return lambda sigma, sigma_next: rng.standard_normal(shape)


def _grids() -> dict[str, torch.Tensor]:
    linear = registry.build("schedule", "linear", num_train_timesteps=1000)
    return {"karras-12": karras_sigmas(12, 0.01, 80.0), "linear-leading-10": linear.sigmas_for(10, "leading")}


def check_reference_parity(subject: SamplerSubject) -> list[CheckResult]:
    """Torch sampler vs its numpy twin on the mixture data; relative max gap ≤ :data:`PARITY_RTOL`."""
    if subject.reference is None:
        return [skipped("reference_parity", "no numpy reference twin registered")]
    data = problems.data("mixture")
    shape = (BATCH, *problems.POINT_SHAPE)
    if subject.stochastic and not subject.accepts_noise_sampler:
        return [verdict("reference_parity", False, "stochastic sampler does not accept noise_sampler, so it "
                        "cannot be fed the reference's noise")]
    noise = np.random.default_rng(3).standard_normal(shape)  # x = noise·σ_0, as callers pass it
    results = []
    for label, sigmas in _grids().items():
        name = f"reference_parity[{label}]"
        x_np = noise * float(sigmas[0])
        kwargs, ref_kwargs = {}, {}
        if subject.stochastic:
            kwargs["noise_sampler"] = _torch_stream(shape)
        if accepts_keyword(subject.reference, "noise_sampler"):
            ref_kwargs["noise_sampler"] = _numpy_stream(shape)
        expected = np.asarray(
            subject.reference(numpy_denoiser(data), x_np.copy(), sigmas.numpy().copy(), **ref_kwargs, **subject.options),
            dtype=np.float64,
        )
        out = subject(RecordingDenoiser(torch_from_numpy(data)), torch.from_numpy(x_np.copy()), sigmas,
                      generator=torch.Generator().manual_seed(0), **kwargs)
        got = out.detach().to("cpu", torch.float64).numpy()
        if got.shape != expected.shape:
            results.append(verdict(name, False, f"shape {list(got.shape)} vs reference {list(expected.shape)}"))
            continue
        gap = float(np.max(np.abs(got - expected)) / max(np.max(np.abs(expected)), 1e-300))
        detail = f"relative max gap to the numpy twin {gap:.2e} (need ≤ {PARITY_RTOL:g}), σ_max {float(sigmas[0]):.4g}"
        results.append(verdict(name, gap <= PARITY_RTOL, detail, gap))
    return results


def _torch_stream(shape: tuple[int, ...]) -> Callable[[float, float], torch.Tensor]:
    """The torch face of :func:`_numpy_stream`: the same draws as float64 tensors."""
    draw = _numpy_stream(shape)
    return lambda sigma, sigma_next: torch.from_numpy(draw(sigma, sigma_next))
