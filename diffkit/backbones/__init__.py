"""Backbone networks (``nn.Module``) and the layers they share.

Every backbone is called as ``model(x, t, cond=None)``: ``t`` [B] is the noise-level input in
the model's own units and ``cond`` the conditioning record. Built-ins are registered in
:mod:`diffkit.backbones.builtin`; build one with ``diffkit.build("backbone", name, **config)``.
"""

from diffkit.backbones.diffusers_dit import (
    CheckpointError,
    config_from_diffusers,
    convert_diffusers_state_dict,
    dit_from_diffusers,
    load_diffusers_dit,
)
from diffkit.backbones.diffusers_latent_unet import (
    latent_unet_from_diffusers,
    load_diffusers_latent_unet,
)
from diffkit.backbones.diffusers_unet import load_diffusers_unet, unet_from_diffusers
from diffkit.backbones.dit import PRESETS as DIT_PRESETS
from diffkit.backbones.dit import DiT, DiTConfig, build_dit
from diffkit.backbones.embeddings import (
    LabelEmbedder,
    TimestepEmbedder,
    class_labels,
    sincos_position_embedding_2d,
    timestep_embedding,
)
from diffkit.backbones.latent_unet import PRESETS as LATENT_UNET_PRESETS
from diffkit.backbones.latent_unet import (
    LatentUNet,
    LatentUNetConfig,
    SpatialTransformer,
    TransformerBlock,
    build_latent_unet,
    cross_attention_context,
)
from diffkit.backbones.layers import (
    AdaLNModulation,
    Attention,
    Downsample2D,
    FeedForward,
    ResBlock,
    Upsample2D,
    modulate,
)
from diffkit.backbones.unet import PRESETS as UNET_PRESETS
from diffkit.backbones.unet import UNet, UNetConfig, build_unet

__all__ = [
    "DIT_PRESETS",
    "LATENT_UNET_PRESETS",
    "UNET_PRESETS",
    "AdaLNModulation",
    "Attention",
    "CheckpointError",
    "DiT",
    "DiTConfig",
    "Downsample2D",
    "FeedForward",
    "LabelEmbedder",
    "LatentUNet",
    "LatentUNetConfig",
    "ResBlock",
    "SpatialTransformer",
    "TimestepEmbedder",
    "TransformerBlock",
    "UNet",
    "UNetConfig",
    "Upsample2D",
    "build_dit",
    "build_latent_unet",
    "build_unet",
    "class_labels",
    "config_from_diffusers",
    "convert_diffusers_state_dict",
    "cross_attention_context",
    "dit_from_diffusers",
    "latent_unet_from_diffusers",
    "load_diffusers_dit",
    "load_diffusers_latent_unet",
    "load_diffusers_unet",
    "modulate",
    "sincos_position_embedding_2d",
    "timestep_embedding",
    "unet_from_diffusers",
]
