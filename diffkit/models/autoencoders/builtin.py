"""Registers the built-in autoencoders through the same hook a third-party plugin uses."""

from __future__ import annotations

from diffkit.hookspecs import hookimpl
from diffkit.models.autoencoders.kl import KLConfig, build_kl
from diffkit.registry import Registrar


@hookimpl
def diffkit_register_autoencoders(autoencoders: Registrar) -> None:
    autoencoders.add("kl", build_kl, options=KLConfig,
                     paper="Rombach et al. 2022, High-Resolution Image Synthesis with Latent Diffusion Models")

