"""Autoencoders between images and the latent space diffusion runs in.

An autoencoder has ``encode(x)`` → a posterior (``sample(generator)``, ``mode()``, ``kl()``),
``decode(z)`` → image, and ``encode_latents`` / ``decode_latents`` with the latent scaling.
Built-ins are registered in :mod:`diffkit.models.autoencoders.builtin`; build one with
``diffkit.build("autoencoder", "kl", preset="kl-f8")``.
"""

from diffkit.models.autoencoders.kl import PRESETS as KL_PRESETS
from diffkit.models.autoencoders.kl import DiagonalGaussian, KLAutoencoder, KLConfig, build_kl

__all__ = [
    "KL_PRESETS", "DiagonalGaussian", "KLAutoencoder", "KLConfig", "build_kl",
]
