"""Layers shared by every backbone: attention, feed-forward and adaLN modulation.

Backbones import these; they never carry their own copy. Shapes use B (batch), N (query
tokens), M (context tokens), D (model width), H (heads), d = D/H (head width).

* :class:`Attention` — multi-head attention on ``F.scaled_dot_product_attention`` (the fused
  flash / memory-efficient kernels on CUDA, the same maths on CPU). Self-attention when built
  without ``context_dim``; cross-attention over a context [B, M, d_ctx] with an optional
  boolean padding mask [B, M] when built with one.
* :class:`FeedForward` — the transformer MLP (GELU, tanh-GELU, SiLU) or GEGLU
  (Shazeer 2020) feed-forward.
* :func:`modulate` and :class:`AdaLNModulation` — adaptive layer norm (adaLN, Peebles & Xie
  2023 §3.2): per-sample shift/scale (and gates) regressed from a conditioning vector.
"""

from __future__ import annotations

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
        self,
        dim: int,
        num_heads: int,
        *,
        context_dim: int | None = None,
        head_dim: int | None = None,
        qkv_bias: bool = True,
        out_bias: bool = True,
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
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
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
