"""Registers the built-in backbones and their diffusers converters through the same hooks a
third-party plugin uses."""

from __future__ import annotations

from diffkit.backbones.diffusers_dit import CONVERTER as DIT_CONVERTER
from diffkit.backbones.diffusers_latent_unet import CONVERTER as LATENT_UNET_CONVERTER
from diffkit.backbones.diffusers_unet import CONVERTER as UNET_CONVERTER
from diffkit.backbones.dit import DiTConfig, build_dit
from diffkit.backbones.latent_unet import LatentUNetConfig, build_latent_unet
from diffkit.backbones.unet import UNetConfig, build_unet
from diffkit.hookspecs import hookimpl
from diffkit.registry import Registrar


@hookimpl
def diffkit_register_backbones(backbones: Registrar) -> None:
    backbones.add(
        "dit", build_dit, options=DiTConfig, paper="Peebles & Xie 2023, Scalable Diffusion Models with Transformers"
    )
    backbones.add("unet", build_unet, options=UNetConfig, paper="Ho et al. 2020; Dhariwal & Nichol 2021")
    backbones.add(
        "latent_unet",
        build_latent_unet,
        options=LatentUNetConfig,
        paper="Rombach et al. 2022, High-Resolution Image Synthesis with Latent Diffusion Models",
    )


@hookimpl
def diffkit_register_converters(converters: Registrar) -> None:
    converters.add("dit", DIT_CONVERTER, summary="diffusers DiTTransformer2DModel / Transformer2DModel → backbone dit")
    converters.add("unet", UNET_CONVERTER, summary="diffusers UNet2DModel → backbone unet")
    converters.add("latent_unet", LATENT_UNET_CONVERTER, summary="diffusers UNet2DConditionModel → backbone latent_unet")
