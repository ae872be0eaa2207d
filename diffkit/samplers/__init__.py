"""Samplers in σ form with the k-diffusion contract ``fn(denoiser, x, sigmas, *, cond, generator, callback, **options)``.

The contract's arguments, the same for every sampler (their docstrings list only their options):

* ``denoiser(x, sigma[B], cond) -> x0 estimate``;
* ``x``: the starting point in σ form, ``noise * sigmas[0]``, shape [B, ...];
* ``sigmas``: decreasing σ levels ending at 0 (any device; read once as float64);
* ``cond``: passed to the denoiser unchanged; ``generator``: a ``torch.Generator`` (or one per
  sample) for the noise of stochastic samplers, accepted and unused by deterministic ones;
* ``callback(info)`` once per step, as k-diffusion calls it: after the step's first denoiser
  evaluation, before the update, with ``x`` the sample that evaluation saw (the state entering
  step ``i``, churned to ``sigma_hat``), ``sigma`` = σ_i, ``sigma_hat`` and ``denoised`` its output.

One family per module (edm: Euler, Heun, DPM2 and their churn; ancestral; ddim; ddpm; lms;
dpmpp_multistep; dpmpp_sde; unipc); every built-in is registered in
:mod:`diffkit.samplers.builtin`.
"""

from diffkit.samplers.ancestral import dpmpp_2s_ancestral, euler_ancestral
from diffkit.samplers.common import randn_like, sigma_levels
from diffkit.samplers.ddim import ddim
from diffkit.samplers.ddpm import ddpm
from diffkit.samplers.dpmpp_multistep import dpmpp_2m, dpmpp_3m
from diffkit.samplers.dpmpp_sde import dpmpp_2m_sde, dpmpp_3m_sde
from diffkit.samplers.edm import dpm2, euler, heun
from diffkit.samplers.lms import lms
from diffkit.samplers.noise import BrownianTreeNoiseSampler
from diffkit.samplers.unipc import unipc

__all__ = [
    "BrownianTreeNoiseSampler", "ddim", "ddpm", "dpm2", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_2s_ancestral",
    "dpmpp_3m", "dpmpp_3m_sde", "euler", "euler_ancestral", "heun", "lms", "randn_like", "sigma_levels",
    "unipc",
]
