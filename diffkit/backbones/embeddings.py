"""Embeddings shared by the backbones: timesteps, class labels and 2-D positions.

* :func:`timestep_embedding` — the sinusoidal timestep features of DDPM/ADM as DiT uses
  them (cos half first), and :class:`TimestepEmbedder`, the MLP on top of them.
* :class:`LabelEmbedder` — a class-label table with one extra row, the null class, that
  classifier-free guidance uses for "no label". Dropping labels to the null class during
  training (CFG's token drop) is the class-label conditioner's job, never the backbone's.
* :func:`class_labels` — the one place that reads class labels out of a conditioning record.
* :func:`sincos_position_embedding_2d` — the fixed 2-D sin-cos position embedding of MAE/DiT.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from diffkit.errors import ConfigError, ShapeError


def timestep_embedding(
    t: torch.Tensor, dim: int, *, max_period: float = 10000.0, freq_shift: float = 0.0
) -> torch.Tensor:
    """Sinusoidal features of timesteps t [B] (fractional t allowed) → float32 [B, dim].

    With half = ⌊dim/2⌋ and frequencies f_i = max_period^(−i/(half − freq_shift)),
    i = 0 … half−1, the features are [cos(t·f_0 … t·f_{half−1}), sin(t·f_0 … t·f_{half−1})]
    (the cosines first, as in DiT and ADM/GLIDE), zero-padded to ``dim`` when it is odd.

    ``freq_shift = 0`` is DiT's and ADM's convention. diffusers' ``DiTTransformer2DModel``
    uses ``freq_shift = 1`` (its ``downscale_freq_shift``), which spaces the frequencies
    slightly differently; :mod:`diffkit.backbones.diffusers_dit` sets it to reproduce that
    model exactly. Computed in float32 like both, so a trained network sees the features it
    was trained with.
    """
    half = dim // 2
    if half - freq_shift <= 0:
        raise ConfigError(f"timestep embedding width {dim} is too small for freq_shift={freq_shift}")
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
    freqs = torch.exp(exponent / (half - freq_shift))  # (half,)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2·half)
    if dim % 2:
        emb = torch.cat([emb, emb.new_zeros(emb.shape[0], 1)], dim=-1)  # (B, dim)
    return emb


class TimestepEmbedder(nn.Module):
    """t [B] → sinusoidal features [B, F] → Linear, SiLU, Linear → [B, D] (DiT §3.2, ADM).

    Args:
        dim: output width D.
        frequency_dim: width F of the sinusoidal features (DiT: 256).
        freq_shift: see :func:`timestep_embedding` (0 = DiT/ADM).
        max_period: the longest period of the features.
    """

    def __init__(
        self, dim: int, frequency_dim: int = 256, *, freq_shift: float = 0.0, max_period: float = 10000.0
    ) -> None:
        super().__init__()
        self.frequency_dim, self.freq_shift, self.max_period = frequency_dim, freq_shift, max_period
        self.mlp = nn.Sequential(nn.Linear(frequency_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        features = timestep_embedding(
            t, self.frequency_dim, max_period=self.max_period, freq_shift=self.freq_shift
        )  # (B, F), float32
        return self.mlp(features.to(self.mlp[0].weight.dtype))  # (B, D)


class LabelEmbedder(nn.Module):
    """Class labels [B] → [B, D] from a table of ``num_classes + 1`` rows.

    Row ``num_classes`` (:attr:`null_label`) is the null class: the "no label" input of
    classifier-free guidance. The backbone only looks labels up; the class-label conditioner
    replaces labels by the null class (CFG token drop) during training.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    @property
    def null_label(self) -> int:
        """The index of the null class (= ``num_classes``)."""
        return self.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(labels)  # (B, D)


def class_labels(cond: Any, batch_size: int, null_label: int, device: torch.device) -> torch.Tensor:
    """The class labels [B] (int64) a backbone reads from its ``cond`` argument.

    The rule (until the ``Conditioning`` record of the conditioners lands, this is the only
    function to change):

    * ``None`` — unconditional: every sample gets the null class ``null_label``;
    * an integer tensor of shape [B] — the labels themselves (the null class is allowed);
    * a mapping with a ``"labels"`` entry, or an object with a ``labels`` attribute — that
      entry, read by the same rule (so a record whose ``labels`` is None is unconditional).

    Anything else raises a ``TypeError``; a wrongly shaped or floating-point tensor raises
    :class:`~diffkit.errors.ShapeError`.
    """
    if cond is None:
        return torch.full((batch_size,), null_label, dtype=torch.long, device=device)
    if isinstance(cond, torch.Tensor):
        if cond.dtype.is_floating_point or cond.dtype.is_complex or cond.dtype == torch.bool:
            raise ShapeError(f"class labels must be an integer tensor, got dtype {cond.dtype}")
        if cond.shape != (batch_size,):
            raise ShapeError(f"class labels must have shape [B] = [{batch_size}], got {tuple(cond.shape)}")
        return cond.to(device=device, dtype=torch.long)
    if isinstance(cond, Mapping):
        if "labels" not in cond:
            raise TypeError(f"a conditioning mapping must have a 'labels' entry; it has {sorted(cond)}")
        return class_labels(cond["labels"], batch_size, null_label, device)
    if hasattr(cond, "labels"):
        return class_labels(cond.labels, batch_size, null_label, device)
    raise TypeError(
        "cond must be None (unconditional), an integer tensor of class labels [B], or a record "
        f"with a 'labels' entry; got {type(cond).__name__}"
    )


def sincos_position_embedding_2d(dim: int, height: int, width: int) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding (MAE, He et al. 2022; DiT), float64 [H·W, dim].

    Token (i, j) — row i, column j, at index i·W + j, the order of a row-major flatten of a
    patch grid — gets [e(j), e(i)]: the first half encodes the column, the second the row,
    each with the 1-D embedding e(p) = [sin(p·ω_k), cos(p·ω_k)], ω_k = 10000^(−k/(dim/4)),
    k = 0 … dim/4 − 1. ``dim`` must be divisible by 4.
    """
    if dim % 4:
        raise ConfigError(f"the 2-D sin-cos position embedding needs a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)

    def one_axis(positions: torch.Tensor) -> torch.Tensor:
        angles = positions[:, None] * omega[None, :]  # (L, dim/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (L, dim/2)

    rows = torch.arange(height, dtype=torch.float64).repeat_interleave(width)  # i of token i·W + j
    cols = torch.arange(width, dtype=torch.float64).repeat(height)  # j of token i·W + j
    return torch.cat([one_axis(cols), one_axis(rows)], dim=1)  # (H·W, dim)
