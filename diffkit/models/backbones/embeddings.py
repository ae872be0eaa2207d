"""Embeddings shared by the backbones: timesteps, class labels and 2-D positions.

* :func:`timestep_embedding` — the sinusoidal timestep features of DDPM/ADM as DiT uses
  them (cos half first), and :class:`TimestepEmbedder`, the MLP on top of them;
  :func:`broadcast_timesteps` — a backbone's ``t`` argument as a [B] tensor.
* :class:`LabelEmbedder` — a class-label table with one extra row, the null class, that
  classifier-free guidance uses for "no label". Dropping labels to the null class during
  training (CFG's token drop) is the class-label conditioner's job, never the backbone's.
* :func:`class_labels` — the one place that reads class labels out of a conditioning record.
* :func:`conditioning_field`, :func:`check_conditioning`, :func:`add_vector_embedding` and
  :func:`concat_conditioning` — how every backbone reads the other fields of a
  :class:`~diffkit.models.conditioners.Conditioning` record (``vector``, ``concat``) and checks that it
  can use what the record carries.
* :func:`sincos_position_embedding_2d` — the fixed 2-D sin-cos position embedding of MAE/DiT.
* :func:`input_in_weight_dtype` — the dtype rule at every backbone's entry: a floating-point
  ``x`` of another dtype than the weights is cast to theirs (the output goes back to x's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from diffkit.errors import ConfigError, ShapeError


def input_in_weight_dtype(x: Any, weight: torch.Tensor, *, model: str) -> tuple[torch.Tensor, torch.dtype]:
    """(x in the weights' dtype, x's own dtype): the cast every backbone makes at its entry.

    A float64 sample into float32 weights (or float32 into a float16 model) would otherwise stop
    at the first layer with torch's dtype-mismatch error. The backbone computes in its weights'
    dtype (autocast, when on, still decides per op) and returns its output in x's dtype, so the
    caller gets back what it passed in. Anything but a floating-point tensor is an error.
    """
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{model} takes x as a tensor [B, C, H, W], got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise ShapeError(
            f"{model} takes a floating-point x (noisy samples), got a tensor of dtype {str(x.dtype).removeprefix('torch.')}; "
            "convert images to float (e.g. x.float() / 127.5 - 1) first"
        )
    return (x if x.dtype == weight.dtype else x.to(weight.dtype)), x.dtype


def timestep_embedding(
    t: torch.Tensor, dim: int, *, max_period: float = 10000.0, freq_shift: float = 0.0
) -> torch.Tensor:
    """Sinusoidal features of timesteps t [B] (fractional t allowed) → float32 [B, dim].

    With half = ⌊dim/2⌋ and frequencies f_i = max_period^(−i/(half − freq_shift)),
    i = 0 … half−1, the features are [cos(t·f_0 … t·f_{half−1}), sin(t·f_0 … t·f_{half−1})]
    (the cosines first, as in DiT and ADM/GLIDE), zero-padded to ``dim`` when it is odd.

    ``freq_shift = 0`` is DiT's and ADM's convention. diffusers' ``DiTTransformer2DModel``
    uses ``freq_shift = 1`` (its ``downscale_freq_shift``), which spaces the frequencies
    slightly differently; :mod:`diffkit.io.diffusers.dit` sets it to reproduce that
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


def broadcast_timesteps(t: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
    """t as a [B] tensor on ``device``; a Python number or 0-d tensor is broadcast."""
    t = torch.as_tensor(t, device=device)
    if t.ndim == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ShapeError(f"t must have shape [B] = [{batch}] (or be a scalar), got {tuple(t.shape)}")
    return t


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

    The rule:

    * ``None`` — unconditional: every sample gets the null class ``null_label``;
    * an integer tensor of shape [B] — the labels themselves (the null class is allowed);
    * a :class:`~diffkit.models.conditioners.Conditioning` record (or any object with a ``labels``
      attribute), or a mapping with a ``"labels"`` entry — that entry, read by the same rule
      (so a record whose ``labels`` is None is unconditional).

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


# -- the other fields of a conditioning record ---------------------------------------------------

CONDITIONING_FIELDS: tuple[str, ...] = ("labels", "vector", "context", "mask", "concat")

# What a backbone needs in order to read each field (for error messages).
_NEEDS = {
    "labels": "labels need a class table (num_classes > 0)",
    "vector": "a vector needs a projection into the time embedding (vector_dim > 0)",
    "context": "a context needs cross-attention (latent_unet)",
    "concat": "concat channels need a backbone that concatenates them to x (unet, latent_unet)",
}


def conditioning_field(cond: Any, name: str) -> Any:
    """The ``name`` entry of a conditioning record: an attribute of a record, a key of a mapping.

    None when ``cond`` is None, a bare tensor (whose meaning is the backbone's: labels for
    ``unet``/``dit``, a context for ``latent_unet``), or has no such entry.
    """
    if cond is None or isinstance(cond, torch.Tensor):
        return None
    if isinstance(cond, Mapping):
        return cond.get(name)
    return getattr(cond, name, None)


def check_conditioning(cond: Any, readable: set[str], *, model: str, tensor_field: str) -> None:
    """Raise :class:`ConfigError` when ``model`` cannot use what ``cond`` carries.

    ``readable``: the fields this model reads (from its config); ``tensor_field``: what a bare
    tensor ``cond`` means to it. The rule:

    * ``concat`` present but not readable is an error (it is never a by-product);
    * otherwise the model must read at least one of the fields present. A conditioner may
      encode one input several ways (the text conditioner: ``context`` and a pooled
      ``vector``; the class-label one: ``labels`` and an embedded ``vector``); a backbone
      reads the ones it is built for and ignores the others.

    ``mask`` counts with ``context``. A record with no field (or ``None``) is always accepted.
    """
    if cond is None:
        return
    if isinstance(cond, torch.Tensor):
        present = [tensor_field]
    else:
        present = [n for n in CONDITIONING_FIELDS if n != "mask" and conditioning_field(cond, n) is not None]
    if not present:
        return
    if "concat" in present and "concat" not in readable:
        raise ConfigError(f"this {model} cannot use the conditioning's concat: {_NEEDS['concat']}")
    if not any(name in readable for name in present):
        reasons = "; ".join(_NEEDS[name] for name in present)
        raise ConfigError(
            f"this {model} is unconditional in everything the conditioning carries ({', '.join(present)}): "
            f"{reasons}. Pass cond=None, or configure the model for the conditioning"
        )


def add_vector_embedding(emb: torch.Tensor, cond: Any, projection: nn.Linear | None) -> torch.Tensor:
    """e + W·v + b: the record's ``vector`` v [B, D_v] projected into the embedding e [B, E].

    Returns ``emb`` unchanged when the record has no vector or the model no ``projection``
    (``vector_dim`` = 0; :func:`check_conditioning` decides whether that is an error).
    """
    vector = conditioning_field(cond, "vector")
    if vector is None or projection is None:
        return emb
    expected = (emb.shape[0], projection.in_features)
    if not isinstance(vector, torch.Tensor) or not vector.dtype.is_floating_point or tuple(vector.shape) != expected:
        raise ShapeError(
            f"the conditioning vector must be a floating-point tensor [B, vector_dim] = {list(expected)}, got "
            f"{getattr(vector, 'dtype', type(vector).__name__)} {tuple(getattr(vector, 'shape', ()))}"
        )
    return emb + projection(vector.to(device=emb.device, dtype=projection.weight.dtype))  # (B, E)


def concat_conditioning(x: torch.Tensor, cond: Any, in_channels: int, *, model: str) -> torch.Tensor:
    """[x, c] along channels, c the record's ``concat`` [B, C_c, H, W] (x alone without one).

    The result must have ``in_channels`` channels, so a model conditioned this way counts
    C_x + C_c input channels; anything else raises :class:`ShapeError`.
    """
    concat = conditioning_field(cond, "concat")
    if concat is None:
        if x.ndim != 4 or x.shape[1] != in_channels:
            raise ShapeError(f"{model} expects x of shape [B, {in_channels}, H, W], got {tuple(x.shape)}")
        return x
    if not isinstance(concat, torch.Tensor) or not concat.dtype.is_floating_point or concat.ndim != 4:
        raise ShapeError(
            f"the conditioning's concat must be a floating-point tensor [B, C_c, H, W], got "
            f"{getattr(concat, 'dtype', type(concat).__name__)} {tuple(getattr(concat, 'shape', ()))}"
        )
    if x.ndim != 4 or concat.shape[0] != x.shape[0] or concat.shape[2:] != x.shape[2:]:
        raise ShapeError(
            f"the conditioning's concat {tuple(concat.shape)} must match x {tuple(x.shape)} in batch, height and width"
        )
    if x.shape[1] + concat.shape[1] != in_channels:
        raise ShapeError(
            f"{model} has in_channels={in_channels}, but x has {x.shape[1]} channels and the conditioning's concat "
            f"{concat.shape[1]}: in_channels must count both ({x.shape[1] + concat.shape[1]})"
        )
    return torch.cat([x, concat.to(device=x.device, dtype=x.dtype)], dim=1)  # (B, C_x + C_c, H, W)


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
