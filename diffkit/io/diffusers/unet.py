"""Load diffusers-format UNet checkpoints (``UNet2DModel``) into :class:`~diffkit.models.backbones.unet.UNet`.

Three steps, each usable alone:

* :func:`config_from_diffusers` — a diffusers ``config.json`` dict → :class:`UNetConfig`;
* :func:`convert_diffusers_state_dict` — diffusers weights → diffkit weights, after checking
  every key and shape (one :class:`CheckpointError` lists all missing, unexpected and
  mis-shaped keys);
* :func:`unet_from_diffusers` / :func:`load_diffusers_unet` — a ready :class:`UNet` from a
  config and weights, from a diffusers model object, or from a saved folder.

How the layouts differ (everything else keeps diffusers' names, level for level):

* ``down_blocks.ℓ`` / ``up_blocks.i`` / ``mid_block`` are ``down.ℓ`` / ``up.i`` / ``mid``; the
  resampler ``downsamplers.0`` / ``upsamplers.0`` is ``downsample`` / ``upsample``; the
  middle attention ``mid_block.attentions.0`` is ``mid.attention``; ``time_embedding`` is
  ``time_embed``, ``conv_norm_out`` is ``norm_out``.
* Attention: q, k and v are separate linear layers there (``to_q``, ``to_k``, ``to_v``), one
  fused ``attn.qkv`` here (stacked q, k, v); ``group_norm`` is ``norm``, ``to_out.0`` is
  ``attn.proj``.
* The class table (``class_embedding``, [K, E]) gets one more row here: the null class K used
  for "no label" (classifier-free guidance). diffusers has no null class; the converted
  table's null row is zero, so ``cond=None`` runs the network with the bare time embedding.

diffusers configurations diffkit's UNet does not have are errors: Fourier or learned time
embeddings, ``center_input_sample``, ``mid_block_scale_factor ≠ 1``, activations other than
SiLU, timestep / identity class embeddings, skip blocks (``SkipDownBlock2D`` …), attention
patterns that differ between the down and up path, and mixed resampling kinds. One quirk:
with ``resnet_time_scale_shift="scale_shift"`` and no ``attn_norm_num_groups``, diffusers'
middle attention has no GroupNorm; diffkit's always has one, so such a config is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from diffkit.errors import CheckpointError, ConfigError
from diffkit.io.converters import DiffusersConverter, describe, diffusers_settings, refuse, remap, stack_weights, unmet
from diffkit.models.backbones.unet import UNet, UNetConfig

__all__ = [
    "CONVERTER", "CheckpointError", "config_from_diffusers", "convert_diffusers_state_dict",
    "expected_diffusers_shapes", "load_diffusers_unet", "unet_from_diffusers",
]

DIFFUSERS_CLASS = "UNet2DModel"

# diffusers' UNet2DModel defaults for keys a config may leave out.
_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    "block_out_channels": (224, 448, 672, 896), "layers_per_block": 2, "mid_block_scale_factor": 1,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0, "act_fn": "silu",
    "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None, "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None, "num_class_embeds": None,
    "num_train_timesteps": None,
}
# Settings diffkit's UNet needs, at their defaults; another value is an architecture it does not have.
_REQUIRED = {
    key: _DEFAULTS[key]
    for key in (
        "center_input_sample", "time_embedding_type", "mid_block_type", "mid_block_scale_factor", "act_fn",
        "class_embed_type",
    )
}
# Keys that do not change the network (num_train_timesteps only sizes a learned time table).
_IGNORED = ("num_train_timesteps",)

# Block type → (has attention, resampling kind or None for "the model's downsample_type/upsample_type").
_DOWN_BLOCKS = {
    "DownBlock2D": (False, "conv"),
    "AttnDownBlock2D": (True, None),
    "ResnetDownsampleBlock2D": (False, "resnet"),
}
_UP_BLOCKS = {
    "UpBlock2D": (False, "conv"),
    "AttnUpBlock2D": (True, None),
    "ResnetUpsampleBlock2D": (False, "resnet"),
}


def config_from_diffusers(config: Mapping[str, Any], **overrides: Any) -> UNetConfig:
    """The :class:`UNetConfig` of a diffusers ``UNet2DModel`` config dict.

    Accepts ``model.config`` or the parsed ``config.json`` (keys starting with ``_`` are
    metadata). ``overrides`` change fields of the result (e.g. ``gradient_checkpointing=True``,
    or ``sample_size`` when the config has none). Unknown keys and settings the UNet does
    not have are errors.
    """
    _, settings = diffusers_settings(config, {DIFFUSERS_CLASS: _DEFAULTS}, what=DIFFUSERS_CLASS, known=_IGNORED)
    wrong = unmet(settings, _REQUIRED, "diffkit's UNet needs")
    down_types, up_types = level_blocks(settings, _DOWN_BLOCKS, _UP_BLOCKS, wrong)
    refuse(wrong, "UNet")

    # Attention and resampling per level; the up path (coarsest first) must mirror the down path.
    down_attn = [_DOWN_BLOCKS[t][0] for t in down_types]
    up_attn = [_UP_BLOCKS[t][0] for t in reversed(up_types)]  # reindexed by level
    if down_attn != up_attn:
        wrong.append(f"attention at down levels {levels_with(down_attn)} but at up levels {levels_with(up_attn)}")
    kinds = {_DOWN_BLOCKS[t][1] or settings["downsample_type"] for t in down_types[:-1]}
    kinds |= {_UP_BLOCKS[t][1] or settings["upsample_type"] for t in up_types[:-1]}
    if len(kinds) > 1 or not kinds <= {"conv", "resnet"}:
        wrong.append(f"resampling kinds {sorted(map(str, kinds))} (one of 'conv' or 'resnet' throughout)")
    scale_shift = settings["resnet_time_scale_shift"]
    if scale_shift not in ("default", "scale_shift"):
        wrong.append(f"resnet_time_scale_shift={scale_shift!r}")
    attn_groups = settings["attn_norm_num_groups"]
    if attn_groups is not None and attn_groups != settings["norm_num_groups"]:
        wrong.append(f"attn_norm_num_groups={attn_groups} (must equal norm_num_groups)")
    if scale_shift == "scale_shift" and settings["add_attention"] and attn_groups is None:
        wrong.append("scale_shift with a middle attention without GroupNorm (set attn_norm_num_groups)")
    if settings["freq_shift"] not in (0, 1):
        wrong.append(f"freq_shift={settings['freq_shift']} (0 or 1)")
    if settings["norm_num_groups"] is None:
        wrong.append("norm_num_groups=None")
    refuse(wrong, "UNet")

    fields = {
        **level_fields(settings, smallest_sample_size=32),
        "layers_per_block": settings["layers_per_block"],
        "attention_levels": tuple(levels_with(down_attn)),
        "mid_attention": bool(settings["add_attention"]),
        "attention_head_dim": settings["attention_head_dim"],
        "num_classes": settings["num_class_embeds"] or 0,
        "scale_shift": scale_shift == "scale_shift",
        "resample": kinds.pop() if kinds else "conv",
    }
    return UNetConfig.from_dict({**fields, **overrides})


# -- what both diffusers UNets (UNet2DModel here, UNet2DConditionModel in latent_unet) share ----


def level_blocks(
    settings: Mapping[str, Any], down_blocks: Mapping[str, Any], up_blocks: Mapping[str, Any], wrong: list[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(down block types, up block types) of a diffusers UNet config, one of each per level.

    Adds to ``wrong`` a count of types that is not one per ``block_out_channels`` entry and the
    types missing from ``down_blocks`` / ``up_blocks`` (the supported ones).
    """
    levels = len(settings["block_out_channels"])
    down_types, up_types = tuple(settings["down_block_types"]), tuple(settings["up_block_types"])
    if len(down_types) != levels or len(up_types) != levels:
        wrong.append(f"{len(down_types)} down and {len(up_types)} up block types for {levels} levels")
    bad = [t for t in down_types if t not in down_blocks] + [t for t in up_types if t not in up_blocks]
    if bad:
        wrong.append(f"block types {sorted(set(bad))} (supported: {sorted(down_blocks) + sorted(up_blocks)})")
    return down_types, up_types


def level_fields(settings: Mapping[str, Any], smallest_sample_size: int) -> dict[str, Any]:
    """The config fields both diffkit UNets read alike from a diffusers UNet config.

    A missing ``sample_size`` becomes max(smallest_sample_size, 2^(levels − 1)), the least
    size every level can halve; a non-square one is an error.
    """
    channels = tuple(settings["block_out_channels"])
    sample_size = settings["sample_size"]
    if isinstance(sample_size, (list, tuple)):
        if len(set(sample_size)) != 1:
            raise ConfigError(f"non-square sample_size {tuple(sample_size)}: pass sample_size=… as an override")
        sample_size = sample_size[0]
    if sample_size is None:
        sample_size = max(smallest_sample_size, 2 ** (len(channels) - 1))
    return {
        "sample_size": sample_size,
        "in_channels": settings["in_channels"],
        "out_channels": settings["out_channels"],
        "block_out_channels": channels,
        "time_embed_dim": settings["time_embedding_dim"],
        "timestep_cos_first": bool(settings["flip_sin_to_cos"]),
        "timestep_freq_shift": int(settings["freq_shift"]),
        "dropout": float(settings["dropout"]),
        "downsample_padding": settings["downsample_padding"],
        "norm_groups": settings["norm_num_groups"],
        "norm_eps": float(settings["norm_eps"]),
    }


def levels_with(flags: list[bool]) -> list[int]:
    """The levels whose flag is set."""
    return [i for i, f in enumerate(flags) if f]


# diffkit key fragment → diffusers key fragment for the levels both UNets share, applied in order.
LEVEL_RENAMES = (
    ("time_embed.", "time_embedding."),
    ("norm_out.", "conv_norm_out."),
    ("mid.attention.", "mid_block.attentions.0."),
    ("mid.", "mid_block."),
    (".downsample.", ".downsamplers.0."),
    (".upsample.", ".upsamplers.0."),
)


def level_key(key: str, renames: tuple[tuple[str, str], ...]) -> str:
    """A diffkit UNet key in diffusers' names: ``down.ℓ`` / ``up.i`` → ``down_blocks.ℓ`` /
    ``up_blocks.i``, then :data:`LEVEL_RENAMES` and ``renames`` (the architecture's own)."""
    for ours, theirs in (("down.", "down_blocks."), ("up.", "up_blocks.")):
        if key.startswith(ours):
            key = theirs + key[len(ours) :]
    for ours, theirs in (*LEVEL_RENAMES, *renames):
        key = key.replace(ours, theirs)
    return key


# -- weights --------------------------------------------------------------------------------

# UNet2DModel's own renames after LEVEL_RENAMES.
_RENAMES = (
    (".attn.proj.", ".to_out.0."),
    (".norm.", ".group_norm."),  # only attention layers have a plain ``norm``
)
_CLASS_TABLE, _DIFFUSERS_CLASS_TABLE = "class_embed.embedding_table.weight", "class_embedding.weight"
# The settings a weights mismatch names.
_DESCRIBED = ("block_out_channels", "layers_per_block", "attention_levels", "in_channels", "out_channels", "num_classes")


def _sources(key: str) -> tuple[str, ...]:
    """The diffusers key(s) of a diffkit key; several are stacked along dim 0 (fused qkv)."""
    if key == _CLASS_TABLE:
        return (_DIFFUSERS_CLASS_TABLE,)
    key = level_key(key, _RENAMES)
    if ".attn.qkv." in key:
        head, kind = key.split(".attn.qkv.")
        return tuple(f"{head}.to_{n}.{kind}" for n in "qkv")
    return (key,)


def expected_diffusers_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    """Every key of a diffusers ``UNet2DModel`` state dict for ``config``, with its shape."""
    shapes = remap(UNet, config, _sources)[1]
    if _DIFFUSERS_CLASS_TABLE in shapes:
        classes, width = shapes[_DIFFUSERS_CLASS_TABLE]
        shapes[_DIFFUSERS_CLASS_TABLE] = (classes - 1, width)  # no null row in diffusers
    return shapes


def convert_diffusers_state_dict(state_dict: Mapping[str, torch.Tensor], config: UNetConfig) -> dict[str, torch.Tensor]:
    """diffusers ``UNet2DModel`` weights → :class:`UNet` weights for ``config``.

    Raises :class:`CheckpointError` listing every missing, unexpected and mis-shaped key
    (diffusers names). The class table gains a zero null-class row.
    """
    plan = remap(UNet, config, _sources)[0]
    what = f"the diffusers UNet2DModel weights do not fit {describe(config, 'UNet', _DESCRIBED)}"
    weights = stack_weights(state_dict, plan, expected_diffusers_shapes(config), what=what)
    if _CLASS_TABLE in weights:
        table = weights[_CLASS_TABLE]
        weights[_CLASS_TABLE] = torch.cat([table, table.new_zeros(1, table.shape[1])])  # (K + 1, E): null row = 0
    return weights


def unet_from_diffusers(
    model_or_config: Any, state_dict: Mapping[str, torch.Tensor] | None = None, **overrides: Any
) -> UNet:
    """A :class:`UNet` holding the weights of a diffusers ``UNet2DModel``.

    Either ``unet_from_diffusers(diffusers_model)`` or ``unet_from_diffusers(config_dict,
    state_dict)``. ``overrides`` go to :func:`config_from_diffusers`. The result is in float32
    on the CPU, in eval mode.
    """
    return CONVERTER(model_or_config, state_dict, **overrides)


def load_diffusers_unet(path: str | Path, **overrides: Any) -> UNet:
    """A :class:`UNet` from a saved diffusers model folder (``config.json`` + safetensors weights).

    ``path`` is the model folder or a pipeline folder with a ``unet/`` subfolder.
    """
    return CONVERTER.load(path, **overrides)


CONVERTER = DiffusersConverter(
    diffusers_classes=(DIFFUSERS_CLASS,), kind="backbone", name="unet", subfolder="unet",
    config_from_diffusers=config_from_diffusers, convert_state_dict=convert_diffusers_state_dict,
)
"""The registered converter (``diffkit.get("converter", "unet")``)."""
