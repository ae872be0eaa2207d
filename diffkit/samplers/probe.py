"""What a sampler function is, found by calling it: whether it takes a keyword, whether it is random.

Shared by the conformance kit (:mod:`diffkit.testing.subject`) and by ``optimize_sigmas``,
which fits only deterministic samplers.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

from diffkit.samplers.contract import SamplerFn

# The probe: the exact denoiser of x0 ~ N(0, s²·I) with s = 0.5, D(x, σ) = s²/(s² + σ²)·x, on a
# geometric grid of 10 levels from 80 to 0.05 (then 0). Any sampler that draws noise draws some here.
PROBE_STD = 0.5
PROBE_SIGMAS = (*torch.logspace(torch.log10(torch.tensor(80.0)), torch.log10(torch.tensor(0.05)), 10).tolist(), 0.0)


def accepts_keyword(fn: Callable[..., Any], keyword: str) -> bool:
    """Whether ``fn`` takes ``keyword`` (by name or through ``**kwargs``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # no introspectable signature: assume it does
        return True
    return keyword in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _probe_denoiser(x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
    s = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))  # [B, 1, ..., 1]
    return PROBE_STD**2 / (PROBE_STD**2 + s * s) * x


def is_stochastic(fn: SamplerFn, **options: Any) -> bool:
    """True when two runs with generators seeded differently give different results.

    Needs no metadata: runs ``fn`` twice (10 steps, float64, x of shape [2, 3, 4, 4]) with
    generators seeded 11 and 12. A sampler that draws from torch's global RNG also comes out
    stochastic here. Raises whatever the sampler raises.
    """
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 80.0
    sigmas = torch.tensor(PROBE_SIGMAS, dtype=torch.float64)
    runs = [
        fn(_probe_denoiser, x.clone(), sigmas, generator=torch.Generator().manual_seed(seed), **options)
        for seed in (11, 12)
    ]
    return not torch.equal(runs[0], runs[1])
