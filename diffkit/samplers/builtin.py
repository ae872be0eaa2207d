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
from diffkit.samplers.edm import check_churn, dpm2, euler, heun
from diffkit.samplers.lms import check_order, lms
from diffkit.samplers.unipc import check_unipc, unipc
from diffkit_reference import multistep_samplers as multistep_reference
from diffkit_reference import ode_samplers as ode_reference
from diffkit_reference import samplers as reference
from diffkit_reference import stochastic_samplers as stochastic_reference


@hookimpl
def diffkit_register_samplers(samplers: Registrar) -> None:
    samplers.add("ddim", ddim, check=check_eta, reference=reference.ddim_sample, order=1, paper="Song et al. 2021")
    samplers.add("ddpm", ddpm, check=check_variance, reference=reference.ddpm_sample, order=1, paper="Ho et al. 2020")
    # single-step and linear-multistep ODE solvers (EDM churn options on the single-step ones)
    samplers.add("euler", euler, check=check_churn, reference=ode_reference.edm_euler_sample, order=1,
                 paper="Karras et al. 2022, Alg. 2 (Euler step)")
    samplers.add("heun", heun, check=check_churn, reference=ode_reference.edm_heun_sample, order=2,
                 paper="Karras et al. 2022, Alg. 2")
    samplers.add("dpm2", dpm2, check=check_churn, reference=ode_reference.dpm2_sample, order=2,
                 paper="Lu et al. 2022, DPM-Solver-2 (k-diffusion's log-σ midpoint)")
    samplers.add("lms", lms, check=check_order, reference=ode_reference.lms_sample, order=4,
                 paper="Adams-Bashforth on the σ grid, k-diffusion sample_lms (Crowson 2022)")
    # exponential-integrator multistep solvers in λ = −log σ (data prediction)
    samplers.add("dpmpp_2m", dpmpp_2m, reference=multistep_reference.dpmpp_2m_sample, order=2,
                 paper="Lu et al. 2022, DPM-Solver++ Alg. 2 (2M)")
    samplers.add("dpmpp_3m", dpmpp_3m, check=check_dpmpp_3m, reference=multistep_reference.dpmpp_3m_sample,
                 order=3, paper="Lu et al. 2022, DPM-Solver++(3M) (multistep, third order)")
    samplers.add("unipc", unipc, check=check_unipc, reference=multistep_reference.unipc_sample, order=3,
                 paper="Zhao et al. 2023, UniPC-p (UniP-p + UniC-p, B(h) = bh2), order p + 1")
    # ancestral and SDE samplers (noise from noise_sampler, e.g. a Brownian tree; orders are at η = 0)
    samplers.add("euler_ancestral", euler_ancestral, check=check_ancestral,
                 reference=stochastic_reference.euler_ancestral_sample, order=1,
                 paper="Karras et al. 2022 / k-diffusion sample_euler_ancestral (Crowson 2022)")
    samplers.add("dpmpp_2s_ancestral", dpmpp_2s_ancestral, check=check_ancestral,
                 reference=stochastic_reference.dpmpp_2s_ancestral_sample, order=2,
                 paper="Lu et al. 2022, DPM-Solver++ Alg. 1 (2S, r = 1/2) with ancestral noise")
    samplers.add("dpmpp_2m_sde", dpmpp_2m_sde, check=check_dpmpp_2m_sde,
                 reference=stochastic_reference.dpmpp_2m_sde_sample, order=2,
                 paper="Lu et al. 2022, DPM-Solver++(2M) SDE (k-diffusion sample_dpmpp_2m_sde)")
    samplers.add("dpmpp_3m_sde", dpmpp_3m_sde, check=check_dpmpp_3m_sde,
                 reference=stochastic_reference.dpmpp_3m_sde_sample, order=3,
                 paper="Lu et al. 2022, DPM-Solver++(3M) SDE (k-diffusion sample_dpmpp_3m_sde)")
