"""DiT: the diffusion transformer of Peebles & Xie 2023, "Scalable Diffusion Models with Transformers".

The network, in the paper's order (§3.2, Fig. 3):

1. patchify: a p×p, stride-p convolution turns the latent [B, C, H, W] into T = (H/p)·(W/p)
   tokens of width D, plus a fixed 2-D sin-cos position embedding;
2. conditioning vector c = t-embedding + label embedding [B, D] (the label table has a null
   class for classifier-free guidance) + W·v + b for a conditioning record's ``vector``
   v [B, D_v] when ``vector_dim`` = D_v > 0;
3. N blocks with adaLN-Zero: from c, each block regresses shift, scale and a gate for its
   attention and for its MLP, x ← x + gate·f(modulate(LN(x), shift, scale));
4. final adaLN layer (shift, scale), a linear map to p²·C_out per token, and unpatchify.

With learned σ (Nichol & Dhariwal 2021) the output has C_out = 2C channels: the prediction,
then the variance interpolation channels. Initialisation follows the paper's reference code:
xavier-uniform linear layers with zero biases, the patch projection initialised like a linear
layer, N(0, 0.02²) label table and timestep-MLP weights, and zeros in every adaLN modulation
layer and in the output layer (the "Zero" of adaLN-Zero: each block starts as the identity,
the network's output as 0).

Parameter counts: :meth:`DiT.num_parameters` counts as the paper and its code do, including
the fixed position embedding — 675,129,632 for DiT-XL/2 at 256 px. Here the
position embedding is a non-persistent buffer (a function of the config: no optimizer, no
``requires_grad_()`` and no checkpoint can change it), so ``model.parameters()`` holds
T·D fewer numbers (294,912 for XL/2).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, ClassVar

import attrs
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from diffkit.errors import ConfigError, ShapeError
from diffkit.models.backbones.embeddings import (
    LabelEmbedder,
    TimestepEmbedder,
    add_vector_embedding,
    broadcast_timesteps,
    check_conditioning,
    class_labels,
    input_in_weight_dtype,
    sincos_position_embedding_2d,
)
from diffkit.models.backbones.layers import AdaLNModulation, Attention, FeedForward, modulate, zero_init
from diffkit.models.configs import ModelConfig
from diffkit.validators import boolean, int_at_least, positive_real

# -- configuration --------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class DiTConfig(ModelConfig):
    """Configuration of :class:`DiT`; the defaults are DiT-XL/2 for 256 px ImageNet latents.

    ``PRESETS["DiT-B/4"]`` etc. are values of this class; change one with
    ``attrs.evolve(PRESETS["DiT-B/4"], num_classes=10)`` or ``DiTConfig.from_preset``.
    """

    input_size: int = attrs.field(default=32, validator=int_at_least(1))
    """Height = width of the input latent (32 for 256 px images through an f8 autoencoder)."""
    patch_size: int = attrs.field(default=2, validator=int_at_least(1))
    """p: each p×p patch becomes one token (T = (input_size/p)² tokens)."""
    in_channels: int = attrs.field(default=4, validator=int_at_least(1))
    """C, the latent channels."""
    hidden_size: int = attrs.field(default=1152, validator=int_at_least(4))
    """D, the token width (divisible by 4 and by ``num_heads``)."""
    depth: int = attrs.field(default=28, validator=int_at_least(1))
    """N, the number of DiT blocks."""
    num_heads: int = attrs.field(default=16, validator=int_at_least(1))
    """Attention heads per block."""
    mlp_ratio: float = attrs.field(default=4.0, validator=positive_real)
    """MLP width = int(D · mlp_ratio)."""
    num_classes: int = attrs.field(default=1000, validator=int_at_least(0))
    """Class labels 0 … num_classes−1, plus the null class ``num_classes``; 0 = unconditional."""
    vector_dim: int = attrs.field(default=0, validator=int_at_least(0))
    """D_v > 0: a Linear(D_v → D) adds the conditioning record's ``vector`` [B, D_v] to c."""
    learn_sigma: bool = attrs.field(default=True, validator=boolean)
    """Output 2C channels (prediction, then learned variance) instead of C."""
    frequency_embedding_size: int = attrs.field(default=256, validator=int_at_least(2))
    """Width of the sinusoidal timestep features fed to the timestep MLP."""
    timestep_freq_shift: int = attrs.field(default=0, validator=attrs.validators.in_((0, 1)))
    """0: DiT/ADM timestep frequencies; 1: those of diffusers' DiTTransformer2DModel."""
    norm_eps: float = attrs.field(default=1e-6, validator=positive_real)
    """ε of the attention-branch and final layer norms."""
    mlp_norm_eps: float = attrs.field(default=1e-6, validator=positive_real)
    """ε of the MLP-branch layer norm (diffusers' port uses its ``norm_eps``, 1e-5 by default)."""
    gradient_checkpointing: bool = attrs.field(default=False, validator=boolean)
    """Recompute each block's activations in the backward pass (saves memory when training)."""

    def __attrs_post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.hidden_size % 4:
            raise ConfigError(
                f"hidden_size must be divisible by 4 (2-D sin-cos position embedding), got {self.hidden_size}"
            )
        if self.input_size % self.patch_size:
            raise ConfigError(f"input_size {self.input_size} is not divisible by patch_size {self.patch_size}")

    @property
    def out_channels(self) -> int:
        """2C with learned σ, else C."""
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def grid_size(self) -> int:
        """Tokens per side, input_size / p."""
        return self.input_size // self.patch_size

    @property
    def num_tokens(self) -> int:
        """T = (input_size / p)²."""
        return self.grid_size**2

    PRESET_NOUN: ClassVar[str] = "DiT preset"


# The paper's Table 1 models (depth N, width D, heads) × patch sizes 2, 4, 8, for 256 px
# ImageNet: 32×32×4 latents, 1000 classes, learned σ.
_MODEL_SIZES = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
PRESETS: Mapping[str, DiTConfig] = MappingProxyType(
    {
        f"DiT-{size}/{patch}": DiTConfig(depth=depth, hidden_size=width, num_heads=heads, patch_size=patch)
        for size, (depth, width, heads) in _MODEL_SIZES.items()
        for patch in (2, 4, 8)
    }
)


# -- the network ----------------------------------------------------------------------------


class DiTBlock(nn.Module):
    """Self-attention and MLP, each wrapped in adaLN-Zero (Peebles & Xie 2023, Fig. 3 right)."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        dim = config.hidden_size
        self.norm1 = nn.LayerNorm(dim, eps=config.norm_eps, elementwise_affine=False)
        self.attn = Attention(dim, config.num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=config.mlp_norm_eps, elementwise_affine=False)
        self.mlp = FeedForward(dim, int(dim * config.mlp_ratio), activation="gelu_tanh")
        self.adaLN = AdaLNModulation(dim, dim, 6)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x: (B, T, D) tokens; c: (B, D) conditioning. Returns (B, T, D)."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.adaLN(c)  # 6 × (B, D)
        x = x + gate_a.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_a, scale_a))  # (B, T, D)
        x = x + gate_m.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_m, scale_m))  # (B, T, D)
        return x


class FinalLayer(nn.Module):
    """adaLN (shift, scale; no gate) then a linear map of each token to its p²·C_out outputs."""

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        dim, p = config.hidden_size, config.patch_size
        self.norm = nn.LayerNorm(dim, eps=config.norm_eps, elementwise_affine=False)
        self.adaLN = AdaLNModulation(dim, dim, 2)
        self.linear = nn.Linear(dim, p * p * config.out_channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN(c)  # 2 × (B, D)
        return self.linear(modulate(self.norm(x), shift, scale))  # (B, T, p²·C_out)


class DiT(nn.Module):
    """Diffusion transformer (Peebles & Xie 2023) built from one :class:`DiTConfig`.

    ``forward(x, t, cond=None)``: x [B, C, H, W] with H = W = ``input_size``; t [B] the
    timestep in the model's units (training timesteps 0 … T−1; fractional values allowed);
    cond the conditioning: None for the null class, labels [B], or a
    :class:`~diffkit.models.conditioners.Conditioning` record, of which the model reads ``labels``
    (:func:`~diffkit.models.backbones.embeddings.class_labels`) and ``vector`` (with ``vector_dim``
    > 0); a record carrying ``concat`` is an error. Returns [B, C_out, H, W]. A floating-point
    x of any dtype is cast to the weights' dtype on entry and the output returned in x's dtype
    (:func:`~diffkit.models.backbones.embeddings.input_in_weight_dtype`); a non-float x is an error.

    ``gradient_checkpointing`` (initialised from the config) may be switched on the module.
    """

    def __init__(self, config: DiTConfig | None = None) -> None:
        super().__init__()
        self.config = config = DiTConfig.resolve(config, "DiT")
        self.gradient_checkpointing = config.gradient_checkpointing
        dim, p = config.hidden_size, config.patch_size
        self.patch_embed = nn.Conv2d(config.in_channels, dim, kernel_size=p, stride=p)
        # Fixed sin-cos positions [1, T, D]: derived from the config, so not saved with the weights.
        self.register_buffer("pos_embed", torch.empty(1, config.num_tokens, dim), persistent=False)
        self.t_embedder = TimestepEmbedder(
            dim, config.frequency_embedding_size, freq_shift=config.timestep_freq_shift
        )
        self.y_embedder = LabelEmbedder(config.num_classes, dim) if config.num_classes > 0 else None
        self.vector_embed = nn.Linear(config.vector_dim, dim) if config.vector_dim > 0 else None
        self.blocks = nn.ModuleList(DiTBlock(config) for _ in range(config.depth))
        self.final_layer = FinalLayer(config)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """The paper's initialisation (reference code ``DiT.initialize_weights``)."""
        # Every linear layer: xavier-uniform weights, zero biases (ViT's standard).
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        # Fixed 2-D sin-cos position embedding.
        grid = self.config.grid_size
        self.pos_embed.copy_(sincos_position_embedding_2d(self.config.hidden_size, grid, grid)[None])
        # Patch projection like a linear layer on the flattened p×p×C patch (bias: conv default).
        nn.init.xavier_uniform_(self.patch_embed.weight.view(self.patch_embed.weight.shape[0], -1))
        # Label table and timestep MLP weights: N(0, 0.02²).
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # adaLN-Zero: every modulation starts at zero (each block is the identity) ...
        # ... and so do the final modulation and output layer (the network outputs 0).
        zero_init(*(block.adaLN.linear for block in self.blocks), self.final_layer.adaLN.linear, self.final_layer.linear)

    def num_parameters(self, *, include_position_embedding: bool = True) -> int:
        """Parameter count as in the paper, which includes the fixed position embedding (a buffer here)."""
        count = sum(p.numel() for p in self.parameters())
        return count + (self.pos_embed.numel() if include_position_embedding else 0)

    def sharding_units(self) -> list[nn.Module]:
        """The transformer blocks: what FSDP shards one by one."""
        return list(self.blocks)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, p·p·C_out) tokens → (B, C_out, H, W); each token's outputs are ordered (p, p, C)."""
        p, grid, c_out = self.config.patch_size, self.config.grid_size, self.config.out_channels
        x = x.reshape(x.shape[0], grid, grid, p, p, c_out)  # (B, h, w, p, p, C_out)
        x = x.permute(0, 5, 1, 3, 2, 4)  # (B, C_out, h, p, w, p)
        return x.reshape(x.shape[0], c_out, grid * p, grid * p)  # (B, C_out, H, W)

    def readable_conditioning(self) -> set[str]:
        """The conditioning record fields this model reads (``labels``, ``vector``; never ``concat``)."""
        readable = {"labels"} if self.y_embedder is not None else set()
        return readable | ({"vector"} if self.vector_embed is not None else set())

    def forward(self, x: torch.Tensor, t: torch.Tensor | float, cond: Any = None) -> torch.Tensor:
        cfg = self.config
        x, x_dtype = input_in_weight_dtype(x, self.patch_embed.weight, model="DiT")  # in the weights' dtype
        expected = (cfg.in_channels, cfg.input_size, cfg.input_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ShapeError(f"DiT expects x of shape [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}")
        batch = x.shape[0]
        t = broadcast_timesteps(t, batch, x.device)  # (B,)

        # contiguous: a transposed residual stream made every LayerNorm copy its input
        x = self.patch_embed(x).flatten(2).transpose(1, 2).contiguous()  # (B, T, D), T = H·W/p²
        x = x + self.pos_embed  # (B, T, D); under autocast the sum (residual stream) stays fp32
        c = self.t_embedder(t)  # (B, D)
        check_conditioning(cond, self.readable_conditioning(), model="DiT", tensor_field="labels")
        if self.y_embedder is not None:
            labels = class_labels(cond, batch, self.y_embedder.null_label, x.device)  # (B,)
            c = c + self.y_embedder(labels)  # (B, D)
        c = add_vector_embedding(c, cond, self.vector_embed)  # (B, D)

        use_checkpoint = self.gradient_checkpointing and torch.is_grad_enabled()
        for block in self.blocks:
            if use_checkpoint:
                x = checkpoint(block, x, c, use_reentrant=False)  # (B, T, D), recomputed in backward
            else:
                x = block(x, c)  # (B, T, D)
        x = self.final_layer(x, c)  # (B, T, p²·C_out)
        out = self.unpatchify(x)  # (B, C_out, H, W)
        return out if x_dtype == self.patch_embed.weight.dtype else out.to(x_dtype)


# -- registry entry -------------------------------------------------------------------------


def build_dit(*, preset: str | None = None, **config: Any) -> DiT:
    """DiT (Peebles & Xie 2023): patchified latent transformer with adaLN-Zero blocks.

    ``build_dit(preset="DiT-B/4", num_classes=10)`` starts from a preset and changes fields;
    without ``preset`` the fields are :class:`DiTConfig`'s (defaults: DiT-XL/2, 256 px).
    """
    return DiT(DiTConfig.build_config(preset, config))


# An explicit signature so that `diffkit.build("backbone", "dit", ...)` can name the valid
# options when one is misspelt.
build_dit.__signature__ = DiTConfig.builder_signature()  # type: ignore[attr-defined]
