"""Backbone networks (``nn.Module``) and the layers they share.

Every backbone is called as ``model(x, t, cond=None)``: ``t`` [B] is the noise-level input in
the model's own units and ``cond`` the conditioning record. Built-ins are registered in
:mod:`diffkit.models.backbones.builtin`; build one with ``diffkit.build("backbone", name, **config)``.
"""

from diffkit.models.backbones.dit import PRESETS as DIT_PRESETS
from diffkit.models.backbones.dit import DiT, DiTConfig, build_dit
from diffkit.models.backbones.embeddings import (
    LabelEmbedder,
    TimestepEmbedder,
    class_labels,
    sincos_position_embedding_2d,
    timestep_embedding,
)
from diffkit.models.backbones.latent_unet import PRESETS as LATENT_UNET_PRESETS
from diffkit.models.backbones.latent_unet import (
    LatentUNet,
    LatentUNetConfig,
    SpatialTransformer,
    TransformerBlock,
    build_latent_unet,
    cross_attention_context,
)
from diffkit.models.backbones.layers import (
    AdaLNModulation,
    Attention,
    Downsample2D,
    FeedForward,
    ResBlock,
    Upsample2D,
    modulate,
)
from diffkit.models.backbones.unet import PRESETS as UNET_PRESETS
from diffkit.models.backbones.unet import UNet, UNetConfig, build_unet

__all__ = [
    "DIT_PRESETS", "LATENT_UNET_PRESETS", "UNET_PRESETS", "AdaLNModulation", "Attention", "DiT", "DiTConfig",
    "Downsample2D", "FeedForward", "LabelEmbedder", "LatentUNet", "LatentUNetConfig", "ResBlock",
    "SpatialTransformer", "TimestepEmbedder", "TransformerBlock", "UNet", "UNetConfig", "Upsample2D",
    "build_dit", "build_latent_unet", "build_unet", "class_labels", "cross_attention_context", "modulate",
    "sincos_position_embedding_2d", "timestep_embedding",
]
