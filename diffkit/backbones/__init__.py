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
from diffkit.backbones.dit import PRESETS as DIT_PRESETS
from diffkit.backbones.dit import DiT, DiTConfig, build_dit
from diffkit.backbones.embeddings import (
    LabelEmbedder,
    TimestepEmbedder,
    class_labels,
    sincos_position_embedding_2d,
    timestep_embedding,
)
from diffkit.backbones.layers import AdaLNModulation, Attention, FeedForward, modulate

__all__ = [
    "DIT_PRESETS",
    "AdaLNModulation",
    "Attention",
    "CheckpointError",
    "DiT",
    "DiTConfig",
    "FeedForward",
    "LabelEmbedder",
    "TimestepEmbedder",
    "build_dit",
    "class_labels",
    "config_from_diffusers",
    "convert_diffusers_state_dict",
    "dit_from_diffusers",
    "load_diffusers_dit",
    "modulate",
    "sincos_position_embedding_2d",
    "timestep_embedding",
]
