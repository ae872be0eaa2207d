"""Class labels with classifier-free guidance's label drop (Ho & Salimans 2022; DiT's LabelEmbedder).

Labels y ∈ {0 … K−1} (K = ``num_classes``) become ``Conditioning(labels=y)``. In training mode
each label is replaced by the null class K with probability ``drop_prob``, so the backbone's
class table (which has K + 1 rows, the last one ∅) learns the unconditional model as well.
With ``embed_dim`` E > 0 the conditioner also owns such a table and returns its rows as
``vector`` = table[y] [B, E], for backbones that take the class through ``vector_dim``.
"""

from __future__ import annotations

from typing import Any

import attrs
import torch
from torch import nn

from diffkit.errors import ConfigError, ShapeError
from diffkit.models.conditioners.base import Conditioner, check_batch_list, check_batch_numbers, config_signature
from diffkit.models.conditioners.record import Conditioning
from diffkit.models.configs import ModelConfig
from diffkit.validators import int_at_least, probability


@attrs.frozen(kw_only=True)
class ClassLabelConfig(ModelConfig):
    """Configuration of :class:`ClassLabelConditioner`."""

    num_classes: int = attrs.field(validator=int_at_least(1))
    """K: labels 0 … K−1; K itself is the null class."""
    drop_prob: float = attrs.field(default=0.1, validator=probability)
    """p_uncond, the training-time probability of the null class (DiT: 0.1)."""
    embed_dim: int = attrs.field(default=0, validator=int_at_least(0))
    """E > 0: also output ``vector`` from an own table of K + 1 rows of width E; 0: labels only."""


class ClassLabelConditioner(Conditioner):
    """Class labels [B] (a tensor or a sequence of ints) → ``Conditioning(labels[, vector])``.

    ``embedding`` (only with ``embed_dim`` > 0): ``nn.Embedding(K + 1, E)``, initialised
    N(0, 0.02²) like DiT's label table; row K is the null class.
    """

    config_class = ClassLabelConfig
    inputs = "class labels"

    config: ClassLabelConfig

    def __init__(self, config: ClassLabelConfig) -> None:
        super().__init__(config)
        self.embedding: nn.Embedding | None = None
        if config.embed_dim > 0:
            self.embedding = nn.Embedding(config.num_classes + 1, config.embed_dim)
            nn.init.normal_(self.embedding.weight, std=0.02)

    @property
    def null_label(self) -> int:
        """The null class, K = ``num_classes``."""
        return self.config.num_classes

    def labels_of(self, inputs: Any) -> torch.Tensor:
        """``inputs`` as int64 labels [B], checked to lie in 0 … K−1."""
        labels = check_batch_numbers(inputs, "class labels", torch.long, self.module_device()).long()
        outside = (labels < 0) | (labels >= self.config.num_classes)
        if outside.any():  # one device→host copy per call: user input is checked
            bad = labels[outside][0].item()
            raise ConfigError(
                f"class label {bad} is outside the valid range 0 … {self.config.num_classes - 1} "
                f"(num_classes={self.config.num_classes}); for the null class pass force_drop=True"
            )
        return labels

    def batch_size_of(self, inputs: Any) -> int:
        if isinstance(inputs, torch.Tensor) or hasattr(inputs, "__array__"):
            if len(inputs.shape) != 1:
                raise ShapeError(f"class labels must have shape [B], got {tuple(inputs.shape)}")
            return int(inputs.shape[0])
        return len(check_batch_list(inputs, "class labels"))

    def prepare(self, inputs: Any, generator: torch.Generator | None) -> torch.Tensor:
        labels = self.labels_of(inputs)  # (B,), range-checked where they are (CPU labels: no GPU sync)
        if generator is not None and self.training and labels.device != generator.device:
            # draw the CFG drops where the generator is and bring the labels there (host→GPU is
            # asynchronous; a mask copied back GPU→host would synchronise every step)
            labels = labels.to(generator.device, non_blocking=labels.device.type == "cpu")
        return labels

    def apply_drop(self, batch: torch.Tensor, drop: torch.Tensor) -> Conditioning:
        return self._record(torch.where(drop, torch.full_like(batch, self.null_label), batch))  # ∅ = K

    def null(self, batch_size: int, device: torch.device | str | None = None) -> Conditioning:
        device = self.module_device() if device is None else torch.device(device)
        return self._record(torch.full((batch_size,), self.null_label, dtype=torch.long, device=device))

    def _record(self, labels: torch.Tensor) -> Conditioning:
        if self.embedding is None:
            return Conditioning(labels=labels)
        table_device = self.embedding.weight.device
        asynchronous = labels.device.type == "cpu" and table_device.type == "cuda"
        labels = labels.to(table_device, non_blocking=asynchronous)
        vector = self.embedding(labels)  # (B, E), on the table's device
        return Conditioning(labels=labels, vector=vector)


def build_class_label(**config: Any) -> ClassLabelConditioner:
    """Class labels with CFG's null-class drop (DiT's label dropout); optional own embedding table."""
    return ClassLabelConditioner(ClassLabelConfig.from_dict(config))


build_class_label.__signature__ = config_signature(ClassLabelConfig)  # type: ignore[attr-defined]
