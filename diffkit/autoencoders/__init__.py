"""Autoencoders between images and the latent space diffusion runs in.

An autoencoder has ``encode(x)`` → a posterior (``sample(generator)``, ``mode()``, ``kl()``),
``decode(z)`` → image, and ``encode_latents`` / ``decode_latents`` with the latent scaling.
Built-ins are registered in :mod:`diffkit.autoencoders.builtin`; build one with
``diffkit.build("autoencoder", "kl", preset="kl-f8")``.
"""

from diffkit.autoencoders.diffusers_kl import (
    config_from_diffusers,
    convert_diffusers_state_dict,
    expected_diffusers_shapes,
    kl_from_diffusers,
    load_diffusers_kl,
)
from diffkit.autoencoders.kl import PRESETS as KL_PRESETS
from diffkit.autoencoders.kl import DiagonalGaussian, KLAutoencoder, KLConfig, build_kl

__all__ = [
    "KL_PRESETS",
    "DiagonalGaussian",
    "KLAutoencoder",
    "KLConfig",
    "build_kl",
    "config_from_diffusers",
    "convert_diffusers_state_dict",
    "expected_diffusers_shapes",
    "kl_from_diffusers",
    "load_diffusers_kl",
]
