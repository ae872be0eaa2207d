"""Samplers in σ form with the k-diffusion contract ``fn(denoiser, x, sigmas, *, cond, generator, callback, **options)``."""

from diffkit.samplers.common import randn_like, sigma_levels
from diffkit.samplers.ddim import DDIMOptions, ddim
from diffkit.samplers.ddpm import DDPMOptions, ddpm

__all__ = ["DDIMOptions", "DDPMOptions", "ddim", "ddpm", "randn_like", "sigma_levels"]
