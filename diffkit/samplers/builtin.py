"""Registers the built-in samplers through the same hook a third-party plugin uses."""

from __future__ import annotations

from diffkit_reference import samplers as reference

from diffkit.hookspecs import hookimpl
from diffkit.registry import Registrar
from diffkit.samplers.ddim import DDIMOptions, ddim
from diffkit.samplers.ddpm import DDPMOptions, ddpm


@hookimpl
def diffkit_register_samplers(samplers: Registrar) -> None:
    samplers.add(
        "ddim", ddim, options=DDIMOptions, reference=reference.ddim_sample, order=1, paper="Song et al. 2021"
    )
    samplers.add(
        "ddpm", ddpm, options=DDPMOptions, reference=reference.ddpm_sample, order=1, paper="Ho et al. 2020"
    )
