"""Samplers in σ form with the k-diffusion contract ``fn(denoiser, x, sigmas, *, cond, generator, callback, **options)``.

One family per module; every built-in is registered in :mod:`diffkit.samplers.builtin`.
"""

from diffkit.samplers.ancestral import dpmpp_2s_ancestral, euler_ancestral
from diffkit.samplers.common import randn_like, sigma_levels
from diffkit.samplers.ddim import DDIMOptions, ddim
from diffkit.samplers.ddpm import DDPMOptions, ddpm
from diffkit.samplers.dpmpp_multistep import dpmpp_2m, dpmpp_3m
from diffkit.samplers.dpmpp_sde import dpmpp_2m_sde, dpmpp_3m_sde
from diffkit.samplers.euler import euler
from diffkit.samplers.heun import dpm2, heun
from diffkit.samplers.lms import lms
from diffkit.samplers.noise import BrownianTreeNoiseSampler
from diffkit.samplers.unipc import unipc

__all__ = [
    "BrownianTreeNoiseSampler",
    "DDIMOptions",
    "DDPMOptions",
    "ddim",
    "ddpm",
    "dpm2",
    "dpmpp_2m",
    "dpmpp_2m_sde",
    "dpmpp_2s_ancestral",
    "dpmpp_3m",
    "dpmpp_3m_sde",
    "euler",
    "euler_ancestral",
    "heun",
    "lms",
    "randn_like",
    "sigma_levels",
    "unipc",
]
