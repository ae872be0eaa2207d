"""Registers the built-in diffusers converters through the same hook a third-party plugin uses."""

from __future__ import annotations

from diffkit.hookspecs import hookimpl
from diffkit.io.diffusers.dit import CONVERTER as DIT_CONVERTER
from diffkit.io.diffusers.kl import CONVERTER as KL_CONVERTER
from diffkit.io.diffusers.latent_unet import CONVERTER as LATENT_UNET_CONVERTER
from diffkit.io.diffusers.unet import CONVERTER as UNET_CONVERTER
from diffkit.registry import Registrar


@hookimpl
def diffkit_register_converters(converters: Registrar) -> None:
    converters.add("dit", DIT_CONVERTER, summary="diffusers DiTTransformer2DModel / Transformer2DModel → backbone dit")
    converters.add("unet", UNET_CONVERTER, summary="diffusers UNet2DModel → backbone unet")
    converters.add("latent_unet", LATENT_UNET_CONVERTER, summary="diffusers UNet2DConditionModel → backbone latent_unet")
    converters.add("kl", KL_CONVERTER, summary="diffusers AutoencoderKL → autoencoder kl")
