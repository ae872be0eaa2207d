"""Registers the built-in backbones through the same hook a third-party plugin uses."""

from __future__ import annotations

from diffkit.hookspecs import hookimpl
from diffkit.integrations.diffusers.backbones import DiffusersTransformerConfig, build_diffusers_transformer
from diffkit.models.backbones.dit import DiTConfig, build_dit
from diffkit.models.backbones.latent_unet import LatentUNetConfig, build_latent_unet
from diffkit.models.backbones.unet import UNetConfig, build_unet
from diffkit.registry import Registrar


@hookimpl
def diffkit_register_backbones(backbones: Registrar) -> None:
    backbones.add(
        "dit", build_dit, options=DiTConfig, paper="Peebles & Xie 2023, Scalable Diffusion Models with Transformers"
    )
    backbones.add("unet", build_unet, options=UNetConfig, paper="Ho et al. 2020; Dhariwal & Nichol 2021")
    backbones.add("latent_unet", build_latent_unet, options=LatentUNetConfig,
                  paper="Rombach et al. 2022, High-Resolution Image Synthesis with Latent Diffusion Models")
    # diffusers' PixArt / SD3 / Flux transformers, wrapped (the module imports diffusers only when one is built)
    backbones.add("diffusers_transformer", build_diffusers_transformer, options=DiffusersTransformerConfig,
                  paper="Chen et al. 2024 (PixArt-α/Σ); Esser et al. 2024 (SD3 MMDiT); Black Forest Labs 2024 (Flux.1)")

