"""A scalar per sample (a timestep, a noise-augmentation level, a size) as sinusoidal features.

t [B] → ``Conditioning(vector=φ(t))`` with φ the sinusoidal embedding of DDPM/ADM
(:func:`diffkit.models.backbones.embeddings.timestep_embedding`: [cos(t·f_i), sin(t·f_i)],
f_i = max_period^(−i/half)). The conditioner has no weights: the backbone's ``vector_dim``
projection learns what to do with φ(t). The null condition is the zero vector.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch

from diffkit.models.backbones.embeddings import timestep_embedding
from diffkit.models.conditioners.base import Conditioner, check_batch_numbers, config_signature
from diffkit.models.conditioners.record import Conditioning
from diffkit.models.configs import ModelConfig
from diffkit.validators import int_at_least, positive_real, probability


@attrs.frozen(kw_only=True)
class TimestepConfig(ModelConfig):
    """Configuration of :class:`TimestepConditioner`."""

    dim: int = attrs.field(default=256, validator=int_at_least(2))
    """D, the width of the features (``vector`` is [B, D])."""
    max_period: float = attrs.field(default=10000.0, validator=positive_real)
    """The longest period of the features (DDPM/ADM: 10000)."""
    drop_prob: float = attrs.field(default=0.0, validator=probability)
    """p_uncond: training-time probability of the null condition (the zero vector)."""


class TimestepConditioner(Conditioner):
    """t [B] (a real tensor or a sequence of numbers) → ``Conditioning(vector=[B, dim])`` float32."""

    config_class = TimestepConfig
    inputs = "timesteps"

    config: TimestepConfig

    def values_of(self, inputs: Any) -> torch.Tensor:
        """``inputs`` as a real tensor [B]."""
        return check_batch_numbers(inputs, "timesteps", torch.float64)

    def batch_size_of(self, inputs: Any) -> int:
        return int(self.values_of(inputs).shape[0])

    def prepare(self, inputs: Any, generator: torch.Generator | None) -> torch.Tensor:
        return self.values_of(inputs)  # (B,)

    def apply_drop(self, batch: torch.Tensor, drop: torch.Tensor) -> Conditioning:
        features = timestep_embedding(batch, self.config.dim, max_period=self.config.max_period)  # (B, D) float32
        return Conditioning(vector=features.masked_fill(drop[:, None], 0.0))  # ∅ = 0

    def null(self, batch_size: int, device: torch.device | str | None = None) -> Conditioning:
        return Conditioning(vector=torch.zeros(batch_size, self.config.dim, device=device))


def build_timestep(**config: Any) -> TimestepConditioner:
    """Sinusoidal features of a per-sample scalar (DDPM/ADM timestep embedding) as a vector."""
    return TimestepConditioner(TimestepConfig.from_dict(config))


build_timestep.__signature__ = config_signature(TimestepConfig)  # type: ignore[attr-defined]
