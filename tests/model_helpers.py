"""Helpers shared by the model, converter and loading tests: random weights that zero-initialised
layers cannot hide, and tiny diffusers originals to convert."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

_NORMS = (nn.GroupNorm, nn.LayerNorm)


def randomize(model: nn.Module, seed: int = 0, std: float = 0.2) -> nn.Module:
    """Overwrite every parameter with N(0, std²), the scales of normalisation layers with 1 + N(0, std²)."""
    g = torch.Generator().manual_seed(seed)
    scales = {id(m.weight) for m in model.modules() if isinstance(m, _NORMS) and m.weight is not None}
    with torch.no_grad():
        for p in model.parameters():
            noise = torch.randn(p.shape, generator=g) * std
            p.copy_(1 + noise if id(p) in scales else noise)
    return model


def perturb(model: nn.Module, scale: float = 0.05, seed: int = 0) -> nn.Module:
    """Add scale·N(0, 1) to every parameter (the zero-initialised layers would hide most of the network)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


# -- tiny diffusers originals ----------------------------------------------------------------------


def perturbed_diffusers(class_name: str, **config: Any) -> nn.Module:
    """diffusers' ``class_name(**config)`` (16×16 samples unless ``config`` says), perturbed, in eval mode."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    return perturb(getattr(diffusers, class_name)(**{"sample_size": 16, **config})).eval()


def tiny_diffusers_dit(**config: Any) -> nn.Module:
    """diffusers' DiTTransformer2DModel, 2 layers of 2 × 8-wide heads on 8×8×4 latents, 10 classes, learned σ
    (``config`` overrides), randomized, in eval mode."""
    diffusers = pytest.importorskip("diffusers")
    settings = {"num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 4, "out_channels": 8,
                "num_layers": 2, "sample_size": 8, "patch_size": 2, "num_embeds_ada_norm": 10}
    model = randomize(diffusers.DiTTransformer2DModel(**{**settings, **config}), seed=3, std=0.3).eval()
    state = model.state_dict()
    with torch.no_grad():  # diffusers' per-block embedders: equal copies, as in converted DiT weights
        for key, value in state.items():
            if ".norm1.emb." in key:
                value.copy_(state["transformer_blocks.0." + key.split(".", 2)[2]])
    return model
