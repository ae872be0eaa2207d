"""The latent-diffusion UNet with cross-attention (Rombach et al. 2022, "High-Resolution Image
Synthesis with Latent Diffusion Models", §3.3 and App. E) — Stable Diffusion's denoiser.

The pixel UNet of :mod:`diffkit.models.backbones.unet` (DDPM ResBlocks, skip stack, resampling) with
its self-attention layers replaced by *spatial transformers*, so that the network can attend
to a conditioning sequence (a text encoder's token features, say) τ(y) = context [B, M, d_ctx]:

1. ``conv_in``: 3×3 convolution, C_in latent channels → ch_0 (any C_in: 4 for SD's KL-f8), on
   x — or on [x, c] (channels) when the conditioning record carries ``concat`` c (LDM's
   inpainting / super-resolution models), so that C_in counts both;
2. embedding e [B, E]: sinusoidal features of t (width ch_0, [cos, sin], shift 0) → Linear, SiLU,
   Linear (E = 4·ch_0), plus W·v + b for a conditioning vector v [B, D_v] (a pooled text
   embedding, say) when ``vector_dim`` = D_v > 0, or plus SDXL's *text-time* embedding
   (Podell et al. 2023, §2.2) when ``text_time_dim`` = D_a > 0 (below);
3. down path: at level ℓ, ``layers_per_block`` ResBlocks (taking e), each followed by a spatial
   transformer of ``transformer_depth`` blocks (one count, or one per level) when
   ℓ ∈ ``cross_attention_levels``, then (all but the last level) a 3×3 stride-2 convolution;
   every intermediate output, from ``conv_in``'s on, is pushed on the skip stack;
4. middle: ResBlock, spatial transformer (the last level's heads and depth), ResBlock;
5. up path (levels in reverse): ``layers_per_block + 1`` ResBlocks on [h, skip], each followed
   by a spatial transformer where the mirrored down level has one, then nearest ×2 + conv;
6. GroupNorm, SiLU, 3×3 convolution → C_out.

A spatial transformer (LDM's ``SpatialTransformer``, diffusers' ``Transformer2DModel``) on
x [B, C, H, W], with C = H_heads·d:

    h = proj_in(GN(x))                   1×1 conv (SD 1.x) or linear on tokens (SD 2.x)
    tokens [B, N = H·W, C], then ``transformer_depth`` blocks, each (pre-norm, residual):
        h = h + SelfAttn(LN1(h))
        h = h + CrossAttn(LN2(h), context, mask)    Q from h, K and V from the context
        h = h + GEGLU-FF(LN3(h))                    inner width 4·C (Shazeer 2020)
    out = x + proj_out(h)  (back to [B, C, H, W])

SDXL's text-time embedding (diffusers' ``addition_embed_type="text_time"``): the record's
``vector`` v [B, P + K] is the pooled text embedding p [B, P] followed by K raw *time ids*
τ [B, K] (SDXL base: K = 6, the original H, W, the crop's top, left, the target H, W; the
refiner: K = 5, with an aesthetic score). With D_t = ``text_time_embed_dim`` and
D_a = ``text_time_dim`` = P + K·D_t (so P = D_a − K·D_t):

    a = [p, sinusoid(τ_1), …, sinusoid(τ_K)]     [B, D_a]; each sinusoid [B, D_t], float32,
                                                 with the time embedding's cos-first / shift
    e = e + Linear(SiLU(Linear(a)))              D_a → E → E  (``add_embed``)

Conditioning (:func:`cross_attention_context`): ``cond`` is None, a context tensor
[B, M, d_ctx], or a record (:class:`~diffkit.models.conditioners.Conditioning`) with ``context`` and
an optional boolean ``mask`` [B, M] (True = keep the token), and optionally ``vector`` and
``concat`` (a model with the text-time embedding *requires* the ``vector``, as diffusers
requires ``text_embeds`` and ``time_ids``). **Without a context the cross-attention sub-layers
are skipped** (their residual branch adds nothing; the rest of the network runs unchanged), and a sample
whose mask keeps no token is treated the same way. This is *not* Stable Diffusion's
"unconditional" input for classifier-free guidance — that is the text encoder's encoding of
the empty prompt, a real context the conditioner supplies. diffusers has no counterpart:
its ``UNet2DConditionModel`` requires ``encoder_hidden_states``.

Initialisation: PyTorch's defaults, with the last convolution of every ResBlock, every
transformer's ``proj_out`` and ``conv_out`` zeroed (LDM's ``zero_module``), so the network
starts at output 0. The module names follow diffusers' ``UNet2DConditionModel``;
:mod:`diffkit.io.diffusers.latent_unet` converts its weights.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import attrs
import torch
import torch.nn.functional as F
from torch import nn

from diffkit.errors import ConfigError, ShapeError
from diffkit.models.backbones.embeddings import check_conditioning, conditioning_field, timestep_embedding
from diffkit.models.backbones.layers import Attention, Downsample2D, FeedForward, ResBlock, Upsample2D, zero_init
from diffkit.models.backbones.unet import PyramidGeometry, PyramidUNet, _level_indices, _model_defaults, level_resblock
from diffkit.validators import as_tuple, boolean, int_at_least, positive_ints

# Fixed by LDM / diffusers' Transformer2DModel and BasicTransformerBlock (not configurable there).
TRANSFORMER_GROUPNORM_EPS = 1e-6
TRANSFORMER_LAYERNORM_EPS = 1e-5
FF_MULT = 4

# -- conditioning ---------------------------------------------------------------------------


def cross_attention_context(
    cond: Any, batch_size: int, context_dim: int
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The (context [B, M, d_ctx] or None, mask bool [B, M] or None) a latent UNet reads from ``cond``.

    The rule:

    * ``None`` — no context: the cross-attention layers are skipped;
    * a floating-point tensor [B, M, d_ctx] — the context, every token kept;
    * a :class:`~diffkit.models.conditioners.Conditioning` record (or any object with a ``context``
      attribute and optionally ``mask``), or a mapping with a ``"context"`` entry (and
      optionally ``"mask"``) — that context (None: no context) and that mask: bool [B, M],
      True = attend to the token, None = keep every token.

    Anything else raises a ``TypeError``; wrong shapes or dtypes raise
    :class:`~diffkit.errors.ShapeError`.
    """
    if cond is None:
        return None, None
    if isinstance(cond, torch.Tensor):
        context, mask = cond, None
    elif isinstance(cond, Mapping):
        if "context" not in cond:
            raise TypeError(f"a conditioning mapping must have a 'context' entry; it has {sorted(cond)}")
        context, mask = cond["context"], cond.get("mask")
    elif hasattr(cond, "context"):
        context, mask = cond.context, getattr(cond, "mask", None)
    else:
        raise TypeError(
            "cond must be None, a context tensor [B, M, d_ctx], or a record with 'context' "
            f"(and optionally 'mask'); got {type(cond).__name__}"
        )
    if context is None:
        if mask is not None:
            raise ShapeError("a mask was given without a context")
        return None, None
    if not isinstance(context, torch.Tensor) or not context.dtype.is_floating_point:
        raise ShapeError(f"the context must be a floating-point tensor, got {getattr(context, 'dtype', type(context))}")
    if context.ndim != 3 or context.shape[0] != batch_size or context.shape[2] != context_dim:
        raise ShapeError(
            f"the context must have shape [B={batch_size}, M, d_ctx={context_dim}], got {tuple(context.shape)}"
        )
    if mask is not None and (
        not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != context.shape[:2]
    ):
        raise ShapeError(
            f"the context mask must be a bool tensor [B, M] = {tuple(context.shape[:2])}, "
            f"got {getattr(mask, 'dtype', type(mask))} {tuple(getattr(mask, 'shape', ()))}"
        )
    return context, mask


# -- configuration --------------------------------------------------------------------------


def _per_level(value: Any) -> Any:
    """An int stays an int (every level); a list becomes a tuple (one entry per level)."""
    return tuple(value) if isinstance(value, list) else value


def _per_level_validator(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """A positive int, or a tuple of them (its length is checked against the levels later)."""
    if isinstance(value, tuple):
        positive_ints(instance, attribute, value)
    else:
        int_at_least(1)(instance, attribute, value)


@attrs.frozen(kw_only=True, field_transformer=_model_defaults)
class LatentUNetConfig(PyramidGeometry):
    """Configuration of :class:`LatentUNet`; the defaults are Stable Diffusion 1.x's UNet (860 M).

    ``PRESETS["sd15"]`` etc. are values of this class; change one with ``attrs.evolve`` or
    :meth:`from_preset`.
    """

    DEFAULTS: ClassVar[Mapping[str, Any]] = MappingProxyType(dict(
        sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
        timestep_cos_first=True, timestep_freq_shift=0, dropout=0.0, downsample_padding=1, norm_eps=1e-5,
    ))
    cross_attention_levels: tuple[int, ...] = attrs.field(
        default=(0, 1, 2), converter=as_tuple, validator=_level_indices
    )
    """Levels (0 = finest) whose ResBlocks are followed by a spatial transformer, down and up
    (the middle always has one)."""
    num_heads: int | tuple[int, ...] = attrs.field(default=8, converter=_per_level, validator=_per_level_validator)
    """Attention heads: one number for every level (SD 1.x: 8) or one per level (SD 2.x:
    (5, 10, 20, 20), i.e. 64-channel heads); the middle uses the last level's."""
    transformer_depth: int | tuple[int, ...] = attrs.field(
        default=1, converter=_per_level, validator=_per_level_validator
    )
    """Transformer blocks per spatial transformer: one number for every level (SD 1.x / 2.x: 1)
    or one per level (SDXL: (1, 2, 10)); the middle uses the last level's."""
    context_dim: int = attrs.field(default=768, validator=int_at_least(1))
    """d_ctx, the width of the context tokens (CLIP ViT-L/14: 768; OpenCLIP ViT-H: 1024)."""
    use_linear_projection: bool = attrs.field(default=False, validator=boolean)
    """proj_in / proj_out: linear layers on the tokens (SD 2.x, SDXL) or 1×1 convolutions (SD 1.x)."""
    text_time_dim: int = attrs.field(default=0, validator=int_at_least(0))
    """D_a = P + K·D_t > 0: add SDXL's text-time embedding of the conditioning ``vector``
    [B, P + K] (pooled text embedding, then K time ids) to the time embedding; D_a is the input
    width of ``add_embed`` (diffusers' ``projection_class_embeddings_input_dim``; SDXL base:
    2816 = 1280 + 6·256). 0: none (SD 1.x / 2.x)."""
    text_time_ids: int = attrs.field(default=6, validator=int_at_least(1))
    """K, the time ids at the end of the ``vector`` (SDXL base: 6; the refiner: 5). Read only
    with ``text_time_dim`` > 0."""
    text_time_embed_dim: int = attrs.field(default=256, validator=int_at_least(1))
    """D_t, the width of each time id's sinusoidal features (diffusers'
    ``addition_time_embed_dim``; SDXL: 256). Read only with ``text_time_dim`` > 0."""

    def __attrs_post_init__(self) -> None:
        levels = len(self.block_out_channels)
        for level in self.cross_attention_levels:
            if not 0 <= level < levels:
                raise ConfigError(
                    f"cross-attention level {level} is out of range for {levels} levels (0 … {levels - 1})"
                )
        for name in ("num_heads", "transformer_depth"):
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != levels:
                raise ConfigError(f"{name} has {len(value)} entries for {levels} levels")
        for level, width in enumerate(self.block_out_channels):
            if width % self.norm_groups:
                raise ConfigError(
                    f"every block_out_channels entry must be divisible by norm_groups={self.norm_groups}; got {width}"
                )
            attends = level in self.cross_attention_levels or level == levels - 1
            if attends and width % self.heads(level):
                raise ConfigError(
                    f"width {width} of level {level} is not divisible by its {self.heads(level)} attention heads"
                )
        self.check_sample_size()
        if self.text_time_dim:
            self._check_text_time()

    def _check_text_time(self) -> None:
        """The text-time embedding needs a pooled width P ≥ 0, usable sinusoids, and to be the vector's only reader."""
        times = self.text_time_ids * self.text_time_embed_dim
        if self.text_time_dim < times:
            raise ConfigError(
                f"text_time_dim={self.text_time_dim} is less than the {self.text_time_ids} time ids' features "
                f"text_time_ids·text_time_embed_dim = {self.text_time_ids}·{self.text_time_embed_dim} = {times}: "
                "text_time_dim is the pooled width plus these"
            )
        if self.text_time_embed_dim // 2 <= self.timestep_freq_shift:
            raise ConfigError(
                f"text_time_embed_dim={self.text_time_embed_dim} is too small for timestep_freq_shift="
                f"{self.timestep_freq_shift} (it needs ⌊D_t/2⌋ > the shift)"
            )
        if self.vector_dim:
            raise ConfigError(
                f"vector_dim={self.vector_dim} and text_time_dim={self.text_time_dim} both read the conditioning's "
                "vector: set one of them (the other to 0)"
            )

    def heads(self, level: int) -> int:
        """The number of attention heads at ``level`` (−1 or the last level: the middle)."""
        return self.num_heads[level] if isinstance(self.num_heads, tuple) else self.num_heads

    def depth(self, level: int) -> int:
        """The transformer blocks per spatial transformer at ``level`` (−1 or the last level: the middle)."""
        return self.transformer_depth[level] if isinstance(self.transformer_depth, tuple) else self.transformer_depth

    @property
    def pooled_dim(self) -> int:
        """P = D_a − K·D_t, the width of the pooled text embedding at the front of the ``vector``
        (0 without the text-time embedding)."""
        return self.text_time_dim - self.text_time_ids * self.text_time_embed_dim if self.text_time_dim else 0

    @property
    def text_time_vector_dim(self) -> int:
        """P + K, the width of the ``vector`` the text-time embedding reads (0 without one)."""
        return self.pooled_dim + self.text_time_ids if self.text_time_dim else 0

    PRESET_NOUN: ClassVar[str] = "latent UNet preset"


PRESETS: Mapping[str, LatentUNetConfig] = MappingProxyType(
    {
        # Stable Diffusion 1.x (runwayml/stable-diffusion-v1-5's unet): 64×64×4 latents,
        # 320·(1, 2, 4, 4), transformers at the three finest levels, 8 heads, CLIP-L context 768.
        "sd15": LatentUNetConfig(),
        # Stable Diffusion 2.x (stabilityai/stable-diffusion-2-1's unet): 96×96 latents, 64-channel
        # heads, linear proj_in/proj_out, OpenCLIP-H context 1024.
        "sd21": LatentUNetConfig(
            sample_size=96,
            num_heads=(5, 10, 20, 20),
            context_dim=1024,
            use_linear_projection=True,
        ),
        # Stable Diffusion XL base (stabilityai/stable-diffusion-xl-base-1.0's unet, 2.6 B): 128×128
        # latents, 320·(1, 2, 4), no transformers at the finest level, 64-channel heads,
        # transformer depths (1, 2, 10), context 2048 (CLIP-L + OpenCLIP-bigG), text-time
        # embedding of the pooled bigG embedding (1280) and 6 time ids of 256 features each.
        "sdxl": LatentUNetConfig(
            sample_size=128,
            block_out_channels=(320, 640, 1280),
            cross_attention_levels=(1, 2),
            num_heads=(5, 10, 20),
            transformer_depth=(1, 2, 10),
            context_dim=2048,
            use_linear_projection=True,
            text_time_dim=2816,
            text_time_ids=6,
            text_time_embed_dim=256,
        ),
        # A tiny model for the shapes demo and tests: 3 levels, 2 heads, 32-wide context.
        "tiny": LatentUNetConfig(
            sample_size=16,
            block_out_channels=(32, 64, 64),
            layers_per_block=1,
            cross_attention_levels=(1, 2),
            num_heads=2,
            context_dim=32,
            norm_groups=8,
        ),
    }
)


# -- the network ----------------------------------------------------------------------------


class TransformerBlock(nn.Module):
    """Self-attention, cross-attention, GEGLU feed-forward; pre-LayerNorm, residual (LDM's
    ``BasicTransformerBlock``). Tokens [B, N, C], context [B, M, d_ctx], mask bool [B, M].

    Submodules: ``norm1``, ``attn1`` (fused ``qkv``, no bias), ``norm2``, ``attn2`` (``q`` from
    the tokens, ``kv`` from the context, no bias), ``norm3``, ``ff`` (GEGLU, inner 4·C).
    """

    def __init__(self, dim: int, heads: int, context_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=TRANSFORMER_LAYERNORM_EPS)
        self.attn1 = Attention(dim, heads, qkv_bias=False)
        self.norm2 = nn.LayerNorm(dim, eps=TRANSFORMER_LAYERNORM_EPS)
        self.attn2 = Attention(dim, heads, context_dim=context_dim, qkv_bias=False)
        self.norm3 = nn.LayerNorm(dim, eps=TRANSFORMER_LAYERNORM_EPS)
        self.ff = FeedForward(dim, FF_MULT * dim, activation="geglu")

    def forward(
        self, h: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        h = h + self.attn1(self.norm1(h))  # (B, N, C)
        if context is not None and mask is None:
            h = h + self.attn2(self.norm2(h), context)  # Q from h, K and V from the context
        elif context is not None:
            # A sample whose mask keeps no token gets no cross-attention (as with no context): it
            # attends to every token only so that SDPA has a softmax, and its branch is zeroed.
            # Done for every batch, without a data-dependent branch (no device→host sync).
            keeps = mask.any(dim=1)  # (B,): does the sample keep any token?
            out = self.attn2(self.norm2(h), context, mask | ~keeps[:, None])  # (B, N, C)
            h = h + out * keeps[:, None, None].to(out.dtype)
        return h + self.ff(self.norm3(h))  # (B, N, C)


class SpatialTransformer(nn.Module):
    """x + proj_out(transformer blocks(proj_in(GN(x)))) over the H·W positions of x [B, C, H, W]
    (LDM's ``SpatialTransformer``, diffusers' ``Transformer2DModel``).

    Submodules: ``norm`` (GroupNorm, ε = 1e-6), ``proj_in`` / ``proj_out`` (1×1 convolutions or,
    with ``linear``, linear layers on the tokens), ``transformer_blocks``.
    """

    def __init__(self, channels: int, heads: int, depth: int, context_dim: int, groups: int, linear: bool) -> None:
        super().__init__()
        self.linear = linear
        self.norm = nn.GroupNorm(groups, channels, eps=TRANSFORMER_GROUPNORM_EPS)
        proj = (lambda: nn.Linear(channels, channels)) if linear else (lambda: nn.Conv2d(channels, channels, 1))
        self.proj_in = proj()
        self.transformer_blocks = nn.ModuleList(TransformerBlock(channels, heads, context_dim) for _ in range(depth))
        self.proj_out = proj()

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, c, height, width = x.shape
        h = self.norm(x)  # (B, C, H, W)
        if not self.linear:
            h = self.proj_in(h)
        # Tokens in row-major order; a view when x is channels-last.
        h = h.permute(0, 2, 3, 1).reshape(b, height * width, c)  # (B, N, C)
        if self.linear:
            h = self.proj_in(h)
        for block in self.transformer_blocks:
            h = block(h, context, mask)  # (B, N, C)
        if self.linear:
            h = self.proj_out(h)
        h = h.reshape(b, height, width, c).permute(0, 3, 1, 2)  # (B, C, H, W)
        if not self.linear:
            h = self.proj_out(h)
        return x + h


class DownLevel(nn.Module):
    """One level of the down path: ResBlocks (+ a spatial transformer after each), then an optional downsample."""

    def __init__(self, cfg: LatentUNetConfig, level: int, in_channels: int) -> None:
        super().__init__()
        width = cfg.block_out_channels[level]
        self.resnets = nn.ModuleList(
            level_resblock(cfg, in_channels if i == 0 else width, width) for i in range(cfg.layers_per_block)
        )
        count = cfg.layers_per_block if level in cfg.cross_attention_levels else 0
        self.attentions = nn.ModuleList(_transformer(cfg, level) for _ in range(count))
        self.downsample = (
            Downsample2D(width, True, padding=cfg.downsample_padding) if level < cfg.num_levels - 1 else None
        )


class UpLevel(nn.Module):
    """One level of the up path: ResBlocks on [h, skip] (+ a spatial transformer after each), then an optional upsample."""

    def __init__(self, cfg: LatentUNetConfig, level: int, in_channels: int, skip_channels: list[int]) -> None:
        super().__init__()
        width = cfg.block_out_channels[level]
        self.resnets = nn.ModuleList(
            level_resblock(cfg, (in_channels if i == 0 else width) + skip, width)
            for i, skip in enumerate(skip_channels)
        )
        count = len(skip_channels) if level in cfg.cross_attention_levels else 0
        self.attentions = nn.ModuleList(_transformer(cfg, level) for _ in range(count))
        self.upsample = Upsample2D(width, True) if level > 0 else None


class MidBlock(nn.Module):
    """ResBlock, spatial transformer, ResBlock at the coarsest level."""

    def __init__(self, cfg: LatentUNetConfig) -> None:
        super().__init__()
        width = cfg.block_out_channels[-1]
        self.resnets = nn.ModuleList([level_resblock(cfg, width, width), level_resblock(cfg, width, width)])
        self.attention = _transformer(cfg, cfg.num_levels - 1)


def _transformer(cfg: LatentUNetConfig, level: int) -> SpatialTransformer:
    width, heads = cfg.block_out_channels[level], cfg.heads(level)
    return SpatialTransformer(
        width, heads, cfg.depth(level), cfg.context_dim, cfg.norm_groups, cfg.use_linear_projection
    )


def sinusoid(values: torch.Tensor, dim: int, *, cos_first: bool, freq_shift: int) -> torch.Tensor:
    """Sinusoidal features of values [N] → float32 [N, dim]: [cos, sin] (``cos_first``) or
    [sin, cos], frequencies 10000^(−i/(⌊dim/2⌋ − freq_shift)), zero-padded when ``dim`` is odd
    (diffusers' ``Timesteps(dim, flip_sin_to_cos=cos_first, freq_shift)``)."""
    features = timestep_embedding(values, dim, freq_shift=freq_shift)  # (N, dim) float32, [cos, sin, (0)]
    if cos_first:
        return features
    half = dim // 2
    return torch.cat([features[:, half : 2 * half], features[:, :half], features[:, 2 * half :]], dim=1)


def text_time_vector(cond: Any, batch_size: int, cfg: LatentUNetConfig) -> torch.Tensor:
    """The conditioning's ``vector`` [B, P + K] that the text-time embedding reads; a missing or
    misshapen one is a :class:`~diffkit.errors.ShapeError` naming the shape it must have."""
    vector = conditioning_field(cond, "vector")
    pooled, ids = cfg.pooled_dim, cfg.text_time_ids
    expected = (batch_size, pooled + ids)
    if not isinstance(vector, torch.Tensor) or not vector.dtype.is_floating_point or tuple(vector.shape) != expected:
        got = "none" if vector is None else (
            f"{getattr(vector, 'dtype', type(vector).__name__)} {tuple(getattr(vector, 'shape', ()))}"
        )
        raise ShapeError(
            "this LatentUNet adds SDXL's text-time embedding (text_time_dim > 0): the conditioning must carry a "
            f"floating-point vector [B, P + K] = {list(expected)} (the pooled text embedding [B, P={pooled}], then "
            f"the K={ids} time ids), got {got}"
        )
    return vector


def text_time_features(vector: torch.Tensor, cfg: LatentUNetConfig) -> torch.Tensor:
    """a = [p, sinusoid(τ_1), …, sinusoid(τ_K)] [B, D_a] float32 from v = [p, τ] [B, P + K].

    Each time id τ_k gets D_t sinusoidal features, with the time embedding's cos-first and
    frequency shift; the ids are read in float32 (keep the vector in float32: in bf16 a crop
    offset such as 1001 is not exact).
    """
    batch, pooled = vector.shape[0], cfg.pooled_dim
    ids = vector[:, pooled:].float().reshape(-1)  # (B·K,)
    times = sinusoid(ids, cfg.text_time_embed_dim, cos_first=cfg.timestep_cos_first, freq_shift=cfg.timestep_freq_shift)
    return torch.cat([vector[:, :pooled].float(), times.reshape(batch, -1)], dim=1)  # (B, P + K·D_t)


class LatentUNet(PyramidUNet):
    """The latent-diffusion UNet with cross-attention built from one :class:`LatentUNetConfig`.

    ``forward(x, t, cond=None)``: x [B, C_in, H, W] (latents) with H, W multiples of
    2^(levels−1); t [B] the timestep in the model's units (SD: 0 … 999; fractional allowed; a
    scalar is broadcast); cond the conditioning (see :func:`cross_attention_context`: None,
    a context [B, M, d_ctx], or a :class:`~diffkit.models.conditioners.Conditioning` record with
    ``context`` and ``mask``, ``vector`` (read with ``vector_dim`` > 0) and ``concat`` (x's
    channels plus these make ``in_channels``); with ``text_time_dim`` > 0 the ``vector``
    [B, P + K] is required). Returns [B, C_out, H, W]. A floating-point x of
    any dtype is cast to the weights' dtype on entry and the output returned in x's dtype
    (:func:`~diffkit.models.backbones.embeddings.input_in_weight_dtype`); a non-float x is an error.

    Submodules: ``conv_in``, ``time_embed`` (``linear_1``, ``linear_2``), ``vector_embed``
    (with ``vector_dim`` > 0), ``add_embed`` (``linear_1``, ``linear_2``; with
    ``text_time_dim`` > 0), ``down[ℓ]`` /
    ``up[i]`` (``up[i]`` is level L−1−i) with ``resnets``, ``attentions`` (spatial transformers)
    and ``downsample`` / ``upsample``, ``mid`` (``resnets``, ``attention``), ``norm_out``,
    ``conv_out``. ``gradient_checkpointing`` (initialised from the config) may be switched on
    the module.
    """

    MODEL: ClassVar[str] = "LatentUNet"

    def __init__(self, config: LatentUNetConfig | None = None) -> None:
        super().__init__(LatentUNetConfig.resolve(config, "LatentUNet"), (DownLevel, MidBlock, UpLevel))
        cfg, emb = self.config, self.config.embed_dim
        self.add_embed = (
            nn.ModuleDict({"linear_1": nn.Linear(cfg.text_time_dim, emb), "linear_2": nn.Linear(emb, emb)})
            if cfg.text_time_dim
            else None
        )

    def initialize_weights(self) -> None:
        """LDM: zero the last layer of every residual branch (ResBlock conv2, transformer
        proj_out) and the output convolution."""
        branches = [m for m in self.modules() if isinstance(m, (ResBlock, SpatialTransformer))]
        zero_init(*(m.conv2 if isinstance(m, ResBlock) else m.proj_out for m in branches), self.conv_out)

    def readable_conditioning(self) -> set[str]:
        """The conditioning record fields this model reads."""
        reads_vector = self.vector_embed is not None or self.add_embed is not None
        return {"context", "concat"} | ({"vector"} if reads_vector else set())

    def embed(self, t: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """The embedding e [B, E] of timesteps t [B] (+ the projected ``vector`` with ``vector_dim``,
        or + the text-time embedding Linear(SiLU(Linear(a))) of the ``vector`` with ``text_time_dim``)."""
        e = super().embed(t, cond)  # (B, E)
        if self.add_embed is None:
            return e
        vector = text_time_vector(cond, e.shape[0], self.config).to(e.device)  # (B, P + K)
        linear_1, linear_2 = self.add_embed["linear_1"], self.add_embed["linear_2"]
        features = text_time_features(vector, self.config).to(linear_1.weight.dtype)  # (B, D_a)
        return e + linear_2(F.silu(linear_1(features)))  # (B, E)

    def _attention_inputs(self, cond: Any, x: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """(context [B, M, d_ctx], mask [B, M]) on x's device, for the spatial transformers."""
        context, mask = cross_attention_context(cond, x.shape[0], self.config.context_dim)  # (B, M, d_ctx), (B, M)
        check_conditioning(cond, self.readable_conditioning(), model="LatentUNet", tensor_field="context")
        if context is not None:
            context = context.to(device=x.device, dtype=self.conv_in.weight.dtype)
            mask = None if mask is None else mask.to(x.device)
        return context, mask


# -- registry entry -------------------------------------------------------------------------


def build_latent_unet(*, preset: str | None = None, **config: Any) -> LatentUNet:
    """LatentUNet (Rombach et al. 2022): the latent-diffusion UNet with cross-attention.

    ``build_latent_unet(preset="sd15", in_channels=16)`` starts from a preset and changes
    fields; without ``preset`` the fields are :class:`LatentUNetConfig`'s (defaults: SD 1.x).
    """
    return LatentUNet(LatentUNetConfig.build_config(preset, config))


# An explicit signature so that `diffkit.build("backbone", "latent_unet", ...)` can name the valid options.
build_latent_unet.__signature__ = LatentUNetConfig.builder_signature()  # type: ignore[attr-defined]

__all__ = [
    "PRESETS", "LatentUNet", "LatentUNetConfig", "SpatialTransformer", "TransformerBlock",
    "build_latent_unet", "cross_attention_context", "sinusoid", "text_time_features", "text_time_vector",
]
