"""The pixel-space UNet of DDPM (Ho et al. 2020) and ADM (Dhariwal & Nichol 2021).

The network, in order:

1. ``conv_in``: 3×3 convolution, C_in → ch_0 channels, on x — or on [x, c] (channels) when the
   conditioning record carries ``concat`` c, so that C_in counts both;
2. embedding e [B, E]: sinusoidal features of t (width ch_0) → Linear, SiLU, Linear (E = 4·ch_0
   by default), plus a class-label embedding [B, E] when ``num_classes > 0`` (ADM's class
   conditioning; the table has a null class for classifier-free guidance), plus W·v + b for a
   conditioning vector v [B, D_v] when ``vector_dim`` = D_v > 0;
3. down path, one *level* per entry of ``block_out_channels`` (ch_0, ch_1, …): at level ℓ,
   ``layers_per_block`` :class:`~diffkit.models.backbones.layers.ResBlock` s (C → ch_ℓ) that each take
   e, each followed by self-attention when ℓ ∈ ``attention_levels``, then (all but the last
   level) a downsample ×½ — a stride-2 convolution, 2×2 average pooling, or a ResBlock that
   pools inside (ADM's ``resblock_updown``). Every intermediate output, starting with
   ``conv_in``'s, is pushed on a skip stack;
4. middle: ResBlock, self-attention (optional), ResBlock at the coarsest resolution;
5. up path, the levels in reverse: ``layers_per_block + 1`` ResBlocks, each on the
   concatenation [h, skip] (channels) of h with the next skip popped from the stack, each
   followed by attention where the mirrored down level has it, then (all but level 0) an
   upsample ×2 (nearest, then a convolution, or a ResBlock that upsamples inside);
6. GroupNorm, SiLU and a 3×3 convolution to ``out_channels``.

Residual blocks add the embedding before their second norm (DDPM) or apply ADM's scale-shift
norm GN(h)·(1 + s) + b with (s, b) from e (``scale_shift=True``). Attention is single-head
over the H·W positions (DDPM) or has heads of ``attention_head_dim`` channels (ADM: 64).

The module layout mirrors diffusers' ``UNet2DModel`` level for level, and the residual block
keeps diffusers' parameter names; :mod:`diffkit.io.diffusers.unet` converts its
weights. Initialisation: PyTorch's defaults, with the last convolution of every residual
block, the output projection of every attention layer and ``conv_out`` set to zero (DDPM/ADM's
``zero_module``), so that every block starts as the identity and the network outputs 0.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import attrs
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from diffkit.errors import ConfigError, ShapeError
from diffkit.models.backbones.embeddings import (
    LabelEmbedder,
    add_vector_embedding,
    broadcast_timesteps,
    check_conditioning,
    class_labels,
    concat_conditioning,
    input_in_weight_dtype,
    timestep_embedding,
)
from diffkit.models.backbones.layers import Downsample2D, ResBlock, SpatialSelfAttention, Upsample2D, zero_init
from diffkit.models.backbones.sharding import unet_units
from diffkit.models.backbones.sizes import SizeRule
from diffkit.models.configs import ModelConfig
from diffkit.validators import (
    as_tuple,
    boolean,
    int_at_least,
    is_integer,
    optional,
    positive_ints,
    positive_real,
    probability,
)

RESAMPLE_KINDS = ("conv", "pool", "resnet")

# -- configuration --------------------------------------------------------------------------


def _padding(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if isinstance(value, bool) or value not in (0, 1):
        raise ConfigError(f"{attribute.name} must be 0 or 1, got {value!r}")


def _level_indices(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, tuple) or not all(is_integer(v) for v in value):
        raise ConfigError(f"{attribute.name} must be a tuple of level indices, got {value!r}")


def _model_defaults(cls: type, fields: list[attrs.Attribute]) -> list[attrs.Attribute]:
    """attrs ``field_transformer`` of the UNet configs: the class's ``DEFAULTS`` replace the shared fields' defaults."""
    return [f.evolve(default=cls.DEFAULTS[f.name]) if f.name in cls.DEFAULTS else f for f in fields]


@attrs.frozen(kw_only=True)
class PyramidGeometry(ModelConfig):
    """What the UNet configs share: the fields below, levels of ``block_out_channels``, the
    time-embedding width, and the check that ``sample_size`` survives every downsampling.

    A subclass is declared ``@attrs.frozen(kw_only=True, field_transformer=_model_defaults)``
    and gives the defaults that differ between the models in its ``DEFAULTS`` mapping.
    """

    DEFAULTS: ClassVar[Mapping[str, Any]] = MappingProxyType({})
    sample_size: int = attrs.field(validator=int_at_least(1))
    """Nominal height = width of the images or latents (SD 1.x: 512 px / 8); the network accepts
    any H, W divisible by 2^(levels−1)."""
    in_channels: int = attrs.field(validator=int_at_least(1))
    """C_in, the image or latent channels (4 for SD's KL-f8 autoencoder; any count works), plus the
    channels of a conditioning record's ``concat``, if any."""
    out_channels: int = attrs.field(validator=int_at_least(1))
    """C_out (2·C_in for ADM's learned σ: the prediction, then the variance channels)."""
    block_out_channels: tuple[int, ...] = attrs.field(converter=as_tuple, validator=positive_ints)
    """ch_ℓ, the width of each level, finest first (DDPM: 128 × (1, 2, 2, 2); SD: 320 × (1, 2, 4, 4))."""
    layers_per_block: int = attrs.field(default=2, validator=int_at_least(1))
    """ResBlocks per level on the way down (the up path has one more per level)."""
    time_embed_dim: int | None = attrs.field(default=None, validator=optional(int_at_least(1)))
    """E, the embedding width; ``None``: 4·ch_0."""
    timestep_cos_first: bool = attrs.field(validator=boolean)
    """Sinusoidal features [cos, sin] (ADM, SD, diffusers' ``flip_sin_to_cos=True``) or [sin, cos] (DDPM)."""
    timestep_freq_shift: int = attrs.field(validator=_padding)
    """Frequencies 10000^(−i/(half − shift)): 1 for DDPM, 0 for ADM and SD."""
    vector_dim: int = attrs.field(default=0, validator=int_at_least(0))
    """D_v > 0: a Linear(D_v → E) adds the conditioning record's ``vector`` [B, D_v] to the embedding."""
    dropout: float = attrs.field(validator=probability)
    """Dropout in every ResBlock, before its second convolution (DDPM CIFAR-10: 0.1)."""
    downsample_padding: int = attrs.field(validator=_padding)
    """Of the stride-2 conv: 1 symmetric (SD); 0 one zero row/column at the bottom/right (DDPM's TF "SAME")."""
    norm_groups: int = attrs.field(default=32, validator=int_at_least(1))
    """GroupNorm groups (every norm, the latent UNet's transformers' included)."""
    norm_eps: float = attrs.field(validator=positive_real)
    """GroupNorm ε of the ResBlocks, the output norm and the pixel UNet's attention (DDPM 1e-6; ADM,
    SD and diffusers' default 1e-5); the latent UNet's transformers' is fixed at 1e-6."""
    gradient_checkpointing: bool = attrs.field(default=False, validator=boolean)
    """Recompute each block's activations in the backward pass (saves memory when training)."""

    @property
    def num_levels(self) -> int:
        return len(self.block_out_channels)

    @property
    def downsample_factor(self) -> int:
        """2^(levels−1): H and W must be multiples of this."""
        return 2 ** (len(self.block_out_channels) - 1)

    @property
    def embed_dim(self) -> int:
        """E: ``time_embed_dim`` or 4·ch_0."""
        return self.time_embed_dim if self.time_embed_dim is not None else 4 * self.block_out_channels[0]

    def check_sample_size(self) -> None:
        """``sample_size`` must be divisible by 2^(levels−1)."""
        if self.sample_size % self.downsample_factor:
            raise ConfigError(
                f"sample_size {self.sample_size} is not divisible by 2^(levels−1) = {self.downsample_factor}"
            )


@attrs.frozen(kw_only=True, field_transformer=_model_defaults)
class UNetConfig(PyramidGeometry):
    """Configuration of :class:`UNet`; the defaults are DDPM's CIFAR-10 model (35.7 M parameters).

    ``PRESETS["ddpm-cifar10"]`` etc. are values of this class; change one with
    ``attrs.evolve(PRESETS[...], num_classes=10)`` or :meth:`from_preset`.
    """

    DEFAULTS: ClassVar[Mapping[str, Any]] = MappingProxyType(dict(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
        timestep_cos_first=False, timestep_freq_shift=1, dropout=0.1, downsample_padding=0, norm_eps=1e-6,
    ))
    attention_levels: tuple[int, ...] = attrs.field(default=(1,), converter=as_tuple, validator=_level_indices)
    """Levels (0 = finest) whose ResBlocks are followed by self-attention, down and up."""
    mid_attention: bool = attrs.field(default=True, validator=boolean)
    """Self-attention between the two middle ResBlocks."""
    attention_head_dim: int | None = attrs.field(default=None, validator=optional(int_at_least(1)))
    """Channels per attention head; ``None``: one head over all channels (DDPM)."""
    num_classes: int = attrs.field(default=0, validator=int_at_least(0))
    """Class labels 0 … num_classes−1 plus the null class ``num_classes``; 0 = unconditional."""
    scale_shift: bool = attrs.field(default=False, validator=boolean)
    """ADM's scale-shift norm in the ResBlocks instead of adding the embedding."""
    resample: str = attrs.field(default="conv", validator=attrs.validators.in_(RESAMPLE_KINDS))
    """Down/upsampling: ``"conv"`` (stride-2 conv / nearest + conv), ``"pool"`` (average pool /
    nearest, no weights) or ``"resnet"`` (ResBlocks that resample inside, ADM's resblock_updown)."""

    def __attrs_post_init__(self) -> None:
        levels = len(self.block_out_channels)
        for level in self.attention_levels:
            if not 0 <= level < levels:
                raise ConfigError(f"attention level {level} is out of range for {levels} levels (0 … {levels - 1})")
        for width in self.block_out_channels:
            if width % self.norm_groups:
                raise ConfigError(
                    f"every block_out_channels entry must be divisible by norm_groups={self.norm_groups}; got {width}"
                )
            attends = self.mid_attention and width == self.block_out_channels[-1]
            attends = attends or any(self.block_out_channels[lv] == width for lv in self.attention_levels)
            if attends and self.attention_head_dim is not None and width % self.attention_head_dim:
                raise ConfigError(
                    f"width {width} of an attention level is not divisible by attention_head_dim={self.attention_head_dim}"
                )
        self.check_sample_size()

    PRESET_NOUN: ClassVar[str] = "UNet preset"


PRESETS: Mapping[str, UNetConfig] = MappingProxyType(
    {
        # DDPM (Ho et al. 2020, App. B) CIFAR-10: 32 px, 128·(1, 2, 2, 2), attention at 16×16,
        # dropout 0.1 — diffusers' google/ddpm-cifar10-32.
        "ddpm-cifar10": UNetConfig(),
        # DDPM 256 px (LSUN / CelebA-HQ): 128·(1, 1, 2, 2, 4, 4), attention at 16×16 — google/ddpm-church-256.
        "ddpm-256": UNetConfig(
            sample_size=256,
            block_out_channels=(128, 128, 256, 256, 512, 512),
            attention_levels=(4,),
            dropout=0.0,
        ),
        # diffusers' UNet2DModel as the seed builds it: 128 px, six plain levels, attention only
        # in the middle (diffusers' default attention_head_dim=8: 64 heads), diffusers' defaults.
        "unet2d-128": UNetConfig(
            sample_size=128,
            block_out_channels=(128, 128, 256, 256, 512, 512),
            attention_levels=(),
            attention_head_dim=8,
            timestep_cos_first=True,
            timestep_freq_shift=0,
            dropout=0.0,
            downsample_padding=1,
            norm_eps=1e-5,
        ),
        # ADM (Dhariwal & Nichol 2021) class-conditional ImageNet 64: 192·(1, 2, 3, 4), 3 blocks,
        # attention at 32, 16, 8 with 64-channel heads, scale-shift norm, resblock up/down,
        # learned σ (6 output channels).
        "adm-imagenet64": UNetConfig(
            sample_size=64,
            block_out_channels=(192, 384, 576, 768),
            layers_per_block=3,
            attention_levels=(1, 2, 3),
            attention_head_dim=64,
            timestep_cos_first=True,
            timestep_freq_shift=0,
            num_classes=1000,
            dropout=0.1,
            scale_shift=True,
            resample="resnet",
            out_channels=6,
            norm_eps=1e-5,
        ),
    }
)


# -- the network ----------------------------------------------------------------------------


class DownLevel(nn.Module):
    """One level of the down path: ResBlocks (+ attention after each), then an optional downsample."""

    def __init__(self, cfg: UNetConfig, level: int, in_channels: int) -> None:
        super().__init__()
        width, attend = cfg.block_out_channels[level], level in cfg.attention_levels
        block = _block_factory(cfg)
        self.resnets = nn.ModuleList(
            block(in_channels if i == 0 else width, width) for i in range(cfg.layers_per_block)
        )
        self.attentions = nn.ModuleList(_attention(cfg, width) for _ in range(cfg.layers_per_block if attend else 0))
        self.downsample: nn.Module | None = None
        if level < cfg.num_levels - 1:
            if cfg.resample == "resnet":
                self.downsample = block(width, width, down=True)
            else:
                self.downsample = Downsample2D(width, cfg.resample == "conv", padding=cfg.downsample_padding)


class UpLevel(nn.Module):
    """One level of the up path: ResBlocks on [h, skip] (+ attention after each), then an optional upsample."""

    def __init__(self, cfg: UNetConfig, level: int, in_channels: int, skip_channels: list[int]) -> None:
        super().__init__()
        width, attend = cfg.block_out_channels[level], level in cfg.attention_levels
        block = _block_factory(cfg)
        self.resnets = nn.ModuleList(
            block((in_channels if i == 0 else width) + skip, width) for i, skip in enumerate(skip_channels)
        )
        self.attentions = nn.ModuleList(_attention(cfg, width) for _ in range(len(skip_channels) if attend else 0))
        self.upsample: nn.Module | None = None
        if level > 0:
            if cfg.resample == "resnet":
                self.upsample = block(width, width, up=True)
            else:
                self.upsample = Upsample2D(width, cfg.resample == "conv")


class MidBlock(nn.Module):
    """ResBlock, self-attention (optional), ResBlock at the coarsest level."""

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        width = cfg.block_out_channels[-1]
        block = _block_factory(cfg)
        self.resnets = nn.ModuleList([block(width, width), block(width, width)])
        self.attention = _attention(cfg, width) if cfg.mid_attention else None


def level_resblock(cfg: PyramidGeometry, cin: int, cout: int, **options: Any) -> ResBlock:
    """A ResBlock C_in → C_out taking the embedding e, with ``cfg``'s norms and dropout; ``options``
    are ResBlock's others (``scale_shift``, ``up``, ``down``)."""
    return ResBlock(
        cin, cout, temb_channels=cfg.embed_dim, groups=cfg.norm_groups, eps=cfg.norm_eps, dropout=cfg.dropout, **options
    )


def _block_factory(cfg: UNetConfig) -> Callable[..., ResBlock]:
    """``block(cin, cout, up=False, down=False)``: a ResBlock of this UNet."""
    return functools.partial(level_resblock, cfg, scale_shift=cfg.scale_shift)


def _attention(cfg: UNetConfig, width: int) -> SpatialSelfAttention:
    return SpatialSelfAttention(width, cfg.attention_head_dim, groups=cfg.norm_groups, eps=cfg.norm_eps)


def build_pyramid(
    config: Any,
    down_level: Callable[..., nn.Module],
    mid_block: Callable[..., nn.Module],
    up_level: Callable[..., nn.Module],
) -> tuple[nn.ModuleList, nn.Module, nn.ModuleList]:
    """(down, mid, up) of a UNet with levels ℓ = 0 … L−1 of widths c_ℓ (``block_out_channels``).

    The skip stack: ``conv_in``'s output (c_0), then each down level pushes its
    ``layers_per_block`` block outputs and, except the last level, its downsampled output.
    Up level ℓ (built from the deepest up) pops ``layers_per_block`` + 1 of them in reverse
    order, so ``popped`` gives each up block the channels of the skip it concatenates. Used
    by the pixel UNet and the latent UNet alike, each with its own level classes:
    ``down_level(config, ℓ, in_width)``, ``mid_block(config)``, ``up_level(config, ℓ, in_width, popped)``.
    """
    chans, per_level = config.block_out_channels, config.layers_per_block
    skips, width = [chans[0]], chans[0]
    down = nn.ModuleList()
    for level in range(config.num_levels):
        down.append(down_level(config, level, width))
        width = chans[level]
        skips += [width] * per_level + ([width] if level < config.num_levels - 1 else [])
    mid = mid_block(config)
    up = nn.ModuleList()
    for level in reversed(range(config.num_levels)):
        popped = [skips.pop() for _ in range(per_level + 1)]
        up.append(up_level(config, level, width, popped))
        width = chans[level]
    return down, mid, up


class PyramidUNet(nn.Module):
    """What both UNets share: ``conv_in``, ``time_embed`` (``linear_1``, ``linear_2``), ``class_embed``
    (when given ``num_classes``), ``vector_embed`` (with ``vector_dim`` > 0), the ``down``/``mid``/``up``
    pyramid of :func:`build_pyramid` from the subclass's level classes, ``norm_out`` and ``conv_out``;
    the embedding, the forward pass through them and gradient checkpointing. What the attention
    layers take after h comes from :meth:`_attention_inputs`; ``MODEL`` names the network in errors.
    """

    MODEL: ClassVar[str]

    def __init__(
        self, config: Any, levels: tuple[Callable[..., nn.Module], ...], *, num_classes: int | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.gradient_checkpointing = config.gradient_checkpointing
        chans, emb = config.block_out_channels, config.embed_dim
        self.conv_in = nn.Conv2d(config.in_channels, chans[0], kernel_size=3, padding=1)
        self.time_embed = nn.ModuleDict({"linear_1": nn.Linear(chans[0], emb), "linear_2": nn.Linear(emb, emb)})
        if num_classes is not None:
            self.class_embed = LabelEmbedder(num_classes, emb) if num_classes > 0 else None
        self.vector_embed = nn.Linear(config.vector_dim, emb) if config.vector_dim > 0 else None

        self.down, self.mid, self.up = build_pyramid(config, *levels)
        self.norm_out = nn.GroupNorm(config.norm_groups, chans[0], eps=config.norm_eps)
        self.conv_out = nn.Conv2d(chans[0], config.out_channels, kernel_size=3, padding=1)
        self.initialize_weights()

    def _time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        """The time embedding [B, E] of timesteps t [B]: sinusoidal features, Linear, SiLU, Linear."""
        cfg = self.config
        ch0 = cfg.block_out_channels[0]
        freq = timestep_embedding(t, ch0, freq_shift=cfg.timestep_freq_shift)  # (B, ch_0) float32, [cos, sin]
        if not cfg.timestep_cos_first:
            half = ch0 // 2
            freq = torch.cat([freq[:, half : 2 * half], freq[:, :half], freq[:, 2 * half :]], dim=1)  # [sin, cos]
        linear_1, linear_2 = self.time_embed["linear_1"], self.time_embed["linear_2"]
        return linear_2(F.silu(linear_1(freq.to(linear_1.weight.dtype))))  # (B, E)

    def embed(self, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """The time embedding e [B, E] of timesteps t [B] (+ the projected ``vector`` of ``cond``)."""
        return add_vector_embedding(self._time_embedding(t), cond, self.vector_embed)  # (B, E)

    def sharding_units(self) -> list[nn.Module]:
        """The blocks FSDP shards one by one (:mod:`diffkit.models.backbones.sharding`)."""
        return unet_units(self)

    def size_rule(self) -> SizeRule:
        """Any H and W divisible by 2^(levels−1): convolutions, and attention over any token count."""
        return SizeRule(self.config.downsample_factor)

    def _run(self, module: nn.Module, *args: torch.Tensor | None) -> torch.Tensor:
        """module(*args), recomputed in the backward pass under gradient checkpointing."""
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(module, *args, use_reentrant=False)
        return module(*args)

    def _resample(self, module: nn.Module, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """A down/upsample: a ResBlock resampling inside takes e (and is checkpointed), a resampler h alone."""
        return self._run(module, h, e) if isinstance(module, ResBlock) else module(h)

    def _attention_inputs(self, cond: Any, x: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """What every attention layer takes after h: nothing (self-attention)."""
        return ()

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, cond: Any = None) -> torch.Tensor:
        cfg, model = self.config, self.MODEL
        x, x_dtype = input_in_weight_dtype(x, self.conv_in.weight, model=model)  # computed in the weights' dtype
        x = concat_conditioning(x, cond, cfg.in_channels, model=model)  # (B, C_in, H, W): [x, concat]
        if x.shape[2] % cfg.downsample_factor or x.shape[3] % cfg.downsample_factor:
            raise ShapeError(
                f"{model} input height and width must be multiples of {cfg.downsample_factor}, got {tuple(x.shape[2:])}"
            )
        extra = self._attention_inputs(cond, x)
        e = self.embed(broadcast_timesteps(t, x.shape[0], x.device), cond)  # (B, E)

        h = self.conv_in(x)  # (B, ch_0, H, W)
        skips = [h]
        for level in self.down:  # level ℓ: (B, ch_ℓ, H/2^ℓ, W/2^ℓ)
            for i, resnet in enumerate(level.resnets):
                h = self._run(resnet, h, e)
                if len(level.attentions):
                    h = self._run(level.attentions[i], h, *extra)
                skips.append(h)
            if level.downsample is not None:
                h = self._resample(level.downsample, h, e)
                skips.append(h)  # (B, ch_ℓ, H/2^(ℓ+1), W/2^(ℓ+1))

        h = self._run(self.mid.resnets[0], h, e)  # (B, ch_{L−1}, H/2^(L−1), W/2^(L−1))
        if self.mid.attention is not None:
            h = self._run(self.mid.attention, h, *extra)
        h = self._run(self.mid.resnets[1], h, e)

        for level in self.up:  # level ℓ = L−1−i
            for i, resnet in enumerate(level.resnets):
                h = self._run(resnet, torch.cat([h, skips.pop()], dim=1), e)  # (B, ch_ℓ, ·, ·)
                if len(level.attentions):
                    h = self._run(level.attentions[i], h, *extra)
            if level.upsample is not None:
                h = self._resample(level.upsample, h, e)
        out = self.conv_out(F.silu(self.norm_out(h)))  # (B, C_out, H, W)
        return out if x_dtype == self.conv_in.weight.dtype else out.to(x_dtype)


class UNet(PyramidUNet):
    """DDPM/ADM UNet built from one :class:`UNetConfig`.

    ``forward(x, t, cond=None)``: x [B, C_in, H, W] with H, W multiples of 2^(levels−1); t [B]
    the timestep in the model's units (training timesteps 0 … T−1; fractional values allowed;
    a scalar is broadcast); cond the conditioning: None for the null class, labels [B],
    or a :class:`~diffkit.models.conditioners.Conditioning` record, of which the model reads
    ``labels`` (:func:`~diffkit.models.backbones.embeddings.class_labels`), ``vector`` (with
    ``vector_dim`` > 0) and ``concat`` (x's channels plus these make ``in_channels``); it must
    be able to use the record (:func:`~diffkit.models.backbones.embeddings.check_conditioning`).
    Returns [B, C_out, H, W]. A floating-point x of any dtype is cast to the weights' dtype on
    entry (a float64 x into a float32 model works) and the output returned in x's dtype
    (:func:`~diffkit.models.backbones.embeddings.input_in_weight_dtype`); a non-float x is an error.

    Submodules: ``conv_in``, ``time_embed`` (``linear_1``, ``linear_2``), ``class_embed``,
    ``vector_embed`` (with ``vector_dim`` > 0),
    ``down[ℓ]`` / ``up[i]`` (``up[i]`` is level L−1−i) with ``resnets``, ``attentions`` and
    ``downsample`` / ``upsample``, ``mid``, ``norm_out``, ``conv_out``.
    ``gradient_checkpointing`` (initialised from the config) may be switched on the module.
    """

    MODEL: ClassVar[str] = "UNet"

    def __init__(self, config: UNetConfig | None = None) -> None:
        config = UNetConfig.resolve(config, "UNet")
        super().__init__(config, (DownLevel, MidBlock, UpLevel), num_classes=config.num_classes)

    def initialize_weights(self) -> None:
        """DDPM/ADM: zero the last layer of every residual branch and the output convolution."""
        branches = [m for m in self.modules() if isinstance(m, (ResBlock, SpatialSelfAttention))]
        zero_init(*(m.conv2 if isinstance(m, ResBlock) else m.attn.proj for m in branches), self.conv_out)

    def readable_conditioning(self) -> set[str]:
        """The conditioning record fields this model reads."""
        readable = {"concat"}
        readable |= {"labels"} if self.class_embed is not None else set()
        return readable | ({"vector"} if self.vector_embed is not None else set())

    def embed(self, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """The embedding e [B, E] of timesteps t [B] (+ the class embedding and vector of ``cond``)."""
        e = self._time_embedding(t)  # (B, E)
        check_conditioning(cond, self.readable_conditioning(), model="UNet", tensor_field="labels")
        if self.class_embed is not None:
            labels = class_labels(cond, t.shape[0], self.class_embed.null_label, t.device)  # (B,)
            e = e + self.class_embed(labels)  # (B, E)
        return add_vector_embedding(e, cond, self.vector_embed)  # (B, E)


# -- registry entry -------------------------------------------------------------------------


def build_unet(*, preset: str | None = None, **config: Any) -> UNet:
    """UNet (Ho et al. 2020; Dhariwal & Nichol 2021): the pixel-space DDPM/ADM UNet.

    ``build_unet(preset="ddpm-cifar10", num_classes=10)`` starts from a preset and changes
    fields; without ``preset`` the fields are :class:`UNetConfig`'s (defaults: DDPM CIFAR-10).
    """
    return UNet(UNetConfig.build_config(preset, config))


# An explicit signature so that `diffkit.build("backbone", "unet", ...)` can name the valid options.
build_unet.__signature__ = UNetConfig.builder_signature()  # type: ignore[attr-defined]
