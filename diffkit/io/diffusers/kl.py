"""Load diffusers-format KL autoencoders (``AutoencoderKL``) into :class:`~diffkit.models.autoencoders.kl.KLAutoencoder`.

Three steps, each usable alone:

* :func:`config_from_diffusers` — a diffusers ``config.json`` dict → :class:`KLConfig`;
* :func:`convert_diffusers_state_dict` — diffusers weights → diffkit weights, after checking
  every key and shape (one error lists all missing, unexpected and mis-shaped keys);
* :func:`kl_from_diffusers` / :func:`load_diffusers_kl` — a ready :class:`KLAutoencoder` from a
  config and weights, from a diffusers model object, or from a saved folder (a VAE folder or a
  pipeline folder with a ``vae/`` subfolder).

How the layouts differ (everything else has the same name and shape):

* mid-block attention: diffusers' ``attentions.0.{group_norm, to_q, to_k, to_v, to_out.0}``
  is diffkit's ``attention.{norm, attn.qkv, attn.proj}``, with q, k, v stacked along dim 0
  into one fused projection. Older checkpoints name them ``query``/``key``/``value``/
  ``proj_attn`` (possibly as 1×1 convolutions); those are accepted too.
* resampling: diffusers' ``down_blocks.i.downsamplers.0`` / ``up_blocks.i.upsamplers.0`` are
  ``down_blocks.i.resample`` / ``up_blocks.i.resample`` here.

Numerics are the same as diffusers' (stride-2 conv after a right/bottom zero pad, nearest ×2
then conv, log σ² clamped to [−30, 20]), so outputs agree to float32 round-off.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from diffkit.errors import CheckpointError
from diffkit.io.converters import DiffusersConverter, describe, diffusers_settings, refuse, remap, stack_weights
from diffkit.models.autoencoders.kl import KLAutoencoder, KLConfig

__all__ = [
    "CONVERTER", "CheckpointError", "config_from_diffusers", "convert_diffusers_state_dict",
    "expected_diffusers_shapes", "kl_from_diffusers", "load_diffusers_kl",
]

DIFFUSERS_CLASS = "AutoencoderKL"

# diffusers' defaults (AutoencoderKL.__init__) for keys a config may leave out.
_DEFAULTS: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "down_block_types": ("DownEncoderBlock2D",),
    "up_block_types": ("UpDecoderBlock2D",), "block_out_channels": (64,), "layers_per_block": 1,
    "act_fn": "silu", "latent_channels": 4, "norm_num_groups": 32, "sample_size": 32,
    "scaling_factor": 0.18215, "shift_factor": None, "latents_mean": None, "latents_std": None,
    "force_upcast": True, "use_quant_conv": True, "use_post_quant_conv": True,
    "mid_block_add_attention": True,
}
# Keys that do not change the network or its latent scaling.
_IGNORED = ("sample_size", "force_upcast")


def config_from_diffusers(config: Mapping[str, Any], **overrides: Any) -> KLConfig:
    """The :class:`KLConfig` of a diffusers ``AutoencoderKL`` config dict.

    Accepts ``model.config`` or the parsed ``config.json`` (keys starting with ``_`` are
    metadata). ``overrides`` change fields of the result (e.g. ``dropout=0.1``). Unknown keys
    and settings diffkit's ``kl`` does not have are errors.
    """
    _, settings = diffusers_settings(
        config, {DIFFUSERS_CLASS: _DEFAULTS}, what="KL autoencoder", expected=f", expected {DIFFUSERS_CLASS!r}"
    )
    widths = tuple(settings["block_out_channels"])
    wrong = []
    for key, block in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        types = tuple(settings[key])
        if types != (block,) * len(widths):
            wrong.append(f"{key}={list(types)} (needs {len(widths)} × {block!r}, one per block_out_channels)")
    if settings["act_fn"] != "silu":
        wrong.append(f"act_fn={settings['act_fn']!r} (needs 'silu')")
    if settings["use_quant_conv"] != settings["use_post_quant_conv"]:
        wrong.append("use_quant_conv and use_post_quant_conv differ (diffkit has both convs or neither)")
    for key in ("latents_mean", "latents_std"):
        if settings[key] is not None:
            wrong.append(f"{key} is set (per-channel latent statistics are not supported; use shift/scaling_factor)")
    refuse(wrong, "KL autoencoder")
    fields = {
        "in_channels": settings["in_channels"],
        "out_channels": settings["out_channels"],
        "block_out_channels": widths,
        "layers_per_block": settings["layers_per_block"],
        "latent_channels": settings["latent_channels"],
        "norm_num_groups": settings["norm_num_groups"],
        "double_z": True,  # AutoencoderKL's encoder always outputs μ and log σ²
        "mid_block_attention": bool(settings["mid_block_add_attention"]),
        "use_quant_conv": bool(settings["use_quant_conv"]),
        "scaling_factor": float(settings["scaling_factor"]),
        "shift_factor": float(settings["shift_factor"] or 0.0),
    }
    return KLConfig.from_dict({**fields, **overrides})


# -- weights --------------------------------------------------------------------------------

# (pattern on a diffkit key, replacement giving the diffusers key), applied in order.
_RENAMES = (
    (re.compile(r"^encoder\.down_blocks\.(\d+)\.resample\."), r"encoder.down_blocks.\1.downsamplers.0."),
    (re.compile(r"^decoder\.up_blocks\.(\d+)\.resample\."), r"decoder.up_blocks.\1.upsamplers.0."),
    (re.compile(r"\.mid_block\.attention\.norm\."), r".mid_block.attentions.0.group_norm."),
    (re.compile(r"\.mid_block\.attention\.attn\.proj\."), r".mid_block.attentions.0.to_out.0."),
)
_QKV = re.compile(r"^(.*\.mid_block)\.attention\.attn\.qkv\.(weight|bias)$")
# Attention names of checkpoints saved before diffusers' Attention refactor.
_DEPRECATED = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
_DEPRECATED_KEY = re.compile(r"^(.*\.mid_block\.attentions\.0)\.(query|key|value|proj_attn)\.(weight|bias)$")
# The settings a weights mismatch names.
_DESCRIBED = (
    "block_out_channels", "layers_per_block", "latent_channels", "in_channels", "out_channels",
    "mid_block_attention", "use_quant_conv",
)


def _sources(key: str) -> tuple[str, ...]:
    """The diffusers key(s) of one diffkit key; several are stacked along dim 0."""
    match = _QKV.match(key)
    if match:
        prefix, kind = match.groups()
        return tuple(f"{prefix}.attentions.0.to_{n}.{kind}" for n in "qkv")
    for pattern, replacement in _RENAMES:
        key = pattern.sub(replacement, key)
    return (key,)


def expected_diffusers_shapes(config: KLConfig) -> dict[str, tuple[int, ...]]:
    """Every key of a diffusers ``AutoencoderKL`` state dict for ``config``, with its shape."""
    return remap(KLAutoencoder, config, _sources)[1]


def _modernise(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename pre-refactor attention keys (query/key/value/proj_attn) and squeeze 1×1 conv weights."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = _DEPRECATED_KEY.match(key)
        if match:
            prefix, name, kind = match.groups()
            key = f"{prefix}.{_DEPRECATED[name]}.{kind}"
            if kind == "weight" and value.ndim == 4 and value.shape[2:] == (1, 1):
                value = value[:, :, 0, 0]  # a 1×1 convolution is a linear layer
        out[key] = value
    return out


def convert_diffusers_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: KLConfig
) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKL`` weights → :class:`KLAutoencoder` weights for ``config``.

    Raises :class:`CheckpointError` listing every missing, unexpected and mis-shaped key
    (diffusers names); older attention names (``query`` … ``proj_attn``, 1×1 convs) are read too.
    """
    plan, expected = remap(KLAutoencoder, config, _sources)
    what = f"the diffusers AutoencoderKL weights do not fit {describe(config, 'KLAutoencoder', _DESCRIBED)}"
    return stack_weights(_modernise(state_dict), plan, expected, what=what)


def kl_from_diffusers(
    model_or_config: Any, state_dict: Mapping[str, torch.Tensor] | None = None, **overrides: Any
) -> KLAutoencoder:
    """A :class:`KLAutoencoder` holding the weights of a diffusers ``AutoencoderKL``.

    Either ``kl_from_diffusers(diffusers_model)`` or ``kl_from_diffusers(config_dict, state_dict)``.
    ``overrides`` go to :func:`config_from_diffusers`. The result is in float32 on the CPU, in
    eval mode.
    """
    return CONVERTER(model_or_config, state_dict, **overrides)


def load_diffusers_kl(path: str | Path, **overrides: Any) -> KLAutoencoder:
    """A :class:`KLAutoencoder` from a saved diffusers folder (``config.json`` + safetensors weights).

    ``path`` is the VAE folder or a pipeline folder with a ``vae/`` subfolder; the weights are
    read as :func:`diffkit.load_pretrained` reads them.
    """
    return CONVERTER.load(path, **overrides)


CONVERTER = DiffusersConverter(
    diffusers_classes=(DIFFUSERS_CLASS,), kind="autoencoder", name="kl", subfolder="vae",
    config_from_diffusers=config_from_diffusers, convert_state_dict=convert_diffusers_state_dict,
)
"""The registered converter (``diffkit.get("converter", "kl")``)."""
