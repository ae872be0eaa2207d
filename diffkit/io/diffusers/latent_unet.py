"""Load diffusers-format ``UNet2DConditionModel`` checkpoints (Stable Diffusion 1.x / 2.x / XL UNets)
into :class:`~diffkit.models.backbones.latent_unet.LatentUNet`.

Three steps, each usable alone (the same shape as :mod:`diffkit.io.diffusers.unet`):

* :func:`config_from_diffusers` — a diffusers ``config.json`` dict → :class:`LatentUNetConfig`;
* :func:`convert_diffusers_state_dict` — diffusers weights → diffkit weights, after checking
  every key and shape (one :class:`CheckpointError` lists all missing, unexpected and
  mis-shaped keys, in diffusers' names);
* :func:`latent_unet_from_diffusers` / :func:`load_diffusers_latent_unet` — a ready
  :class:`LatentUNet` from a diffusers model object, a config and weights, or a saved folder.

How the layouts differ (everything else keeps diffusers' names, level for level):

* ``down_blocks.ℓ`` / ``up_blocks.i`` / ``mid_block`` are ``down.ℓ`` / ``up.i`` / ``mid``;
  ``downsamplers.0`` / ``upsamplers.0`` are ``downsample`` / ``upsample``;
  ``mid_block.attentions.0`` is ``mid.attention``; ``time_embedding`` is ``time_embed``,
  ``conv_norm_out`` is ``norm_out``; SDXL's ``add_embedding`` is ``add_embed`` (its
  ``add_time_proj`` has no weights).
* Transformer blocks: self-attention's ``attn1.to_q/to_k/to_v`` are one fused ``attn1.qkv``
  (stacked q, k, v); cross-attention's ``attn2.to_q`` is ``attn2.q`` and ``to_k``/``to_v``
  one fused ``attn2.kv``; ``to_out.0`` is ``proj``; the GEGLU feed-forward's ``ff.net.0.proj``
  / ``ff.net.2`` are ``ff.fc1`` / ``ff.fc2`` (same value-then-gate order).

Supported: ``CrossAttnDownBlock2D`` / ``DownBlock2D`` and ``CrossAttnUpBlock2D`` /
``UpBlock2D`` mirrored between the paths (levels without transformers anywhere, e.g. SDXL's
first), ``UNetMidBlock2DCrossAttn``, one head count or one per level (``attention_head_dim``,
which diffusers reads as the head count, or ``num_attention_heads``), ``use_linear_projection``
either way, ``transformer_layers_per_block`` as one count or one per level (the middle takes
the last level's; SDXL: [1, 2, 10]), SDXL's ``addition_embed_type="text_time"`` (with
``addition_time_embed_dim`` = D_t and ``projection_class_embeddings_input_dim`` = D_a, see
:mod:`~diffkit.models.backbones.latent_unet`), ``upcast_attention`` (it only changes fp16
arithmetic). Ignored, because they build nothing here: ``addition_embed_type_num_heads``
(only the refused ``"text"`` embedding reads it), and ``addition_time_embed_dim`` /
``projection_class_embeddings_input_dim`` without an addition or class embedding reading them.

diffusers' config does not say how many time ids K the text-time vector carries (D_a = P + K·D_t
only fixes P + K·D_t): the result assumes SDXL base's K = 6; pass ``text_time_ids=5`` for the
SDXL refiner (pooled 1280 + 5 ids: the original size, the crop and the aesthetic score).

Everything else — class embeddings, other added embeddings (``"text"``, ``"image"`` …),
``encoder_hid_proj``, per-layer (nested) ``transformer_layers_per_block`` and
``reverse_transformer_layers_per_block``, dual or only-cross attention, other time embeddings
or activations, scale-shift ResBlocks, other kernels, attention types or norms — is a
:class:`~diffkit.errors.ConfigError` naming the feature.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from diffkit.errors import CheckpointError
from diffkit.io.converters import DiffusersConverter, describe, diffusers_settings, refuse, remap, stack_weights, unmet
from diffkit.io.diffusers.unet import level_blocks, level_fields, level_key, levels_with
from diffkit.models.backbones.latent_unet import LatentUNet, LatentUNetConfig

__all__ = [
    "CONVERTER", "CheckpointError", "config_from_diffusers", "convert_diffusers_state_dict",
    "expected_diffusers_shapes", "latent_unet_from_diffusers", "load_diffusers_latent_unet",
]

DIFFUSERS_CLASS = "UNet2DConditionModel"

# diffusers' UNet2DConditionModel defaults (0.2x–0.4x) for keys a config may leave out.
_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 4, "out_channels": 4, "center_input_sample": False, "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "only_cross_attention": False, "block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2,
    "downsample_padding": 1, "mid_block_scale_factor": 1, "dropout": 0.0, "act_fn": "silu", "norm_num_groups": 32,
    "norm_eps": 1e-5, "cross_attention_dim": 1280, "transformer_layers_per_block": 1,
    "reverse_transformer_layers_per_block": None, "encoder_hid_dim": None, "encoder_hid_dim_type": None,
    "attention_head_dim": 8, "num_attention_heads": None, "dual_cross_attention": False,
    "use_linear_projection": False, "class_embed_type": None, "addition_embed_type": None,
    "addition_time_embed_dim": None, "num_class_embeds": None, "upcast_attention": False,
    "resnet_time_scale_shift": "default", "resnet_skip_time_act": False, "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional", "time_embedding_dim": None, "time_embedding_act_fn": None,
    "timestep_post_act": None, "time_cond_proj_dim": None, "conv_in_kernel": 3, "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None, "attention_type": "default", "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None, "cross_attention_norm": None, "addition_embed_type_num_heads": 64,
}
# Settings LatentUNet needs, at their defaults; another value is a feature it does not have (the key names it).
_REQUIRED: dict[str, Any] = {
    key: _DEFAULTS[key]
    for key in (
        "center_input_sample", "mid_block_type", "only_cross_attention", "mid_block_scale_factor", "act_fn",
        "reverse_transformer_layers_per_block", "encoder_hid_dim", "encoder_hid_dim_type", "dual_cross_attention",
        "class_embed_type", "num_class_embeds",
        "resnet_time_scale_shift", "resnet_skip_time_act", "resnet_out_scale_factor", "time_embedding_type",
        "time_embedding_act_fn", "timestep_post_act", "time_cond_proj_dim", "conv_in_kernel", "conv_out_kernel",
        "attention_type", "class_embeddings_concat", "mid_block_only_cross_attention", "cross_attention_norm",
    )
}
# Keys that do not change the fp32 network: upcast_attention only upcasts fp16 attention
# scores; addition_embed_type_num_heads only sizes the "text" addition embedding (refused).
# (addition_time_embed_dim and projection_class_embeddings_input_dim are read with "text_time".)
_IGNORED = ("upcast_attention", "addition_embed_type_num_heads")
# The addition embedding LatentUNet has (None: none).
_TEXT_TIME = "text_time"

# Block type → has transformers.
_DOWN_BLOCKS = {"DownBlock2D": False, "CrossAttnDownBlock2D": True}
_UP_BLOCKS = {"UpBlock2D": False, "CrossAttnUpBlock2D": True}


def _uniform(name: str, value: Any, levels: int, wrong: list[str]) -> Any:
    """One value for a per-level setting (an int, or a list whose entries are all equal)."""
    if isinstance(value, (list, tuple)):
        if len(value) != levels:
            wrong.append(f"{name} has {len(value)} entries for {levels} levels")
            return None
        if len(set(map(str, value))) != 1:
            wrong.append(f"{name}={list(value)} (different values per level are not supported)")
            return None
        return value[0]
    return value


def config_from_diffusers(config: Mapping[str, Any], **overrides: Any) -> LatentUNetConfig:
    """The :class:`LatentUNetConfig` of a diffusers ``UNet2DConditionModel`` config dict.

    Accepts ``model.config`` or the parsed ``config.json`` (keys starting with ``_`` are
    metadata). ``overrides`` change fields of the result (e.g. ``gradient_checkpointing=True``).
    Unknown keys and features the latent UNet does not have are :class:`ConfigError` s that
    name them.
    """
    _, settings = diffusers_settings(config, {DIFFUSERS_CLASS: _DEFAULTS}, what=DIFFUSERS_CLASS)
    wrong = unmet(settings, _REQUIRED, "diffkit's latent UNet needs", fits=_fits)
    down_types, up_types = level_blocks(settings, _DOWN_BLOCKS, _UP_BLOCKS, wrong)
    refuse(wrong, "latent UNet")

    levels = len(settings["block_out_channels"])
    down_attn = [_DOWN_BLOCKS[t] for t in down_types]
    up_attn = [_UP_BLOCKS[t] for t in reversed(up_types)]  # reindexed by level
    if down_attn != up_attn:
        wrong.append(f"transformers at down levels {levels_with(down_attn)} but at up levels {levels_with(up_attn)}")
    layers = _uniform("layers_per_block", settings["layers_per_block"], levels, wrong)
    depth = _depths(settings["transformer_layers_per_block"], levels, wrong)
    context_dim = _uniform("cross_attention_dim", settings["cross_attention_dim"], levels, wrong)
    # diffusers' naming quirk: without num_attention_heads, attention_head_dim is the head count.
    heads = settings["num_attention_heads"] or settings["attention_head_dim"]
    if isinstance(heads, (list, tuple)):
        heads = tuple(heads)
        if len(heads) != levels:
            wrong.append(f"{len(heads)} attention head counts for {levels} levels")
    if settings["norm_num_groups"] is None:
        wrong.append("norm_num_groups=None")
    text_time = _text_time_fields(settings, wrong)
    refuse(wrong, "latent UNet")

    fields = {
        **level_fields(settings, smallest_sample_size=64),
        "layers_per_block": layers,
        "cross_attention_levels": tuple(levels_with(down_attn)),
        "num_heads": heads,
        "transformer_depth": depth,
        "context_dim": context_dim,
        "use_linear_projection": bool(settings["use_linear_projection"]),
        **text_time,
    }
    return LatentUNetConfig.from_dict({**fields, **overrides})


def _depths(value: Any, levels: int, wrong: list[str]) -> int | tuple[int, ...] | None:
    """``transformer_layers_per_block``: one count (an int, or a list of equal ones) or one per level.

    A nested list (a count per transformer within a level, diffusers' asymmetric UNets) is refused.
    """
    if not isinstance(value, (list, tuple)):
        return value
    if any(isinstance(v, (list, tuple)) for v in value):
        nested = [list(v) if isinstance(v, (list, tuple)) else v for v in value]
        wrong.append(f"transformer_layers_per_block={nested} (per-transformer depths within a level are not supported)")
        return None
    if len(value) != levels:
        wrong.append(f"transformer_layers_per_block has {len(value)} entries for {levels} levels")
        return None
    return value[0] if len(set(value)) == 1 else tuple(value)


def _text_time_fields(settings: Mapping[str, Any], wrong: list[str]) -> dict[str, Any]:
    """The ``text_time_*`` fields of SDXL's ``addition_embed_type="text_time"`` ({} without an addition embedding)."""
    kind = settings["addition_embed_type"]
    if kind is None:
        return {}
    if kind != _TEXT_TIME:
        wrong.append(f"addition_embed_type={kind!r} (diffkit's latent UNet has None or {_TEXT_TIME!r})")
        return {}
    time_dim, input_dim = settings["addition_time_embed_dim"], settings["projection_class_embeddings_input_dim"]
    if time_dim is None or input_dim is None:
        wrong.append(
            f"addition_embed_type={kind!r} without addition_time_embed_dim ({time_dim}) or "
            f"projection_class_embeddings_input_dim ({input_dim})"
        )
        return {}
    return {"text_time_dim": input_dim, "text_time_embed_dim": time_dim}


def _fits(value: Any, wanted: Any) -> bool:
    """A required value, or for a boolean a per-level list of it (e.g. only_cross_attention=[False] * 4)."""
    return value == wanted or (
        isinstance(wanted, bool) and isinstance(value, (list, tuple)) and all(v == wanted for v in value)
    )


# -- weights --------------------------------------------------------------------------------

# UNet2DConditionModel's own renames after the shared LEVEL_RENAMES.
_RENAMES = (
    ("add_embed.", "add_embedding."),
    (".proj.", ".to_out.0."),
    (".ff.fc1.", ".ff.net.0.proj."),
    (".ff.fc2.", ".ff.net.2."),
)
# The settings a weights mismatch names.
_DESCRIBED = (
    "block_out_channels", "layers_per_block", "cross_attention_levels", "transformer_depth", "context_dim",
    "in_channels", "out_channels", "text_time_dim",
)


def _sources(key: str) -> tuple[str, ...]:
    """The diffusers key(s) of a diffkit key; several are stacked along dim 0 (fused projections)."""
    key = level_key(key, _RENAMES)
    for fused, names in (
        (".attn1.qkv.", "qkv"),
        (".attn2.kv.", "kv"),
        (".attn2.q.", "q"),
    ):
        if fused in key:
            head, kind = key.split(fused)
            return tuple(f"{head}{fused[:7]}to_{n}.{kind}" for n in names)
    return (key,)


def expected_diffusers_shapes(config: LatentUNetConfig) -> dict[str, tuple[int, ...]]:
    """Every key of a diffusers ``UNet2DConditionModel`` state dict for ``config``, with its shape."""
    return remap(LatentUNet, config, _sources)[1]


def convert_diffusers_state_dict(
    state_dict: Mapping[str, torch.Tensor], config: LatentUNetConfig
) -> dict[str, torch.Tensor]:
    """diffusers ``UNet2DConditionModel`` weights → :class:`LatentUNet` weights for ``config``.

    Raises :class:`CheckpointError` listing every missing, unexpected and mis-shaped key
    (diffusers names).
    """
    plan, expected = remap(LatentUNet, config, _sources)
    what = f"the diffusers UNet2DConditionModel weights do not fit {describe(config, 'LatentUNet', _DESCRIBED)}"
    return stack_weights(state_dict, plan, expected, what=what)


def latent_unet_from_diffusers(
    model_or_config: Any, state_dict: Mapping[str, torch.Tensor] | None = None, **overrides: Any
) -> LatentUNet:
    """A :class:`LatentUNet` holding the weights of a diffusers ``UNet2DConditionModel``.

    Either ``latent_unet_from_diffusers(diffusers_model)`` or
    ``latent_unet_from_diffusers(config_dict, state_dict)``. ``overrides`` go to
    :func:`config_from_diffusers`. The result is in float32 on the CPU, in eval mode.
    """
    return CONVERTER(model_or_config, state_dict, **overrides)


def load_diffusers_latent_unet(path: str | Path, **overrides: Any) -> LatentUNet:
    """A :class:`LatentUNet` from a saved diffusers model folder (``config.json`` + safetensors).

    ``path`` is the model folder or a pipeline folder with a ``unet/`` subfolder (a Stable
    Diffusion pipeline).
    """
    return CONVERTER.load(path, **overrides)


CONVERTER = DiffusersConverter(
    diffusers_classes=(DIFFUSERS_CLASS,), kind="backbone", name="latent_unet", subfolder="unet",
    config_from_diffusers=config_from_diffusers, convert_state_dict=convert_diffusers_state_dict,
)
"""The registered converter (``diffkit.get("converter", "latent_unet")``)."""
