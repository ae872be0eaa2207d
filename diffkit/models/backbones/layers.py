"""Layers shared by every backbone: attention, feed-forward, adaLN modulation, ResBlock, resampling.

Backbones import these; they never carry their own copy. Shapes use B (batch), N (query
tokens), M (context tokens), D (model width), H (heads), d = D/H (head width).

* :class:`Attention` — multi-head attention on ``F.scaled_dot_product_attention`` (the fused
  flash / memory-efficient kernels on CUDA, the same maths on CPU). Self-attention when built
  without ``context_dim``; cross-attention over a context [B, M, d_ctx] with an optional
  boolean padding mask [B, M] when built with one.
* :class:`FeedForward` — the transformer MLP (GELU, tanh-GELU, SiLU) or GEGLU
  (Shazeer 2020) feed-forward.
* :func:`modulate` and :class:`AdaLNModulation` — adaptive layer norm (adaLN, Peebles & Xie
  2023 §3.2): per-sample shift/scale (and gates) regressed from a conditioning vector;
  :func:`zero_init` — the zeroed last layers that make residual branches start as the identity.
* :class:`SpatialSelfAttention` — x + Attention(GroupNorm(x)) over the positions of a feature map.
* :class:`ResBlock`, :class:`Downsample2D`, :class:`Upsample2D` — the convolutional residual
  block (optional time-embedding injection, ADM scale-shift, up/down) and the resamplers of
  the UNets and the KL autoencoder, named so diffusers' ``ResnetBlock2D`` weights load 1:1.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from diffkit.errors import ConfigError, ShapeError, check_choice

ACTIVATIONS = ("gelu", "gelu_tanh", "silu", "geglu")


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x·(1 + scale) + shift, with per-sample shift/scale [B, D] broadcast over tokens.

    x: [B, N, D]; shift, scale: [B, D]. With the "1 +", zero shift and scale leave x as it
    is; adaLN-Zero starts there (and with zero gates, so every block starts as the identity).
    """
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)  # (B, N, D)


def zero_init(*modules: nn.Module) -> None:
    """Zero the weight and bias of every module: DDPM/ADM/LDM's ``zero_module``, DiT's adaLN-Zero."""
    for module in modules:
        nn.init.zeros_(module.weight)
        nn.init.zeros_(module.bias)


class AdaLNModulation(nn.Module):
    """SiLU then one linear layer: a conditioning vector c [B, D_c] → ``chunks`` vectors [B, D].

    DiT's blocks take six (shift, scale, gate for attention, then for the MLP) and its final
    layer two (shift, scale). The owning model initialises ``linear`` (adaLN-Zero: zeros).
    """

    def __init__(self, cond_dim: int, dim: int, chunks: int) -> None:
        super().__init__()
        self.chunks = chunks
        self.linear = nn.Linear(cond_dim, chunks * dim)

    def forward(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.linear(F.silu(c)).chunk(self.chunks, dim=1)  # chunks × (B, D)


class Attention(nn.Module):
    """Multi-head scaled dot-product attention, softmax(q·kᵀ/√d)·v (Vaswani et al. 2017).

    Args:
        dim: width D of the query tokens (and of the output).
        num_heads: number of heads H; ``head_dim`` defaults to D/H.
        context_dim: width of the context tokens for cross-attention. ``None`` builds a
            self-attention layer with one fused ``qkv`` projection; otherwise the layer has
            ``q`` (from x) and ``kv`` (from the context) projections, and a call without a
            context attends over x itself (which then needs ``context_dim == dim``).
        head_dim: width d of each head (default D/H, which must then divide evenly).
        qkv_bias, out_bias: biases of the input and output projections.

    Parameters: ``qkv`` [3·H·d, D] (or ``q`` [H·d, D] and ``kv`` [2·H·d, d_ctx]) and ``proj``
    [D, H·d]; q, k and v are stacked in that order along the output dimension.
    """

    def __init__(
        self, dim: int, num_heads: int, *, context_dim: int | None = None, head_dim: int | None = None,
        qkv_bias: bool = True, out_bias: bool = True,
    ) -> None:
        super().__init__()
        if head_dim is None:
            if dim % num_heads:
                raise ConfigError(f"width {dim} is not divisible by {num_heads} heads; pass head_dim")
            head_dim = dim // num_heads
        self.num_heads, self.head_dim = num_heads, head_dim
        self.context_dim = context_dim
        inner = num_heads * head_dim
        if context_dim is None:
            self.qkv = nn.Linear(dim, 3 * inner, bias=qkv_bias)
        else:
            self.q = nn.Linear(dim, inner, bias=qkv_bias)
            self.kv = nn.Linear(context_dim, 2 * inner, bias=qkv_bias)
        self.proj = nn.Linear(inner, dim, bias=out_bias)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, H·d) → (B, H, L, d)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x: [B, N, D]; context: [B, M, d_ctx] or None; mask: bool [B, M], True = attend.

        Every sample must keep at least one context token: a fully masked row has no softmax
        (SDPA returns NaN there). Returns [B, N, D].
        """
        if context is None:
            if self.context_dim is None:
                q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 × (B, N, H·d)
            elif self.context_dim == x.shape[-1]:
                q, (k, v) = self.q(x), self.kv(x).chunk(2, dim=-1)  # 3 × (B, N, H·d)
            else:
                raise ShapeError(
                    f"this attention layer expects a context of width {self.context_dim}; "
                    "it can only attend over x itself when context_dim equals x's width"
                )
        else:
            if self.context_dim is None:
                raise ShapeError("a self-attention layer (built without context_dim) takes no context")
            if context.ndim != 3 or context.shape[0] != x.shape[0] or context.shape[-1] != self.context_dim:
                raise ShapeError(
                    f"context must have shape [B={x.shape[0]}, M, {self.context_dim}], got {tuple(context.shape)}"
                )
            q = self.q(x)  # (B, N, H·d)
            k, v = self.kv(context).chunk(2, dim=-1)  # 2 × (B, M, H·d)
        attn_mask = None
        if mask is not None:
            if mask.dtype != torch.bool or mask.shape != (k.shape[0], k.shape[1]):
                raise ShapeError(
                    f"mask must be a bool tensor of shape [B, M] = {(k.shape[0], k.shape[1])}, "
                    f"got {mask.dtype} {tuple(mask.shape)}"
                )
            attn_mask = mask[:, None, None, :]  # (B, 1, 1, M), broadcast over heads and queries
        out = F.scaled_dot_product_attention(
            self._heads(q), self._heads(k), self._heads(v), attn_mask=attn_mask
        )  # (B, H, N, d)
        return self.proj(out.transpose(1, 2).flatten(2))  # (B, N, D)


class FeedForward(nn.Module):
    """The transformer feed-forward: ``fc2(act(fc1(x)))``, or GEGLU ``fc2(a · gelu(g))``.

    Args:
        dim: input width D.
        hidden_dim: inner width (DiT: 4·D).
        out_dim: output width (default D).
        activation: ``"gelu"`` (exact), ``"gelu_tanh"`` (tanh approximation, as DiT/ViT),
            ``"silu"``, or ``"geglu"`` (Shazeer 2020: ``fc1`` outputs 2·hidden, split into a
            value half a and a gate half g, in that order).
        bias: biases of both linear layers.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        *,
        out_dim: int | None = None,
        activation: str = "gelu_tanh",
        bias: bool = True,
    ) -> None:
        super().__init__()
        self.activation = check_choice("activation", activation, ACTIVATIONS)
        widen = 2 if activation == "geglu" else 1
        self.fc1 = nn.Linear(dim, widen * hidden_dim, bias=bias)
        self.fc2 = nn.Linear(hidden_dim, dim if out_dim is None else out_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc1(x)  # (B, N, hidden) — (B, N, 2·hidden) for GEGLU
        if self.activation == "geglu":
            a, g = h.chunk(2, dim=-1)  # 2 × (B, N, hidden)
            h = a * F.gelu(g)
        elif self.activation == "gelu_tanh":
            h = F.gelu(h, approximate="tanh")
        elif self.activation == "gelu":
            h = F.gelu(h)
        else:
            h = F.silu(h)
        return self.fc2(h)  # (B, N, out_dim)


class SpatialSelfAttention(nn.Module):
    """x + Attention(GN(x)) over the H·W positions of a feature map (DDPM's AttnBlock, the KL
    autoencoder's mid-block attention).

    x: [B, C, H, W] is read as H·W tokens of width C; ``norm`` is GroupNorm, ``attn`` an
    :class:`Attention` (fused ``qkv``, output ``proj``) with heads of ``head_dim`` channels
    (``None``: one head of width C). diffusers' attention is the same maths with separate
    ``to_q``/``to_k``/``to_v`` and ``to_out.0``.
    """

    def __init__(self, channels: int, head_dim: int | None = None, *, groups: int, eps: float = 1e-6) -> None:
        super().__init__()
        head_dim = channels if head_dim is None else head_dim
        self.norm = nn.GroupNorm(groups, channels, eps=eps)
        self.attn = Attention(channels, channels // head_dim, head_dim=head_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, H·W, C)
        out = self.attn(tokens).transpose(1, 2).reshape(b, c, h, w)  # (B, C, H, W)
        return x + out


# -- convolutional blocks (UNet, autoencoder) -------------------------------------------------
#
# Shapes: B (batch), C (channels), H×W (spatial). Parameter names follow diffusers'
# ResnetBlock2D / Downsample2D / Upsample2D, so that their weights map one to one.


class Downsample2D(nn.Module):
    """Halve H and W: a 3×3 stride-2 convolution, or 2×2 average pooling (``use_conv=False``).

    Args:
        channels: C in.
        use_conv: convolve (learned, DDPM/ADM ``conv_resample``) or average-pool (no weights).
        out_channels: C out of the convolution (default C; pooling keeps C).
        padding: 1 — symmetric zero padding (UNet); 0 — pad one row/column of zeros at the
            bottom/right only, then convolve without padding (the Stable Diffusion / LDM
            autoencoder's encoder). Both give ⌈H/2⌉ × ⌈W/2⌉ for even sizes.

    Parameters: ``conv`` (the diffusers name with ``name="op"`` or ``"conv"``).
    """

    def __init__(
        self, channels: int, use_conv: bool = True, *, out_channels: int | None = None, padding: int = 1
    ) -> None:
        super().__init__()
        self.channels, self.use_conv, self.padding = channels, use_conv, padding
        out_channels = channels if out_channels is None else out_channels
        if padding not in (0, 1):
            raise ConfigError(f"Downsample2D padding must be 0 or 1, got {padding!r}")
        if use_conv:
            self.conv: nn.Module = nn.Conv2d(channels, out_channels, kernel_size=3, stride=2, padding=padding)
        else:
            if out_channels != channels:
                raise ConfigError("average-pool downsampling cannot change the number of channels")
            self.conv = nn.AvgPool2d(kernel_size=2, stride=2)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] → [B, C_out, H/2, W/2]."""
        if x.shape[1] != self.channels:
            raise ShapeError(f"Downsample2D expects {self.channels} channels, got {x.shape[1]}")
        if self.use_conv and self.padding == 0:
            x = F.pad(x, (0, 1, 0, 1))  # (B, C, H+1, W+1): zeros at the right and bottom only
        return self.conv(x)


class _NearestUpsample2x(torch.autograd.Function):
    """y[..., 2i + a, 2j + b] = x[..., i, j] for a, b ∈ {0, 1}; the gradient sums the four copies.

    Autograd's own backward of the broadcast below reduces over two strided axes, about 5×
    slower on the CPU than adding the four sub-grids g[..., a::2, b::2] (bench/training.py).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad[:, :, 0::2, 0::2] + grad[:, :, 0::2, 1::2] + grad[:, :, 1::2, 0::2] + grad[:, :, 1::2, 1::2]


def nearest_upsample_2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour ×2 upsampling of (B, C, H, W), equal to ``F.interpolate(mode="nearest")``.

    Written as a broadcast and a reshape: on the CPU, in the standard (non-channels-last)
    layout, this is about 3× faster than ``F.interpolate`` (bench/backbones.py, KL decoder),
    with a hand-written backward (:class:`_NearestUpsample2x`).
    """
    return _NearestUpsample2x.apply(x)


class Upsample2D(nn.Module):
    """Double H and W: nearest-neighbour ×2, then (``use_conv=True``) a 3×3 convolution.

    Parameters: ``conv`` (diffusers' ``Upsample2D`` name).
    """

    def __init__(self, channels: int, use_conv: bool = True, *, out_channels: int | None = None) -> None:
        super().__init__()
        self.channels, self.use_conv = channels, use_conv
        out_channels = channels if out_channels is None else out_channels
        if use_conv:
            self.conv = nn.Conv2d(channels, out_channels, kernel_size=3, padding=1)
        elif out_channels != channels:
            raise ConfigError("upsampling without a convolution cannot change the number of channels")
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] → [B, C_out, 2H, 2W]."""
        if x.shape[1] != self.channels:
            raise ShapeError(f"Upsample2D expects {self.channels} channels, got {x.shape[1]}")
        x = nearest_upsample_2x(x)  # (B, C, 2H, 2W)
        return self.conv(x) if self.use_conv else x


class ResBlock(nn.Module):
    """The residual block of DDPM (Ho et al. 2020) and ADM (Dhariwal & Nichol 2021).

    h = conv1(SiLU(GN1(x)))                                    [B, C_out, H, W]
    e = time_emb_proj(SiLU(temb))                              [B, C_out] or [B, 2·C_out]
    default:      h = GN2(h + e)
    scale_shift:  h = GN2(h)·(1 + scale) + shift, (scale, shift) = e   (ADM's scale-shift norm)
    h = conv2(dropout(SiLU(h)))
    out = shortcut(x) + h, shortcut a 1×1 conv when C_in ≠ C_out (else the identity).

    With ``up``/``down`` (ADM's ``resblock_updown``), both x and SiLU(GN1(x)) are resampled by
    nearest ×2 / 2×2 average pooling right before ``conv1`` (and the shortcut), as in
    diffusers' ResnetBlock2D with ``up``/``down``.

    Args:
        in_channels, out_channels: C_in, C_out.
        temb_channels: width of the embedding vector; ``None`` builds a block without one
            (the autoencoder's), whose forward takes ``temb=None``.
        groups: GroupNorm groups (both norms); eps: their ε.
        dropout: dropout probability before ``conv2``.
        scale_shift: ADM's scale-shift norm instead of adding the embedding.
        up, down: resample inside the block (at most one of them).
        output_scale_factor: the sum is divided by this (diffusers' option; 1 here by default).

    Parameters: ``norm1``, ``conv1``, ``time_emb_proj``, ``norm2``, ``conv2``, ``conv_shortcut``
    — the names of diffusers' ResnetBlock2D, so its state dict loads unchanged.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        *,
        temb_channels: int | None = None,
        groups: int = 32,
        eps: float = 1e-6,
        dropout: float = 0.0,
        scale_shift: bool = False,
        up: bool = False,
        down: bool = False,
        output_scale_factor: float = 1.0,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        if in_channels % groups or out_channels % groups:
            raise ConfigError(
                f"ResBlock channels ({in_channels} → {out_channels}) must be divisible by groups={groups}"
            )
        if up and down:
            raise ConfigError("a ResBlock resamples up or down, not both")
        if scale_shift and temb_channels is None:
            raise ConfigError("scale_shift needs an embedding: pass temb_channels")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.scale_shift, self.up, self.down = scale_shift, up, down
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = (
            nn.Linear(temb_channels, (2 if scale_shift else 1) * out_channels) if temb_channels is not None else None
        )
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.up:
            return F.interpolate(x, scale_factor=2.0, mode="nearest")  # (B, C, 2H, 2W)
        if self.down:
            return F.avg_pool2d(x, kernel_size=2, stride=2)  # (B, C, H/2, W/2)
        return x

    def forward(self, x: torch.Tensor, temb: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, C_in, H, W]; temb: [B, temb_channels] (or None without an embedding).

        Returns [B, C_out, H', W'] with H' = H, 2H (up) or H/2 (down).
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(f"ResBlock expects x of shape [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        h = F.silu(self.norm1(x))  # (B, C_in, H, W)
        x, h = self._resample(x), self._resample(h)
        h = self.conv1(h)  # (B, C_out, H', W')
        if self.time_emb_proj is None:
            if temb is not None:
                raise ShapeError("this ResBlock has no embedding input (built with temb_channels=None)")
            h = self.norm2(h)
        else:
            if temb is None:
                raise ShapeError("this ResBlock needs an embedding temb [B, temb_channels]")
            emb = self.time_emb_proj(F.silu(temb))[:, :, None, None]  # (B, C_out or 2·C_out, 1, 1)
            if self.scale_shift:
                scale, shift = emb.chunk(2, dim=1)  # 2 × (B, C_out, 1, 1)
                h = self.norm2(h) * (1 + scale) + shift  # ADM scale-shift norm
            else:
                h = self.norm2(h + emb)  # DDPM: add the embedding, then normalise
        h = self.conv2(self.dropout(F.silu(h)))  # (B, C_out, H', W')
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)  # (B, C_out, H', W')
        out = x + h
        return out / self.output_scale_factor if self.output_scale_factor != 1.0 else out
