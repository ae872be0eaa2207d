"""The types of the sampler contract ``fn(denoiser, x, sigmas, *, cond, generator, callback, **options)``.

One home for the annotations every sampler, and every caller of one, writes (the arguments
are documented in :mod:`diffkit.samplers`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Union

import torch

SamplerFn = Callable[..., torch.Tensor]  # the sampler itself
Denoiser = Callable[..., torch.Tensor]  # denoiser(x, sigma[B], cond) -> x0 estimate, shaped like x
Generator = Union[torch.Generator, Sequence[torch.Generator], None]  # one, one per sample, or torch's global one
NoiseSampler = Callable[[float, float], torch.Tensor]  # noise_sampler(sigma, sigma_next) -> N(0, I) like x
# callback({"x", "i", "sigma", "sigma_hat", "denoised"}) at step i, before the update: x entering it (k-diffusion's)
Callback = Callable[[dict[str, Any]], None]
