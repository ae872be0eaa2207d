"""Registers the built-in autoencoders and their diffusers converters through the same hooks a
third-party plugin uses."""

from __future__ import annotations

from diffkit.autoencoders.diffusers_kl import CONVERTER as KL_CONVERTER
from diffkit.autoencoders.kl import KLConfig, build_kl
from diffkit.hookspecs import hookimpl
from diffkit.registry import Registrar


@hookimpl
def diffkit_register_autoencoders(autoencoders: Registrar) -> None:
    autoencoders.add(
        "kl",
        build_kl,
        options=KLConfig,
        paper="Rombach et al. 2022, High-Resolution Image Synthesis with Latent Diffusion Models",
    )


@hookimpl
def diffkit_register_converters(converters: Registrar) -> None:
    converters.add("kl", KL_CONVERTER, summary="diffusers AutoencoderKL → autoencoder kl")
