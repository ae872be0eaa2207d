"""A small pre-norm transformer encoder for byte tokens, trained from scratch with the diffusion model.

ids [B, L] → h_0 = E_tok[ids] + P (learned position embedding P [L, W]), then ``depth`` blocks

    h = h + SelfAttn(LN1(h), key mask)          padding tokens are never attended to
    h = h + FF(LN2(h))                           GELU MLP, inner width 4·W

and context = proj(LN(h)) [B, L, d_ctx]. Queries at padding positions still compute (their
outputs are defined and deterministic), but no real token's output depends on them. Attention
and feed-forward are the shared layers of :mod:`diffkit.models.backbones.layers`.
"""

from __future__ import annotations

import torch
from torch import nn

from diffkit.errors import ConfigError, ShapeError
from diffkit.models.backbones.layers import Attention, FeedForward

FF_MULT = 4


class EncoderBlock(nn.Module):
    """Pre-norm self-attention with a key-padding mask, then a GELU feed-forward; both residual."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.ff = FeedForward(width, FF_MULT * width, activation="gelu")

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """h: [B, L, W]; mask: bool [B, L] (True = real token, at least one per row). Returns [B, L, W]."""
        h = h + self.attn(self.norm1(h), None, mask)  # keys/values: real tokens only
        return h + self.ff(self.norm2(h))


class TextEncoder(nn.Module):
    """Token ids [B, L] + mask [B, L] → context [B, L, d_ctx].

    Args:
        vocab_size: number of token ids.
        max_length: L, the number of positions (the learned position table has L rows).
        width: W, the model width (divisible by ``heads``).
        depth: number of blocks.
        heads: attention heads.
        context_dim: d_ctx, the width of the output tokens.

    Initialisation: token and position tables N(0, 0.02²) (GPT-2/CLIP), PyTorch defaults elsewhere.
    """

    def __init__(
        self, *, vocab_size: int, max_length: int, width: int, depth: int, heads: int, context_dim: int
    ) -> None:
        super().__init__()
        if width % heads:
            raise ConfigError(f"the text encoder's width {width} is not divisible by its {heads} heads")
        self.max_length = max_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.position_embedding = nn.Parameter(torch.empty(max_length, width))
        self.blocks = nn.ModuleList(EncoderBlock(width, heads) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width)
        self.proj = nn.Linear(width, context_dim)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.position_embedding, std=0.02)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2 or ids.shape[1] != self.max_length:
            raise ShapeError(f"token ids must have shape [B, L={self.max_length}], got {tuple(ids.shape)}")
        if mask.dtype != torch.bool or mask.shape != ids.shape:
            raise ShapeError(f"the token mask must be bool {tuple(ids.shape)}, got {mask.dtype} {tuple(mask.shape)}")
        h = self.token_embedding(ids) + self.position_embedding  # (B, L, W)
        for block in self.blocks:
            h = block(h, mask)  # (B, L, W)
        return self.proj(self.norm_out(h))  # (B, L, d_ctx)


def masked_mean(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_j m_j·x_j / Σ_j m_j over the tokens: [B, L, D] with mask [B, L] → [B, D] (≥ 1 kept token per row)."""
    weights = mask.to(tokens.dtype)[:, :, None]  # (B, L, 1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
