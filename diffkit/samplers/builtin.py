"""Registers the built-in samplers through the same hook a third-party plugin uses.

Each entry names the function that checks its options (``check=``), so a bad value is refused
when the sampler is chosen; the defaults are stated once, in the sampler's signature.
"""

from __future__ import annotations

from diffkit.hookspecs import hookimpl
from diffkit.registry import Registrar
from diffkit.samplers.ancestral import check_ancestral, dpmpp_2s_ancestral, euler_ancestral
from diffkit.samplers.common import check_eta
from diffkit.samplers.ddim import ddim
from diffkit.samplers.ddpm import check_variance, ddpm
from diffkit.samplers.dpmpp_multistep import check_dpmpp_3m, dpmpp_2m, dpmpp_3m
from diffkit.samplers.dpmpp_sde import check_dpmpp_2m_sde, check_dpmpp_3m_sde, dpmpp_2m_sde, dpmpp_3m_sde
from diffkit.samplers.edm import check_churn, check_heun, dpm2, euler, heun
from diffkit.samplers.lms import check_order, lms
from diffkit.samplers.unipc import check_unipc, unipc
from diffkit_reference import multistep_samplers as multistep_reference
from diffkit_reference import ode_samplers as ode_reference
from diffkit_reference import samplers as reference
from diffkit_reference import stochastic_samplers as stochastic_reference

# (name, sampler, the check of its options, its float64 numpy twin, order, paper), by family; the
# orders of the stochastic samplers are at η = 0. An order describes the sampler's default options
# (the kit checks every option set against it): dpmpp_3m and dpmpp_3m_sde default to DPM-Solver's
# half-weight second difference (d2_weight="dpm_solver"), second order; their d2_weight="taylor"
# variant is third order, checked in tests/samplers.
_DDPM_DDIM = (
    ("ddim", ddim, check_eta, reference.ddim_sample, 1, "Song et al. 2021"),
    ("ddpm", ddpm, check_variance, reference.ddpm_sample, 1, "Ho et al. 2020"),
)
# single-step ODE solvers with EDM's churn options
_EDM_SOLVERS = (
    ("euler", euler, check_churn, ode_reference.edm_euler_sample, 1, "Karras et al. 2022, Alg. 2 (Euler step)"),
    ("heun", heun, check_heun, ode_reference.edm_heun_sample, 2,
     "Karras et al. 2022, Alg. 2; time='flow': diffusers' FlowMatchHeunDiscreteScheduler"),
    ("dpm2", dpm2, check_churn, ode_reference.dpm2_sample, 2,
     "Lu et al. 2022, DPM-Solver-2 (k-diffusion's log-σ midpoint)"),
)
# multistep ODE solvers: linear multistep in σ, then exponential integrators in λ = −log σ (data prediction)
_MULTISTEP_SOLVERS = (
    ("lms", lms, check_order, ode_reference.lms_sample, 4,
     "Adams-Bashforth on the σ grid, k-diffusion sample_lms (Crowson 2022)"),
    ("dpmpp_2m", dpmpp_2m, None, multistep_reference.dpmpp_2m_sample, 2, "Lu et al. 2022, DPM-Solver++ Alg. 2 (2M)"),
    ("dpmpp_3m", dpmpp_3m, check_dpmpp_3m, multistep_reference.dpmpp_3m_sample, 2,
     "Lu et al. 2022, DPM-Solver++(3M) (multistep; d2_weight='taylor': third order)"),
    ("unipc", unipc, check_unipc, multistep_reference.unipc_sample, 3,
     "Zhao et al. 2023, UniPC-p (UniP-p + UniC-p, B(h) = bh2), order p + 1"),
)
# ancestral and SDE samplers (noise from noise_sampler, e.g. a Brownian tree)
_STOCHASTIC_SAMPLERS = (
    ("euler_ancestral", euler_ancestral, check_ancestral, stochastic_reference.euler_ancestral_sample, 1,
     "Karras et al. 2022 / k-diffusion sample_euler_ancestral (Crowson 2022)"),
    ("dpmpp_2s_ancestral", dpmpp_2s_ancestral, check_ancestral, stochastic_reference.dpmpp_2s_ancestral_sample, 2,
     "Lu et al. 2022, DPM-Solver++ Alg. 1 (2S, r = 1/2) with ancestral noise"),
    ("dpmpp_2m_sde", dpmpp_2m_sde, check_dpmpp_2m_sde, stochastic_reference.dpmpp_2m_sde_sample, 2,
     "Lu et al. 2022, DPM-Solver++(2M) SDE (k-diffusion sample_dpmpp_2m_sde)"),
    ("dpmpp_3m_sde", dpmpp_3m_sde, check_dpmpp_3m_sde, stochastic_reference.dpmpp_3m_sde_sample, 2,
     "Lu et al. 2022, DPM-Solver++(3M) SDE (k-diffusion sample_dpmpp_3m_sde; d2_weight='taylor': third order)"),
)


@hookimpl
def diffkit_register_samplers(samplers: Registrar) -> None:
    for family in (_DDPM_DDIM, _EDM_SOLVERS, _MULTISTEP_SOLVERS, _STOCHASTIC_SAMPLERS):
        for name, sampler, check, twin, order, paper in family:
            samplers.add(name, sampler, check=check, reference=twin, order=order, paper=paper)
