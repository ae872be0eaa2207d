"""diffkit_reference: a minimal float64 numpy reference of the diffusion equations.

Written in the papers' VP notation (x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,
abar_t = prod (1 - beta_s)); it is the yardstick diffkit's torch code is tested against.
Imports numpy only -- never torch.
"""

from .forward import (
    eps_from_v,
    eps_from_x0,
    q_posterior,
    q_sample,
    v_from_x0_eps,
    x0_from_eps,
    x0_from_v,
)
from .reverse import ddim_invert_step, ddim_sigma, ddim_step, ddpm_step
from .samplers import ddim_sample, ddpm_sample, euler_sample
from .schedules import (
    alphas_cumprod,
    alphas_cumprod_from_sigmas,
    betas_cosine,
    betas_linear,
    betas_scaled_linear,
    betas_sigmoid,
    rescale_zero_terminal_snr,
    sigmas_from_alphas_cumprod,
)
from .spacing import timesteps

__all__ = [
    "alphas_cumprod",
    "alphas_cumprod_from_sigmas",
    "betas_cosine",
    "betas_linear",
    "betas_scaled_linear",
    "betas_sigmoid",
    "ddim_invert_step",
    "ddim_sample",
    "ddim_sigma",
    "ddim_step",
    "ddpm_sample",
    "ddpm_step",
    "eps_from_v",
    "eps_from_x0",
    "euler_sample",
    "q_posterior",
    "q_sample",
    "rescale_zero_terminal_snr",
    "sigmas_from_alphas_cumprod",
    "timesteps",
    "v_from_x0_eps",
    "x0_from_eps",
    "x0_from_v",
]
