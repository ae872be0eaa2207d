"""diffkit_reference: a minimal float64 numpy reference of the diffusion equations.

Written in the papers' VP notation (x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,
abar_t = prod (1 - beta_s)); it is the yardstick diffkit's torch code is tested against.
Imports numpy only -- never torch.
"""

from .forward import eps_from_v, eps_from_x0, q_posterior, q_sample, v_from_x0_eps, x0_from_eps, x0_from_v
from .losses import (
    discretized_gaussian_log_likelihood,
    learned_variance_log,
    min_snr_weight,
    normal_kl,
    training_target,
    vlb_term,
)
from .multistep_samplers import dpmpp_2m_sample, dpmpp_3m_sample, unipc_sample
from .ode_samplers import dpm2_sample, edm_euler_sample, edm_heun_sample, lms_coefficients, lms_sample
from .parameterizations import (
    edm_denoise,
    edm_loss_weight,
    edm_preconditioning,
    edm_training_target,
    guided_x0,
    learned_variance_frac,
    vp_denoise,
    vp_preconditioning,
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
from .stochastic_samplers import (
    dpmpp_2m_sde_sample,
    dpmpp_2s_ancestral_sample,
    dpmpp_3m_sde_sample,
    euler_ancestral_sample,
)

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
    "discretized_gaussian_log_likelihood",
    "dpm2_sample",
    "dpmpp_2m_sample",
    "dpmpp_2m_sde_sample",
    "dpmpp_2s_ancestral_sample",
    "dpmpp_3m_sample",
    "dpmpp_3m_sde_sample",
    "edm_denoise",
    "edm_euler_sample",
    "edm_heun_sample",
    "edm_loss_weight",
    "edm_preconditioning",
    "edm_training_target",
    "eps_from_v",
    "eps_from_x0",
    "euler_ancestral_sample",
    "euler_sample",
    "guided_x0",
    "learned_variance_frac",
    "learned_variance_log",
    "lms_coefficients",
    "lms_sample",
    "min_snr_weight",
    "normal_kl",
    "q_posterior",
    "q_sample",
    "rescale_zero_terminal_snr",
    "sigmas_from_alphas_cumprod",
    "timesteps",
    "training_target",
    "unipc_sample",
    "v_from_x0_eps",
    "vlb_term",
    "vp_denoise",
    "vp_preconditioning",
    "x0_from_eps",
    "x0_from_v",
]
