"""Load diffusers-format DiT checkpoints (``DiTTransformer2DModel``) into :class:`~diffkit.models.backbones.dit.DiT`.

Three steps, each usable alone:

* :func:`config_from_diffusers` — a diffusers ``config.json`` dict → :class:`DiTConfig`;
* :func:`convert_diffusers_state_dict` — diffusers weights → diffkit weights, after checking
  every key and shape (one error lists all missing, unexpected and mis-shaped keys);
* :func:`dit_from_diffusers` / :func:`load_diffusers_dit` — a ready :class:`DiT` from a
  config and weights, from a diffusers model object, or from a saved folder.

How the layouts differ:

* diffusers gives every block its own timestep/label embedder (``transformer_blocks.i.norm1.emb``);
  DiT has one, shared by all blocks, and diffusers' conversion of the original weights copies it
  into each block. diffkit keeps one: the copies must be equal (an error names the blocks
  whose copy differs) and block 0's is used. The final layer reads block 0's in diffusers too.
* q, k and v are separate linear layers there, one fused ``qkv`` layer here (stacked q, k, v).
* Two numerical conventions of diffusers' port differ from the DiT paper's code and are kept
  so that outputs agree with diffusers to float32 round-off: the timestep frequencies
  (``timestep_freq_shift=1``: f_i = 10000^(−i/(half−1)) instead of 10000^(−i/half)) and the ε
  of the MLP-branch layer norm (its ``norm_eps``, 1e-5 by default, instead of 1e-6). Pass
  ``timestep_freq_shift=0, mlp_norm_eps=1e-6`` to :func:`config_from_diffusers` to run
  converted original DiT weights exactly as the paper's code did.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from diffkit.errors import CheckpointError
from diffkit.io.converters import (
    DiffusersConverter,
    Plan,
    describe,
    diffusers_settings,
    meta_shapes,
    refuse,
    stack_weights,
    stacked_shapes,
    unmet,
)
from diffkit.models.backbones.dit import DiT, DiTConfig

__all__ = [
    "CONVERTER", "CheckpointError", "config_from_diffusers", "convert_diffusers_state_dict",
    "dit_from_diffusers", "expected_diffusers_shapes", "load_diffusers_dit",
]

DIFFUSERS_CLASSES = ("DiTTransformer2DModel", "Transformer2DModel")

# diffusers' defaults for keys a config may leave out, per class.
_DEFAULTS: dict[str, dict[str, Any]] = {
    "DiTTransformer2DModel": {
        "num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4, "out_channels": None,
        "num_layers": 28, "sample_size": 32, "patch_size": 2, "activation_fn": "gelu-approximate",
        "num_embeds_ada_norm": 1000, "attention_bias": True, "norm_type": "ada_norm_zero",
        "norm_elementwise_affine": False, "norm_eps": 1e-5,
    },
    "Transformer2DModel": {
        "num_attention_heads": 16, "attention_head_dim": 88, "in_channels": None, "out_channels": None,
        "num_layers": 1, "sample_size": None, "patch_size": None, "activation_fn": "geglu",
        "num_embeds_ada_norm": None, "attention_bias": False, "norm_type": "layer_norm",
        "norm_elementwise_affine": True, "norm_eps": 1e-5, "interpolation_scale": None,
    },
}
# Settings DiT needs; another value is an architecture diffkit's DiT does not have.
_REQUIRED = {
    "activation_fn": "gelu-approximate", "attention_bias": True, "norm_type": "ada_norm_zero",
    "norm_elementwise_affine": False,
    # Transformer2DModel only: the values that select its DiT path.
    "cross_attention_dim": None, "num_vector_embeds": None, "only_cross_attention": False,
    "double_self_attention": False, "attention_type": "default", "caption_channels": None,
    "use_additional_conditions": None,
}
# Keys that do not change the inference output (dropout) or are unused on DiT's path.
_IGNORED = ("dropout", "norm_num_groups", "upcast_attention", "use_linear_projection")


def config_from_diffusers(config: Mapping[str, Any], **overrides: Any) -> DiTConfig:
    """The :class:`DiTConfig` of a diffusers ``DiTTransformer2DModel`` config dict.

    Accepts ``model.config`` or the parsed ``config.json`` (keys starting with ``_`` are
    metadata; ``_class_name`` may also be ``Transformer2DModel`` with DiT's settings).
    ``overrides`` change fields of the result (e.g. ``gradient_checkpointing=True``).
    Unknown keys and settings DiT does not have are errors.
    """
    class_name, settings = diffusers_settings(
        config, _DEFAULTS, what="DiT", expected=f", expected one of {DIFFUSERS_CLASSES}", known=(*_REQUIRED, *_IGNORED)
    )
    wrong = unmet(settings, _REQUIRED, "DiT needs")
    in_channels, out_channels = settings["in_channels"], settings["out_channels"]
    if settings["num_embeds_ada_norm"] is None:
        wrong.append("num_embeds_ada_norm=None (DiT needs the number of classes)")
    if None in (settings["patch_size"], settings["sample_size"], in_channels):
        wrong.append("patch_size, sample_size and in_channels must be set")
    elif class_name == "Transformer2DModel":
        # Transformer2DModel scales its positions by interpolation_scale, max(sample_size // 64, 1) by default.
        scale = settings["interpolation_scale"] or max(settings["sample_size"] // 64, 1)
        if scale != 1:
            wrong.append(f"interpolation_scale={scale} (DiT's positions are the integer patch coordinates)")
    if in_channels is not None and out_channels not in (None, in_channels, 2 * in_channels):
        wrong.append(f"out_channels={out_channels} (DiT outputs in_channels or, with learned σ, 2·in_channels)")
    refuse(wrong, "DiT")
    fields = {
        "input_size": settings["sample_size"],
        "patch_size": settings["patch_size"],
        "in_channels": in_channels,
        "hidden_size": settings["num_attention_heads"] * settings["attention_head_dim"],
        "depth": settings["num_layers"],
        "num_heads": settings["num_attention_heads"],
        "mlp_ratio": 4.0,  # diffusers' FeedForward: inner width 4·D
        "num_classes": settings["num_embeds_ada_norm"],
        "learn_sigma": out_channels == 2 * in_channels,
        "timestep_freq_shift": 1,  # diffusers' downscale_freq_shift=1 for DiT's timesteps
        "mlp_norm_eps": float(settings["norm_eps"]),
    }
    return DiTConfig.from_dict({**fields, **overrides})


# -- weights --------------------------------------------------------------------------------

_EMBEDDER = "transformer_blocks.{i}.norm1.emb."
_EMBEDDER_KEYS = {  # diffkit key: key under diffusers' per-block embedder
    "t_embedder.mlp.0.weight": "timestep_embedder.linear_1.weight",
    "t_embedder.mlp.0.bias": "timestep_embedder.linear_1.bias",
    "t_embedder.mlp.2.weight": "timestep_embedder.linear_2.weight",
    "t_embedder.mlp.2.bias": "timestep_embedder.linear_2.bias",
    "y_embedder.embedding_table.weight": "class_embedder.embedding_table.weight",
}
# The settings a weights mismatch names.
_DESCRIBED = ("depth", "hidden_size", "patch_size", "input_size", "in_channels", "out_channels", "num_classes")


def _plan(config: DiTConfig) -> Plan:
    """diffkit key → diffusers keys; several diffusers keys are stacked along dim 0."""
    plan = {"patch_embed.weight": ("pos_embed.proj.weight",), "patch_embed.bias": ("pos_embed.proj.bias",)}
    plan |= {ours: (_EMBEDDER.format(i=0) + theirs,) for ours, theirs in _EMBEDDER_KEYS.items()}
    for i in range(config.depth):
        src, dst = f"transformer_blocks.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            plan |= {
                f"{dst}adaLN.linear.{kind}": (f"{src}norm1.linear.{kind}",),
                f"{dst}attn.qkv.{kind}": tuple(f"{src}attn1.to_{n}.{kind}" for n in "qkv"),
                f"{dst}attn.proj.{kind}": (f"{src}attn1.to_out.0.{kind}",),
                f"{dst}mlp.fc1.{kind}": (f"{src}ff.net.0.proj.{kind}",),
                f"{dst}mlp.fc2.{kind}": (f"{src}ff.net.2.{kind}",),
            }
    for kind in ("weight", "bias"):
        plan |= {
            f"final_layer.adaLN.linear.{kind}": (f"proj_out_1.{kind}",),
            f"final_layer.linear.{kind}": (f"proj_out_2.{kind}",),
        }
    return plan


def expected_diffusers_shapes(config: DiTConfig) -> dict[str, tuple[int, ...]]:
    """Every key of a diffusers state dict for ``config``, with its shape."""
    ours = meta_shapes(DiT, config)
    shapes = stacked_shapes(_plan(config), ours)
    for i in range(1, config.depth):  # the per-block copies of the embedder
        for ours_key, theirs in _EMBEDDER_KEYS.items():
            shapes[_EMBEDDER.format(i=i) + theirs] = ours[ours_key]
    return shapes


def convert_diffusers_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: DiTConfig
) -> dict[str, torch.Tensor]:
    """diffusers ``DiTTransformer2DModel`` weights → :class:`DiT` weights for ``config``.

    Raises :class:`CheckpointError` listing every missing, unexpected and mis-shaped key
    (diffusers names), or naming the blocks whose embedder copy differs from block 0's.
    """
    what = f"the diffusers DiT weights do not fit {describe(config, 'DiT', _DESCRIBED)}"
    weights = stack_weights(state_dict, _plan(config), expected_diffusers_shapes(config), what=what)
    differing = [
        i
        for i in range(1, config.depth)
        if not all(
            torch.equal(state_dict[_EMBEDDER.format(i=i) + k], state_dict[_EMBEDDER.format(i=0) + k])
            for k in _EMBEDDER_KEYS.values()
        )
    ]
    if differing:
        raise CheckpointError(
            "DiT shares one timestep/label embedder across its blocks, but the embedder copies "
            f"(transformer_blocks.i.norm1.emb) of blocks {differing} differ from block 0's, so "
            "these weights cannot be represented; a checkpoint converted from DiT has equal copies"
        )
    return weights


def dit_from_diffusers(
    model_or_config: Any, state_dict: Mapping[str, torch.Tensor] | None = None, **overrides: Any
) -> DiT:
    """A :class:`DiT` holding the weights of a diffusers DiT.

    Either ``dit_from_diffusers(diffusers_model)`` (a ``DiTTransformer2DModel`` instance) or
    ``dit_from_diffusers(config_dict, state_dict)``. ``overrides`` go to
    :func:`config_from_diffusers`. The result is in float32 on the CPU, in eval mode.
    """
    return CONVERTER(model_or_config, state_dict, **overrides)


def load_diffusers_dit(path: str | Path, **overrides: Any) -> DiT:
    """A :class:`DiT` from a saved diffusers model folder (``config.json`` + safetensors weights).

    ``path`` is the model folder or a pipeline folder with a ``transformer/`` subfolder.
    Sharded weights (``*.safetensors.index.json``) are read shard by shard.
    """
    return CONVERTER.load(path, **overrides)


CONVERTER = DiffusersConverter(
    diffusers_classes=DIFFUSERS_CLASSES, kind="backbone", name="dit", subfolder="transformer",
    config_from_diffusers=config_from_diffusers, convert_state_dict=convert_diffusers_state_dict,
)
"""The registered converter (``diffkit.get("converter", "dit")``)."""
