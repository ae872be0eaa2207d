"""The KL autoencoder of latent diffusion (Rombach et al. 2022, "High-Resolution Image Synthesis
with Latent Diffusion Models", §3 and App. G): a convolutional encoder that outputs a diagonal
Gaussian posterior q(z|x) = N(μ(x), diag σ²(x)) and a decoder back to pixels.

The network, for ``block_out_channels`` (c_0, …, c_{L−1}) (L "levels") and ``layers_per_block`` R:

* encoder: 3×3 conv in → c_0; level i: R residual blocks (c_{i−1} → c_i, then c_i → c_i) and,
  except at the last level, a stride-2 downsample (so the latent is f = 2^(L−1) times smaller);
  mid-block: residual block, single-head self-attention over the H·W positions, residual block;
  group norm, SiLU, 3×3 conv to 2·z channels (μ and log σ², "double_z") and a 1×1 ``quant_conv``;
* decoder: 1×1 ``post_quant_conv``, 3×3 conv z → c_{L−1}, the same mid-block, then the levels in
  reverse with R + 1 residual blocks each and a nearest ×2 upsample + 3×3 conv except at the
  last; group norm, SiLU, 3×3 conv to the output channels.

The posterior's log σ² is clamped to [−30, 20] (as in the LDM code) so σ = exp(½ log σ²) never
under- or overflows. Diffusion runs on scaled latents (LDM §4.3.2, App. D.1):
latents = (z − shift)·scale, with scale ≈ 1/std(z) over the training set (0.18215 for SD's VAE);
:meth:`KLAutoencoder.encode_latents` / :meth:`KLAutoencoder.decode_latents` apply it.

The training loss (reconstruction + weighted KL, LDM App. G) belongs to the training code: it
needs :meth:`KLAutoencoder.forward` (reconstruction and posterior) and
:meth:`DiagonalGaussian.kl`. Parameter names follow diffusers' ``AutoencoderKL`` except for
the attention (one fused ``qkv``, see :mod:`diffkit.io.diffusers.kl`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import attrs
import torch
from torch import nn

from diffkit.errors import ConfigError, ShapeError
from diffkit.models.backbones.layers import Downsample2D, ResBlock, SpatialSelfAttention, Upsample2D
from diffkit.models.configs import ModelConfig
from diffkit.samplers.common import randn_like
from diffkit.validators import as_tuple, boolean, finite_real, int_at_least, positive_ints, positive_real, probability

# -- configuration --------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class KLConfig(ModelConfig):
    """Configuration of :class:`KLAutoencoder`; the defaults are Stable Diffusion's VAE (KL-f8).

    ``PRESETS["kl-f8"]`` is a value of this class; change one with
    ``KLConfig.from_preset("kl-f8", latent_channels=16)`` or ``attrs.evolve``.
    """

    in_channels: int = attrs.field(default=3, validator=int_at_least(1))
    """Image channels the encoder reads."""
    out_channels: int = attrs.field(default=3, validator=int_at_least(1))
    """Image channels the decoder writes."""
    block_out_channels: tuple[int, ...] = attrs.field(
        default=(128, 256, 512, 512), converter=as_tuple, validator=positive_ints
    )
    """Width c_i of each level; L levels downsample by f = 2^(L−1)."""
    layers_per_block: int = attrs.field(default=2, validator=int_at_least(1))
    """R: residual blocks per encoder level (the decoder has R + 1 per level)."""
    latent_channels: int = attrs.field(default=4, validator=int_at_least(1))
    """z, the latent channels."""
    norm_num_groups: int = attrs.field(default=32, validator=int_at_least(1))
    """Groups of every group norm (must divide every c_i)."""
    double_z: bool = attrs.field(default=True, validator=boolean)
    """The encoder outputs μ and log σ² (2·z channels); False: μ only, a deterministic posterior."""
    mid_block_attention: bool = attrs.field(default=True, validator=boolean)
    """Self-attention in the mid-blocks (diffusers' ``mid_block_add_attention``)."""
    use_quant_conv: bool = attrs.field(default=True, validator=boolean)
    """The 1×1 ``quant_conv`` after the encoder and ``post_quant_conv`` before the decoder."""
    scaling_factor: float = attrs.field(default=0.18215, validator=positive_real)
    """scale in latents = (z − shift)·scale (SD: 0.18215 ≈ 1/std of its training latents)."""
    shift_factor: float = attrs.field(default=0.0, validator=finite_real)
    """shift in latents = (z − shift)·scale (0 for SD; SD3 and FLUX's VAEs use one)."""
    dropout: float = attrs.field(default=0.0, validator=probability)
    """Dropout inside the residual blocks (training only)."""

    def __attrs_post_init__(self) -> None:
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ConfigError(
                f"norm_num_groups {self.norm_num_groups} must divide every width of block_out_channels "
                f"{self.block_out_channels} (not {bad})"
            )

    @property
    def num_levels(self) -> int:
        """L, the number of resolutions."""
        return len(self.block_out_channels)

    @property
    def downsampling_factor(self) -> int:
        """f = 2^(L−1): an H×W image has an (H/f)×(W/f) latent."""
        return 2 ** (self.num_levels - 1)

    @property
    def moments_channels(self) -> int:
        """Channels of the encoder's output: 2·z (μ, log σ²) with ``double_z``, else z."""
        return 2 * self.latent_channels if self.double_z else self.latent_channels

    PRESET_NOUN: ClassVar[str] = "KL autoencoder preset"


# kl-f8 is Stable Diffusion 1.x/2.x's VAE (CompVis/stable-diffusion-v1-4 "vae/config.json"):
# 4 levels (f = 8), widths 128-256-512-512, 2 residual blocks per level, 4 latent channels,
# 32 norm groups, SiLU, mid-block attention, quant convs, latents scaled by 0.18215.
PRESETS: Mapping[str, KLConfig] = MappingProxyType({"kl-f8": KLConfig()})


# -- the posterior --------------------------------------------------------------------------


class DiagonalGaussian:
    """The posterior q(z|x) = N(μ, diag exp(log σ²)) the encoder outputs (all tensors [B, z, h, w]).

    Built from the encoder's moments [B, 2z, h, w] (μ then log σ² along channels); log σ² is
    clamped to [``LOGVAR_MIN``, ``LOGVAR_MAX``]. With ``deterministic=True`` (or moments of z
    channels only) σ = 0: :meth:`sample` returns μ and :meth:`kl` is 0.
    """

    LOGVAR_MIN = -30.0
    LOGVAR_MAX = 20.0

    def __init__(self, moments: torch.Tensor, *, deterministic: bool = False) -> None:
        if moments.ndim < 2:
            raise ShapeError(f"moments must have a channel dimension [B, C, ...], got {tuple(moments.shape)}")
        self.deterministic = deterministic
        if deterministic:
            self.mean = moments  # (B, z, h, w)
            self.logvar = torch.full_like(moments, self.LOGVAR_MIN)  # log σ² floor; σ is set to 0 below
            self.std = torch.zeros_like(moments)
        else:
            if moments.shape[1] % 2:
                raise ShapeError(f"moments need 2·z channels (μ, log σ²), got {moments.shape[1]}")
            mean, logvar = moments.chunk(2, dim=1)  # 2 × (B, z, h, w)
            self.mean = mean
            self.logvar = logvar.clamp(self.LOGVAR_MIN, self.LOGVAR_MAX)
            self.std = torch.exp(0.5 * self.logvar)  # σ = exp(½ log σ²)

    @property
    def var(self) -> torch.Tensor:
        """σ² (zeros when deterministic)."""
        return self.std * self.std

    def sample(self, generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """z = μ + σ·ε with ε ~ N(0, I) from ``generator`` (one, or a list with one per sample).

        ε is drawn on the generator's device (float32 for half types), then moved to μ's device
        and dtype, as the samplers draw their noise, so a CPU generator also seeds CUDA latents.
        """
        eps = randn_like(self.mean, generator)  # (B, z, h, w)
        return self.mean + self.std * eps  # (B, z, h, w)

    def mode(self) -> torch.Tensor:
        """μ, the most likely latent."""
        return self.mean

    def kl(self, other: DiagonalGaussian | None = None) -> torch.Tensor:
        """KL(q ‖ p) per sample [B], summed over latent elements; p = N(0, I) by default.

        KL(N(μ, σ²) ‖ N(0, 1)) = ½ Σ (μ² + σ² − 1 − log σ²); against N(μ_p, σ_p²):
        ½ Σ ((μ − μ_p)²/σ_p² + σ²/σ_p² − 1 − log σ² + log σ_p²).
        """
        dims = tuple(range(1, self.mean.ndim))
        if self.deterministic:
            return self.mean.new_zeros(self.mean.shape[0])
        if other is None:
            terms = self.mean.pow(2) + self.var - 1.0 - self.logvar
        else:
            terms = (
                (self.mean - other.mean).pow(2) / other.var + self.var / other.var - 1.0 - self.logvar + other.logvar
            )
        return 0.5 * terms.sum(dim=dims)  # (B,)

    def nll(self, z: torch.Tensor) -> torch.Tensor:
        """−log q(z|x) per sample [B]: ½ Σ (log 2π + log σ² + (z − μ)²/σ²)."""
        dims = tuple(range(1, self.mean.ndim))
        if self.deterministic:
            return self.mean.new_zeros(self.mean.shape[0])
        log_two_pi = 1.8378770664093453  # log(2π)
        return 0.5 * (log_two_pi + self.logvar + (z - self.mean).pow(2) / self.var).sum(dim=dims)


# -- the network ----------------------------------------------------------------------------


class MidBlock(nn.Module):
    """Residual block, self-attention (optional), residual block, all at width C."""

    def __init__(self, channels: int, config: KLConfig) -> None:
        super().__init__()
        groups, eps = config.norm_num_groups, 1e-6
        self.resnets = nn.ModuleList(
            ResBlock(channels, channels, groups=groups, eps=eps, dropout=config.dropout) for _ in range(2)
        )
        self.attention = (
            SpatialSelfAttention(channels, groups=groups, eps=eps) if config.mid_block_attention else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)  # (B, C, H, W)
        if self.attention is not None:
            x = self.attention(x)
        return self.resnets[1](x)


class Level(nn.Module):
    """One resolution: residual blocks, then optionally a down- or upsample (``resample``)."""

    def __init__(self, resnets: list[nn.Module], resample: nn.Module | None) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(resnets)
        self.resample = resample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        return x if self.resample is None else self.resample(x)


class Encoder(nn.Module):
    """Image [B, C_in, H, W] → moments [B, 2z, H/f, W/f] (before ``quant_conv``)."""

    def __init__(self, config: KLConfig) -> None:
        super().__init__()
        widths, groups, eps = config.block_out_channels, config.norm_num_groups, 1e-6
        self.conv_in = nn.Conv2d(config.in_channels, widths[0], kernel_size=3, padding=1)
        levels, previous = [], widths[0]
        for i, width in enumerate(widths):
            resnets = [
                ResBlock(previous if r == 0 else width, width, groups=groups, eps=eps, dropout=config.dropout)
                for r in range(config.layers_per_block)
            ]
            # Stride-2 3×3 conv after a (0, 1, 0, 1) zero pad, as the LDM code and diffusers' VAE.
            down = Downsample2D(width, padding=0) if i < len(widths) - 1 else None
            levels.append(Level(resnets, down))
            previous = width
        self.down_blocks = nn.ModuleList(levels)
        self.mid_block = MidBlock(widths[-1], config)
        self.conv_norm_out = nn.GroupNorm(groups, widths[-1], eps=eps)
        self.conv_out = nn.Conv2d(widths[-1], config.moments_channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)  # (B, c_0, H, W)
        for level in self.down_blocks:
            h = level(h)  # (B, c_i, H/2^i, W/2^i)
        h = self.mid_block(h)  # (B, c_{L−1}, H/f, W/f)
        return self.conv_out(nn.functional.silu(self.conv_norm_out(h)))  # (B, 2z, H/f, W/f)


class Decoder(nn.Module):
    """Latent [B, z, h, w] (after ``post_quant_conv``) → image [B, C_out, f·h, f·w]."""

    def __init__(self, config: KLConfig) -> None:
        super().__init__()
        widths, groups, eps = config.block_out_channels, config.norm_num_groups, 1e-6
        self.conv_in = nn.Conv2d(config.latent_channels, widths[-1], kernel_size=3, padding=1)
        self.mid_block = MidBlock(widths[-1], config)
        levels, previous = [], widths[-1]
        reversed_widths = widths[::-1]
        for i, width in enumerate(reversed_widths):
            resnets = [
                ResBlock(previous if r == 0 else width, width, groups=groups, eps=eps, dropout=config.dropout)
                for r in range(config.layers_per_block + 1)
            ]
            # Nearest-neighbour ×2 then a 3×3 conv.
            up = Upsample2D(width) if i < len(widths) - 1 else None
            levels.append(Level(resnets, up))
            previous = width
        self.up_blocks = nn.ModuleList(levels)
        self.conv_norm_out = nn.GroupNorm(groups, widths[0], eps=eps)
        self.conv_out = nn.Conv2d(widths[0], config.out_channels, kernel_size=3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid_block(self.conv_in(z))  # (B, c_{L−1}, h, w)
        for level in self.up_blocks:
            h = level(h)  # (B, c_i, …) doubling the resolution except at the last level
        return self.conv_out(nn.functional.silu(self.conv_norm_out(h)))  # (B, C_out, f·h, f·w)


class KLAutoencoder(nn.Module):
    """KL-regularised autoencoder (Rombach et al. 2022) built from one :class:`KLConfig`.

    * ``encode(x)`` → :class:`DiagonalGaussian` posterior over z [B, z, H/f, W/f];
    * ``decode(z)`` → image [B, C_out, f·h, f·w];
    * ``encode_latents(x, generator=None)`` / ``decode_latents(latents)``: the same with the
      diffusion-space scaling latents = (z − shift)·scale;
    * ``forward(x, sample_posterior=True, generator=None)`` → (reconstruction, posterior), what a
      reconstruction + β·KL training loss needs.

    Images are expected in [−1, 1]; H and W must be divisible by f = 2^(L−1).
    """

    def __init__(self, config: KLConfig | None = None) -> None:
        super().__init__()
        self.config = config = KLConfig.resolve(config, "KLAutoencoder")
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        moments, z = config.moments_channels, config.latent_channels
        self.quant_conv = nn.Conv2d(moments, moments, kernel_size=1) if config.use_quant_conv else None
        self.post_quant_conv = nn.Conv2d(z, z, kernel_size=1) if config.use_quant_conv else None

    @property
    def downsampling_factor(self) -> int:
        """f = 2^(L−1)."""
        return self.config.downsampling_factor

    @property
    def scaling_factor(self) -> float:
        return self.config.scaling_factor

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode(self, x: torch.Tensor) -> DiagonalGaussian:
        """Image [B, C_in, H, W] → the posterior q(z|x) over [B, z, H/f, W/f]."""
        cfg, f = self.config, self.config.downsampling_factor
        if x.ndim != 4 or x.shape[1] != cfg.in_channels or x.shape[2] % f or x.shape[3] % f:
            raise ShapeError(
                f"the encoder expects images [B, {cfg.in_channels}, H, W] with H and W divisible by {f}, "
                f"got {tuple(x.shape)}"
            )
        moments = self.encoder(x)  # (B, 2z, H/f, W/f)
        if self.quant_conv is not None:
            moments = self.quant_conv(moments)
        return DiagonalGaussian(moments, deterministic=not cfg.double_z)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latent z [B, z, h, w] (unscaled) → image [B, C_out, f·h, f·w]."""
        if z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise ShapeError(
                f"the decoder expects latents [B, {self.config.latent_channels}, h, w], got {tuple(z.shape)}"
            )
        if self.post_quant_conv is not None:
            z = self.post_quant_conv(z)
        return self.decoder(z)

    def encode_latents(
        self,
        x: torch.Tensor,
        *,
        generator: torch.Generator | list[torch.Generator] | None = None,
        sample: bool = True,
    ) -> torch.Tensor:
        """Diffusion-space latents (z − shift)·scale, z drawn from q(z|x) (or its mode)."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample else posterior.mode()
        return (z - self.config.shift_factor) * self.config.scaling_factor

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Inverse scaling z = latents/scale + shift, then :meth:`decode`."""
        return self.decode(latents / self.config.scaling_factor + self.config.shift_factor)

    def forward(
        self,
        x: torch.Tensor,
        *,
        sample_posterior: bool = True,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> tuple[torch.Tensor, DiagonalGaussian]:
        """(reconstruction [B, C_out, H, W], posterior): z ~ q(z|x) (or μ), decoded."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.decode(z), posterior


# -- registry entry -------------------------------------------------------------------------


def build_kl(*, preset: str | None = None, **config: Any) -> KLAutoencoder:
    """KL autoencoder (Rombach et al. 2022): convolutional VAE with a diagonal-Gaussian posterior.

    ``build_kl(preset="kl-f8", latent_channels=16)`` starts from a preset and changes fields;
    without ``preset`` the fields are :class:`KLConfig`'s (defaults: SD's KL-f8 VAE).
    """
    return KLAutoencoder(KLConfig.build_config(preset, config))


# An explicit signature so that `diffkit.build("autoencoder", "kl", ...)` can name the valid
# options when one is misspelt.
build_kl.__signature__ = KLConfig.builder_signature()  # type: ignore[attr-defined]
