"""diffusers' transformer backbones — PixArt-α/Σ, SD3's MMDiT, Flux — as diffkit backbones.

Decision: for these transformer families diffkit wraps the diffusers module itself
(``PixArtTransformer2DModel``, ``SD3Transformer2DModel``, ``FluxTransformer2DModel``) instead of
re-implementing it. That gives exact parity with the diffusers pipelines by construction, keeps
diffusers' maintained attention processors (SDPA, fused QKV, LoRA, …), and leaves no second
implementation to keep in step with every new checkpoint variant. diffkit's native backbones
stay for the UNets and DiT (``unet``, ``latent_unet``, ``dit``), where diffkit owns the network.

Registry entry: backbone ``diffusers_transformer``, configured by :class:`DiffusersTransformerConfig`::

    diffkit.build("backbone", "diffusers_transformer",
                  class_name="SD3Transformer2DModel", config={...diffusers config.json keys...})

The module is the diffusers class built from ``config`` (random weights, diffusers' own
initialisation), held as ``backbone.transformer``: state-dict keys are diffusers' own under the
prefix ``transformer.``. :func:`from_diffusers_folder` reads a diffusers model folder (or a pipeline
folder's ``transformer/``); :func:`from_diffusers_module` wraps a live diffusers module (no copy).
diffusers is imported only inside functions: importing diffkit, or registering this backbone,
never imports it.

The call, ``backbone(x, t, cond, *, guidance=None)`` with x [B, C, H, W] the latent (C =
``config.in_channels``, unpacked for Flux), t [B] and ``cond`` a
:class:`~diffkit.models.conditioners.Conditioning` record (or a mapping with the same keys), maps
onto each module exactly as the diffusers pipeline calls it (``PixArtAlphaPipeline`` /
``PixArtSigmaPipeline``, ``StableDiffusion3Pipeline``, ``FluxPipeline`` in diffusers 0.42):

* **PixArt** (VP, ε with learned σ): ``timestep = t`` (training timesteps 0 … T−1, fractional
  allowed), ``encoder_hidden_states = cond.context`` [B, M, caption_channels],
  ``encoder_attention_mask = cond.mask`` [B, M] (True = attend; None = every token). Micro-conditions
  (``added_cond_kwargs``): None unless the module's ``use_additional_conditions`` (PixArt-α 1024,
  sample_size 128) — then ``resolution`` = (H·f, W·f) pixels and ``aspect_ratio`` = H/W for a
  latent of H×W, f = ``vae_scale_factor``, as the α pipeline computes them from the image size.
  The output keeps all ``out_channels`` (2C with learned σ: diffkit's ``VPDenoiser`` splits them).
* **SD3** (flow, velocity): ``timestep = t`` — the FlowMatch timestep t·1000, as the pipeline
  passes it — ``encoder_hidden_states = cond.context`` [B, M, joint_attention_dim],
  ``pooled_projections = cond.vector`` [B, pooled_projection_dim].
* **Flux** (flow, velocity): x [B, C, H, W] (H, W even) is packed into 2×2 patches, tokens
  [B, (H/2)(W/2), 4C] ordered row-major over the patch grid with each token's features ordered
  (C, 2, 2) — ``FluxPipeline._pack_latents`` — and the output is unpacked back to
  [B, C_out, H, W] (``_unpack_latents``). ``img_ids`` [(H/2)(W/2), 3] = (0, row, column) of each
  patch (``_prepare_latent_image_ids``), ``txt_ids`` = zeros [M, 3]; ``timestep = t / 1000``
  (t in the weights' dtype, divided as the pipeline does: the module multiplies by 1000 again);
  ``pooled_projections = cond.vector``, ``encoder_hidden_states = cond.context``.

SD3 and Flux attend to every context token, as their pipelines do and as they were trained (T5
padding included): a ``mask`` in the record is not used. ``x`` is cast to the weights' dtype on
entry (so are the context and vector) and the output returned in x's dtype, like every diffkit
backbone. A record without a field the family needs, or with a wrong width, is a
:class:`~diffkit.errors.ShapeError` naming the shape expected; ``labels``/``concat`` are refused as
:func:`~diffkit.models.backbones.embeddings.check_conditioning` refuses them for any backbone.

Embedded (distilled) guidance: a Flux transformer with ``guidance_embeds=True`` (Flux-dev) takes
the guidance scale as an input instead of running classifier-free guidance.
``backbone.embedded_guidance`` (also on the config) is True for exactly those; the caller then
passes ``guidance=`` — a number or a [B] tensor, sent as the float32 [B] tensor the pipeline builds
(``guidance_scale`` 3.5 for Flux-dev) — and does not run CFG. Calling such a model without
``guidance`` is a :class:`~diffkit.errors.ConfigError`, and so is passing one to any other model.
To use one where the caller only calls ``model(x, t, cond)`` (``FlowDenoiser``), bind it:
``functools.partial(backbone, guidance=3.5)``.

``sample_size`` (what ``Pipeline`` reads for the sample shape) is the side of the latent the
backbone sees, in latent pixels. PixArt and SD3: the diffusers config's ``sample_size`` unless
given (their pipelines' default image is sample_size · vae_scale_factor pixels). Flux: diffusers'
config has none; the field is the side of the *unpacked* latent, default 128 — ``FluxPipeline``'s
default 1024 px image through its 8× VAE — so the packed sequence has (sample_size/2)² tokens;
whoever builds the backbone sets it for another resolution (it must be even). PixArt and SD3 take
other sizes too (their position embeddings are recomputed or cropped); ``sample_size`` is the
shape a Pipeline draws. ``in_channels``/``out_channels`` are those of the unpacked latent (Flux:
the config's ``in_channels`` / 4, 16 for Flux-dev).

Saving and loading: ``diffkit.save_pretrained(backbone, folder)`` writes the config (class name and
the full diffusers config dict, JSON) and the weights; ``diffkit.io.components.load_component``
rebuilds the module from the config — first on the meta device, then for real — and loads the
weights strictly. :func:`from_diffusers_folder` instead builds the module with its parameters on
the meta device and moves the weights read from the folder in (``load_state_dict(assign=True)``), so
its peak memory is one copy of the weights.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

import attrs
import torch
from torch import nn

from diffkit.errors import CheckpointError, ConfigError, ShapeError, UnknownNameError
from diffkit.models.backbones.embeddings import (
    broadcast_timesteps,
    check_conditioning,
    conditioning_field,
    input_in_weight_dtype,
)
from diffkit.models.backbones.sizes import SizeRule
from diffkit.models.configs import ModelConfig
from diffkit.validators import boolean, check_int, int_at_least, is_real, optional

SUPPORTED: Mapping[str, str] = MappingProxyType({
    "PixArtTransformer2DModel": "pixart",
    "SD3Transformer2DModel": "sd3",
    "FluxTransformer2DModel": "flux",
})
"""The diffusers classes this backbone wraps → their family."""

FLUX_DEFAULT_SAMPLE_SIZE = 128
"""FluxPipeline's default latent side: its 1024 px default image through the 8× VAE."""

# diffusers' own remapping of legacy ``_class_name`` values (model_loading_utils._CLASS_REMAPPING_DICT):
# PixArt-α checkpoints were saved as Transformer2DModel with norm_type "ada_norm_single".
_LEGACY_CLASSES: Mapping[tuple[str, str], str] = MappingProxyType({
    ("Transformer2DModel", "ada_norm_single"): "PixArtTransformer2DModel",
})

# The config keys each family's derived fields read (a config dict made by diffkit.build or the
# from_diffusers_* builders holds every key: it is the module's own complete config).
_NEEDED_KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "pixart": ("in_channels", "out_channels", "sample_size", "patch_size", "caption_channels"),
    "sd3": ("in_channels", "out_channels", "sample_size", "patch_size", "joint_attention_dim",
            "pooled_projection_dim"),
    "flux": ("in_channels", "out_channels", "joint_attention_dim", "pooled_projection_dim", "guidance_embeds"),
})

_INSTALL_HINT = "pip install 'diffkit[diffusers]'"


def _check_class_name(class_name: Any) -> str:
    if not isinstance(class_name, str) or class_name not in SUPPORTED:
        raise UnknownNameError("diffusers transformer class for the diffusers_transformer backbone",
                               str(class_name), SUPPORTED)
    return class_name


def _plain_config(config: Any) -> dict[str, Any]:
    """The diffusers config as a plain JSON dict (tuples → lists), private ``_`` keys dropped."""
    if not isinstance(config, Mapping):
        raise ConfigError(f"config must be a mapping of diffusers config keys to values, got {type(config).__name__}")
    bad = [key for key in config if not isinstance(key, str)]
    if bad:
        raise ConfigError(f"config keys must be strings (diffusers config.json keys), got {bad[:5]}")
    public = {key: value for key, value in config.items() if not key.startswith("_")}
    try:
        return json.loads(json.dumps(public, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the diffusers config must be JSON-serializable (numbers, strings, lists): {exc}") from exc


def _frozen(value: Any) -> Any:
    """JSON data made read-only: dicts → read-only mappings, lists → tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({key: _frozen(item) for key, item in value.items()})
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(item) for item in value)
    return value


def _thawed(value: Any) -> Any:
    """The inverse of :func:`_frozen`: plain dicts and lists again (for JSON)."""
    if isinstance(value, Mapping):
        return {key: _thawed(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [_thawed(item) for item in value]
    return value


def _read_only_config(config: Any) -> Mapping[str, Any]:
    """attrs converter of :attr:`DiffusersTransformerConfig.config`: checked, JSON-normalised, read-only."""
    return _frozen(_plain_config(config))


# -- configuration ------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class DiffusersTransformerConfig(ModelConfig):
    """Configuration of a :class:`DiffusersTransformer`: a diffusers class name and its config dict.

    ``in_channels``, ``out_channels`` (of the unpacked latent), ``embedded_guidance`` and the
    conditioning widths are read from the dict; ``sample_size`` is resolved when left None (see the
    module docstring). Built by ``diffkit.build``, :func:`from_diffusers_folder` or
    :func:`from_diffusers_module`, the dict is the module's complete diffusers config.
    """

    class_name: str = attrs.field(validator=lambda _, __, value: _check_class_name(value))
    """The diffusers class: PixArtTransformer2DModel, SD3Transformer2DModel or FluxTransformer2DModel."""
    config: Mapping[str, Any] = attrs.field(factory=dict, converter=_read_only_config, hash=False)
    """The diffusers config (``config.json`` keys; keys starting with ``_`` are dropped), read-only
    (lists become tuples); :meth:`to_dict` gives it back as plain JSON."""
    sample_size: int | None = attrs.field(default=None, validator=optional(int_at_least(1)))
    """Latent side H = W a Pipeline draws (unpacked for Flux); None: the config's, or 128 for Flux."""
    vae_scale_factor: int = attrs.field(default=8, validator=int_at_least(1))
    """Image pixels per latent pixel (PixArt-α 1024's resolution micro-condition is in pixels)."""
    gradient_checkpointing: bool = attrs.field(default=False, validator=boolean)
    """Build with diffusers' gradient checkpointing on (recompute blocks in the backward pass)."""

    def __attrs_post_init__(self) -> None:
        missing = [key for key in _NEEDED_KEYS[self.family] if key not in self.config]
        if missing:
            raise ConfigError(
                f"the {self.class_name} config lacks {', '.join(missing)}; build the backbone with "
                "diffkit.build('backbone', 'diffusers_transformer', ...), from_diffusers_folder or "
                "from_diffusers_module, which fill in diffusers' defaults"
            )
        raw_in = check_int(f"{self.class_name} config in_channels", self.config["in_channels"], minimum=1)
        raw_out = self.config["out_channels"]
        if raw_out is not None:
            check_int(f"{self.class_name} config out_channels", raw_out, minimum=1)
        if self.family == "flux":
            for name, value in (("in_channels", raw_in), ("out_channels", raw_out or raw_in)):
                if value % 4:
                    raise ConfigError(
                        f"FluxTransformer2DModel {name}={value} is not divisible by 4: its tokens are 2×2 patches "
                        "of the latent, 4·C features each"
                    )
        if self.sample_size is None:
            size = FLUX_DEFAULT_SAMPLE_SIZE if self.family == "flux" else self.config["sample_size"]
            object.__setattr__(self, "sample_size", check_int(f"{self.class_name} config sample_size", size, minimum=1))
        step = self.patch_size
        if self.sample_size % step:
            raise ConfigError(
                f"sample_size={self.sample_size} is not divisible by {step}, the {self.class_name} "
                + ("2×2 packing" if self.family == "flux" else "patch size")
            )

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (the diffusers config as plain dicts and lists)."""
        return {**attrs.asdict(self, recurse=False), "config": _thawed(self.config)}

    @property
    def family(self) -> str:
        """``"pixart"``, ``"sd3"`` or ``"flux"``."""
        return SUPPORTED[self.class_name]

    @property
    def in_channels(self) -> int:
        """C of the latent diffkit passes (Flux: the config's in_channels / 4, before packing)."""
        channels = int(self.config["in_channels"])
        return channels // 4 if self.family == "flux" else channels

    @property
    def out_channels(self) -> int:
        """Channels returned (2·in_channels with PixArt's learned σ; Flux: unpacked)."""
        raw = self.config["out_channels"]
        if self.family == "flux":
            return int(raw or self.config["in_channels"]) // 4
        return int(self.config["in_channels"] if raw is None else raw)

    @property
    def patch_size(self) -> int:
        """What H and W must be multiples of: the patch size (PixArt, SD3) or 2 (Flux's packing)."""
        return 2 if self.family == "flux" else int(self.config["patch_size"])

    @property
    def context_dim(self) -> int:
        """Width of ``cond.context``: caption_channels (PixArt) or joint_attention_dim (SD3, Flux)."""
        return int(self.config["caption_channels" if self.family == "pixart" else "joint_attention_dim"])

    @property
    def vector_dim(self) -> int | None:
        """Width of ``cond.vector`` (pooled_projection_dim); None for PixArt, which reads none."""
        return None if self.family == "pixart" else int(self.config["pooled_projection_dim"])

    @property
    def embedded_guidance(self) -> bool:
        """True for a guidance-distilled Flux (``guidance_embeds``): pass ``guidance=``, no CFG."""
        return self.family == "flux" and bool(self.config["guidance_embeds"])


# -- diffusers, imported on demand --------------------------------------------------------------


def _diffusers_class(class_name: str) -> type[nn.Module]:
    """The diffusers class (imports diffusers; a missing install is a ConfigError saying what to install)."""
    _check_class_name(class_name)
    try:
        # the import may run under a caller's torch.device("meta") context: let module-level tensors stay real
        with torch.device("cpu"):
            import diffusers

            return getattr(diffusers, class_name)
    except ImportError as exc:
        raise ConfigError(
            f"the diffusers_transformer backbone ({class_name}) needs diffusers: {_INSTALL_HINT}"
        ) from exc


def _init_keys(cls: type) -> list[str]:
    """The keyword arguments of the diffusers class's constructor (its config keys)."""
    parameters = inspect.signature(cls.__init__).parameters.values()
    return [p.name for p in parameters if p.name != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]


def _check_config_keys(cls: type, config: Mapping[str, Any]) -> None:
    valid = _init_keys(cls)
    for key in config:
        if key not in valid:
            raise UnknownNameError(f"{cls.__name__} config key", key, valid)


# -- the backbones --------------------------------------------------------------------------------


class DiffusersTransformer(nn.Module):
    """A diffusers transformer (PixArt, SD3, Flux) called as a diffkit backbone ``model(x, t, cond)``.

    See the module docstring for each family's contract. ``transformer`` is the diffusers module
    itself: ``train()``/``eval()``, ``requires_grad_``, ``.to()`` and the optimiser reach it as any
    submodule. Subclasses: one per family; build with :func:`build_diffusers_transformer`,
    :func:`from_diffusers_folder` or :func:`from_diffusers_module`.
    """

    family: ClassVar[str] = ""

    def __init__(self, transformer: nn.Module, config: DiffusersTransformerConfig) -> None:
        super().__init__()
        if not isinstance(config, DiffusersTransformerConfig):
            raise ConfigError(f"{type(self).__name__} takes a DiffusersTransformerConfig, got {type(config).__name__}")
        if config.family != self.family or type(transformer).__name__ != config.class_name:
            raise ConfigError(
                f"{type(self).__name__} wraps a {config.class_name} configured by its config, got "
                f"{type(transformer).__name__} (family {config.family!r}, this wrapper's {self.family!r})"
            )
        self.config = config
        self.transformer = transformer

    @property
    def embedded_guidance(self) -> bool:
        """True when the model takes ``guidance=`` (a distilled guidance scale) instead of CFG."""
        return self.config.embedded_guidance

    @property
    def gradient_checkpointing(self) -> bool:
        """diffusers' gradient checkpointing of the blocks; may be switched, like a native backbone's."""
        return bool(self.transformer.is_gradient_checkpointing)

    @gradient_checkpointing.setter
    def gradient_checkpointing(self, value: bool) -> None:
        if not isinstance(value, bool):
            raise ConfigError(f"gradient_checkpointing must be True or False, got {value!r}")
        if value:
            self.transformer.enable_gradient_checkpointing()
        else:
            self.transformer.disable_gradient_checkpointing()

    @property
    def _name(self) -> str:
        return f"diffusers {self.config.class_name}"

    def readable_conditioning(self) -> set[str]:
        """The conditioning record fields this model reads."""
        raise NotImplementedError

    def size_rule(self) -> SizeRule:
        """H and W: multiples of the patch size (2 for Flux's packing); SD3 also at most its position table.

        PixArt recomputes its sin-cos position embedding for another grid, SD3 crops its table
        (``pos_embed_max_size`` patches a side), Flux's rotary ids follow the latent's size.
        """
        limit = self.transformer.config.get("pos_embed_max_size") if self.family == "sd3" else None
        patch = self.config.patch_size
        return SizeRule(patch, None if limit is None else int(limit) * patch)

    def sharding_units(self) -> list[nn.Module]:
        """The transformer blocks the module calls one by one: what FSDP shards (diffusers' ``_no_split_modules``)."""
        units = list(self.transformer.transformer_blocks)
        return units + list(getattr(self.transformer, "single_transformer_blocks", ()))

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        cond: Any = None,
        *,
        guidance: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """x [B, C, H, W], t [B] (or a scalar), cond the record → the prediction [B, C_out, H, W] in x's dtype."""
        weight = next(self.transformer.parameters())
        x, x_dtype = input_in_weight_dtype(x, weight, model=self._name)
        cfg = self.config
        step = cfg.patch_size
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[2] % step or x.shape[3] % step:
            raise ShapeError(
                f"{self._name} expects x of shape [B, {cfg.in_channels}, H, W] with H and W multiples of {step}, "
                f"got {tuple(x.shape)}"
            )
        t = broadcast_timesteps(t, x.shape[0], x.device)  # (B,)
        guidance = self._guidance(guidance, x.shape[0], x.device)
        check_conditioning(cond, self.readable_conditioning(), model=self._name, tensor_field="context")
        out = self._predict(x, t, cond, guidance)  # (B, C_out, H, W)
        return out if out.dtype == x_dtype else out.to(x_dtype)

    def _predict(
        self, x: torch.Tensor, t: torch.Tensor, cond: Any, guidance: torch.Tensor | None
    ) -> torch.Tensor:
        raise NotImplementedError

    # -- reading the inputs -----------------------------------------------------------------------

    def _guidance(self, guidance: Any, batch: int, device: torch.device) -> torch.Tensor | None:
        """The distilled guidance scale as the float32 [B] tensor FluxPipeline builds (None without)."""
        if not self.embedded_guidance:
            if guidance is not None:
                raise ConfigError(
                    f"this {self._name} does not embed a guidance scale (embedded_guidance is False): it takes no "
                    "guidance=; guide it with classifier-free guidance (Pipeline.sample(guidance=...), CFGDenoiser)"
                )
            return None
        if guidance is None:
            raise ConfigError(
                f"this {self._name} is guidance-distilled (guidance_embeds=True, embedded_guidance is True): pass "
                "guidance= (the distilled guidance scale, e.g. 3.5 for Flux-dev; a number or a [B] tensor) instead "
                "of running classifier-free guidance; functools.partial(backbone, guidance=3.5) binds it"
            )
        if isinstance(guidance, torch.Tensor):
            if guidance.dtype == torch.bool or guidance.dtype.is_complex:
                raise ShapeError(f"guidance must be a real tensor, got dtype {guidance.dtype}")
            value = guidance.to(device=device, dtype=torch.float32)
        elif is_real(guidance):
            value = torch.full((1,), float(guidance), dtype=torch.float32, device=device)[0]
        else:
            raise ConfigError(f"guidance must be a number or a tensor [B], got {type(guidance).__name__}")
        if value.ndim == 0:
            return value.expand(batch)
        if value.shape != (batch,):
            raise ShapeError(
                f"guidance must be a number or a tensor of shape [B] = [{batch}], got {tuple(value.shape)}"
            )
        return value

    def _needs(self) -> str:
        """The fields the family needs, in words, for error messages."""
        cfg = self.config
        needs = f"context [B, M, {cfg.context_dim}]"
        return needs if cfg.vector_dim is None else f"{needs} and vector [B, {cfg.vector_dim}]"

    def _read(self, cond: Any, name: str, batch: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """The record's ``name`` field (context [B, M, width] or vector [B, width]) in x's dtype and device."""
        value = cond if (name == "context" and isinstance(cond, torch.Tensor)) else conditioning_field(cond, name)
        shape = f"[B={batch}, M, {width}]" if name == "context" else f"[B={batch}, {width}]"
        if value is None:
            if cond is None:  # diffusers' pipelines have no null input: their unconditional branch is the empty prompt
                got = "cond=None (the unconditional branch is the conditioner's empty prompt, as in diffusers)"
            else:
                got = "a bare context tensor" if isinstance(cond, torch.Tensor) else f"a record without {name}"
            raise ShapeError(
                f"{self._name} needs a conditioning record with {self._needs()}: its {name} must have shape {shape}, "
                f"got {got}"
            )
        ndim = 3 if name == "context" else 2
        if (not isinstance(value, torch.Tensor) or not value.dtype.is_floating_point or value.ndim != ndim
                or value.shape[0] != batch or value.shape[-1] != width):
            raise ShapeError(
                f"{self._name} reads the conditioning's {name} with shape {shape} (floating point), got "
                f"{getattr(value, 'dtype', type(value).__name__)} {tuple(getattr(value, 'shape', ()))}"
            )
        return value.to(device=like.device, dtype=like.dtype)

    def _mask(self, cond: Any, context: torch.Tensor) -> torch.Tensor | None:
        mask = None if isinstance(cond, torch.Tensor) else conditioning_field(cond, "mask")
        if mask is None:
            return None
        if (not isinstance(mask, torch.Tensor) or mask.dtype.is_floating_point or mask.dtype.is_complex
                or tuple(mask.shape) != tuple(context.shape[:2])):
            raise ShapeError(
                f"{self._name} reads the conditioning's mask as bool [B, M] = {list(context.shape[:2])} (the "
                f"context's), got {getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}"
            )
        return mask.to(context.device)


class DiffusersPixArt(DiffusersTransformer):
    """PixArt-α/Σ (``PixArtTransformer2DModel``): VP ε with learned σ, T5 context and its mask."""

    family = "pixart"

    def readable_conditioning(self) -> set[str]:
        return {"context", "mask"}

    def _predict(self, x: torch.Tensor, t: torch.Tensor, cond: Any, guidance: torch.Tensor | None) -> torch.Tensor:
        batch = x.shape[0]
        context = self._read(cond, "context", batch, self.config.context_dim, x)  # (B, M, d)
        mask = self._mask(cond, context)  # (B, M) or None
        added: dict[str, torch.Tensor | None] = {"resolution": None, "aspect_ratio": None}
        if self.transformer.use_additional_conditions:  # PixArt-α 1024: image size micro-conditions, in pixels
            height, width = (side * self.config.vae_scale_factor for side in x.shape[2:])
            added = {
                "resolution": torch.tensor([height, width]).repeat(batch, 1).to(device=x.device, dtype=context.dtype),
                "aspect_ratio": torch.tensor([float(height / width)]).repeat(batch, 1).to(
                    device=x.device, dtype=context.dtype),
            }
        return self.transformer(
            x, encoder_hidden_states=context, encoder_attention_mask=mask, timestep=t, added_cond_kwargs=added,
            return_dict=False,
        )[0]  # (B, C_out, H, W)


class DiffusersSD3(DiffusersTransformer):
    """Stable Diffusion 3 / 3.5 MMDiT (``SD3Transformer2DModel``): flow velocity, context and pooled vector."""

    family = "sd3"

    def readable_conditioning(self) -> set[str]:
        return {"context", "vector"}

    def _predict(self, x: torch.Tensor, t: torch.Tensor, cond: Any, guidance: torch.Tensor | None) -> torch.Tensor:
        batch = x.shape[0]
        context = self._read(cond, "context", batch, self.config.context_dim, x)  # (B, M, d)
        vector = self._read(cond, "vector", batch, self.config.vector_dim, x)  # (B, D)
        limit = self.transformer.config.get("pos_embed_max_size")
        patch = self.config.patch_size
        if limit is not None and max(x.shape[2:]) > limit * patch:
            raise ShapeError(
                f"{self._name} takes latents of at most {limit * patch}×{limit * patch} (pos_embed_max_size={limit} "
                f"patches), got {tuple(x.shape[2:])}"
            )
        return self.transformer(
            hidden_states=x, timestep=t, encoder_hidden_states=context, pooled_projections=vector, return_dict=False,
        )[0]  # (B, C_out, H, W)


def pack_latents(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] → [B, (H/2)(W/2), 4C]: Flux's 2×2 patch tokens (``FluxPipeline._pack_latents``)."""
    batch, channels, height, width = x.shape
    x = x.reshape(batch, channels, height // 2, 2, width // 2, 2)  # (B, C, h, 2, w, 2)
    x = x.permute(0, 2, 4, 1, 3, 5)  # (B, h, w, C, 2, 2)
    return x.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """[B, (H/2)(W/2), 4C] → [B, C, H, W], the inverse of :func:`pack_latents` (``_unpack_latents``)."""
    batch, _, features = tokens.shape
    x = tokens.reshape(batch, height // 2, width // 2, features // 4, 2, 2)  # (B, h, w, C, 2, 2)
    x = x.permute(0, 3, 1, 4, 2, 5)  # (B, C, h, 2, w, 2)
    return x.reshape(batch, features // 4, height, width)


def latent_image_ids(rows: int, columns: int, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """[rows·columns, 3]: (0, row, column) of each packed token (``_prepare_latent_image_ids``)."""
    ids = torch.zeros(rows, columns, 3, device=device)
    ids[..., 1] = torch.arange(rows, device=device)[:, None]
    ids[..., 2] = torch.arange(columns, device=device)[None, :]
    return ids.reshape(rows * columns, 3).to(dtype)


class DiffusersFlux(DiffusersTransformer):
    """Flux.1 (``FluxTransformer2DModel``): flow velocity on 2×2-packed latents; ``guidance=`` when distilled."""

    family = "flux"

    def readable_conditioning(self) -> set[str]:
        return {"context", "vector"}

    def _predict(self, x: torch.Tensor, t: torch.Tensor, cond: Any, guidance: torch.Tensor | None) -> torch.Tensor:
        batch, _, height, width = x.shape
        context = self._read(cond, "context", batch, self.config.context_dim, x)  # (B, M, d)
        vector = self._read(cond, "vector", batch, self.config.vector_dim, x)  # (B, D)
        tokens = pack_latents(x)  # (B, (H/2)(W/2), 4C)
        out = self.transformer(
            hidden_states=tokens,
            timestep=t.to(x.dtype) / 1000,  # FluxPipeline: t in the latents' dtype, / 1000
            guidance=guidance,
            pooled_projections=vector,
            encoder_hidden_states=context,
            txt_ids=torch.zeros(context.shape[1], 3, device=x.device, dtype=x.dtype),
            img_ids=latent_image_ids(height // 2, width // 2, device=x.device, dtype=x.dtype),
            return_dict=False,
        )[0]  # (B, (H/2)(W/2), 4·C_out)
        return unpack_latents(out, height, width)  # (B, C_out, H, W)


_WRAPPERS: Mapping[str, type[DiffusersTransformer]] = MappingProxyType(
    {cls.family: cls for cls in (DiffusersPixArt, DiffusersSD3, DiffusersFlux)}
)


# -- builders -------------------------------------------------------------------------------------


def _check_options(sample_size: Any, vae_scale_factor: Any, gradient_checkpointing: Any) -> None:
    """The scalar options, checked before a (possibly large) module is built."""
    if sample_size is not None:
        check_int("sample_size", sample_size, minimum=1)
    check_int("vae_scale_factor", vae_scale_factor, minimum=1)
    if not isinstance(gradient_checkpointing, bool):
        raise ConfigError(f"gradient_checkpointing must be True or False, got {gradient_checkpointing!r}")


def build_diffusers_transformer(
    *,
    class_name: str,
    config: Mapping[str, Any] | None = None,
    sample_size: int | None = None,
    vae_scale_factor: int = 8,
    gradient_checkpointing: bool = False,
) -> DiffusersTransformer:
    """A diffusers transformer (PixArt, SD3, Flux) as a diffkit backbone, built from its diffusers config.

    ``class_name``: PixArtTransformer2DModel, SD3Transformer2DModel or FluxTransformer2DModel;
    ``config``: its constructor's keywords (``config.json`` keys; ``_``-keys ignored, others must be
    valid); the weights are diffusers' random initialisation. The backbone's config holds the
    module's complete diffusers config. See :class:`DiffusersTransformerConfig` for the rest.
    """
    _check_class_name(class_name)
    _check_options(sample_size, vae_scale_factor, gradient_checkpointing)
    init = _plain_config(config or {})
    cls = _diffusers_class(class_name)
    _check_config_keys(cls, init)
    module = cls(**init)
    if gradient_checkpointing:
        module.enable_gradient_checkpointing()
    return _wrap(module, sample_size, vae_scale_factor)


def _wrap(module: nn.Module, sample_size: int | None, vae_scale_factor: int) -> DiffusersTransformer:
    config = DiffusersTransformerConfig(
        class_name=type(module).__name__,
        config=dict(module.config),
        sample_size=sample_size,
        vae_scale_factor=vae_scale_factor,
        gradient_checkpointing=bool(getattr(module, "is_gradient_checkpointing", False)),
    )
    wrapper = _WRAPPERS[config.family](module, config)
    wrapper.training = module.training  # the wrapper's own flag only: the module's submodules keep theirs
    return wrapper


def from_diffusers_module(
    module: nn.Module, *, sample_size: int | None = None, vae_scale_factor: int = 8
) -> DiffusersTransformer:
    """A live diffusers transformer as a diffkit backbone: the module itself is wrapped, not copied.

    The wrapper keeps the module's device, dtype, train/eval mode and weights (they are shared).
    """
    class_name = type(module).__name__
    _check_class_name(class_name)
    if not isinstance(module, _diffusers_class(class_name)):
        raise ConfigError(f"expected diffusers' {class_name}, got {type(module).__module__}.{class_name}")
    _check_options(sample_size, vae_scale_factor, False)
    return _wrap(module, sample_size, vae_scale_factor)


def _class_name_of(config: Mapping[str, Any], where: Path) -> str:
    """The supported class a diffusers ``config.json`` describes (legacy names remapped as diffusers does)."""
    class_name = config.get("_class_name")
    if not isinstance(class_name, str):
        raise CheckpointError(f"{where} has no _class_name: not a diffusers model config")
    class_name = _LEGACY_CLASSES.get((class_name, config.get("norm_type")), class_name)
    if class_name not in SUPPORTED:
        raise UnknownNameError(f"diffusers transformer class (in {where}) for the diffusers_transformer backbone",
                               class_name, SUPPORTED)
    return class_name


def _vae_scale_factor(model_folder: Path) -> int:
    """2^(levels − 1) of the sibling ``vae/`` in a pipeline folder (as the pipelines compute it); else 8."""
    from diffkit.io.files import read_json_object

    vae_config = model_folder.parent / "vae" / "config.json"
    if not vae_config.is_file():
        return 8
    levels = read_json_object(vae_config, what="diffusers VAE config").get("block_out_channels")
    return 2 ** (len(levels) - 1) if isinstance(levels, list) and levels else 8


def from_diffusers_folder(
    path: str | Path,
    *,
    subfolder: str = "transformer",
    variant: str | None = None,
    dtype: torch.dtype = torch.float32,
    sample_size: int | None = None,
    vae_scale_factor: int | None = None,
    allow_pickle: bool = False,
    allow_nonfinite: bool = False,
) -> DiffusersTransformer:
    """A diffusers model folder (``config.json`` + safetensors) as a diffkit backbone, on the CPU in eval mode.

    ``path``: the model folder, or a pipeline folder holding it as ``subfolder``. Weights are read
    as ``diffkit.load_pretrained`` reads them (safetensors, sharded too; pickle ``.bin`` only with
    ``allow_pickle``, through ``torch.load(weights_only=True)``), checked
    (names, shapes, finite values) against the module built with its parameters on the meta
    device, converted to ``dtype`` one tensor at a time and moved in: peak memory is one copy of
    the weights. ``vae_scale_factor`` defaults to the pipeline folder's ``vae/`` (else 8).
    """
    from diffkit.io.state_dicts import check_dtype, check_weights
    from diffkit.io.weights import aligned, meta_tensors, parameters_on_meta, read_diffusers_folder

    dtype = check_dtype(dtype)
    _check_options(sample_size, 1 if vae_scale_factor is None else vae_scale_factor, False)
    folder = Path(path)
    model_folder = folder if (folder / "config.json").exists() else folder / subfolder
    raw_config, state_dict = read_diffusers_folder(folder, subfolder, allow_pickle=allow_pickle, variant=variant)
    class_name = _class_name_of(raw_config, model_folder / "config.json")
    cls = _diffusers_class(class_name)
    valid = set(_init_keys(cls))
    init = {key: value for key, value in _plain_config(raw_config).items() if key in valid}  # as diffusers' from_config
    with parameters_on_meta():
        module = cls(**init)
    what = f"the weights in {model_folder}"
    check_weights(module, state_dict, what=what, allow_nonfinite=allow_nonfinite)
    for key in list(state_dict):  # one tensor at a time: the old one is freed as the new one is made
        state_dict[key] = aligned(state_dict.pop(key).to(dtype).contiguous())
    module.load_state_dict(state_dict, strict=True, assign=True)
    del state_dict
    module.to(dtype)  # the buffers the constructor computed
    left = meta_tensors(module)
    if left:
        raise CheckpointError(f"{what} leave {class_name} tensors unset: {', '.join(left[:5])}")
    if vae_scale_factor is None:
        vae_scale_factor = _vae_scale_factor(model_folder)
    return _wrap(module.eval(), sample_size, vae_scale_factor)

