"""The built-in β schedules as frozen configuration classes (each instance is a schedule)."""

from __future__ import annotations

import math
from typing import Any

import attrs
import torch

from diffkit.errors import ConfigError
from diffkit.schedules import betas
from diffkit.schedules.base import DiscreteSchedule, unit_interval
from diffkit.validators import Validator, is_real


def _greater_than(other: str) -> Validator:
    """attrs validator: the field must exceed the field ``other`` (declared, so validated, before it)."""

    def validate(instance: Any, attribute: attrs.Attribute, value: float) -> None:
        if value <= getattr(instance, other):
            raise ConfigError(f"{attribute.name} ({value}) must be greater than {other} ({getattr(instance, other)})")

    return validate


@attrs.frozen(kw_only=True, slots=False)
class LinearSchedule(DiscreteSchedule):
    """Linear β from 1e-4 to 0.02 (DDPM, Ho et al. 2020)."""

    beta_start: float = attrs.field(default=1e-4, validator=unit_interval)
    beta_end: float = attrs.field(default=0.02, validator=[unit_interval, _greater_than("beta_start")])

    def raw_betas(self) -> torch.Tensor:
        return betas.linear_betas(self.num_train_timesteps, self.beta_start, self.beta_end)


@attrs.frozen(kw_only=True, slots=False)
class ScaledLinearSchedule(DiscreteSchedule):
    """Linear √β from 0.00085 to 0.012, squared (latent diffusion / Stable Diffusion)."""

    beta_start: float = attrs.field(default=0.00085, validator=unit_interval)
    beta_end: float = attrs.field(default=0.012, validator=[unit_interval, _greater_than("beta_start")])

    def raw_betas(self) -> torch.Tensor:
        return betas.scaled_linear_betas(self.num_train_timesteps, self.beta_start, self.beta_end)


def _nonnegative(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not is_real(value) or not 0 <= value < 1:
        raise ConfigError(f"{attribute.name} must be a number in [0, 1), got {value!r}")


@attrs.frozen(kw_only=True, slots=False)
class CosineSchedule(DiscreteSchedule):
    """Cosine ᾱ with offset s = 0.008 and β ≤ 0.999 (improved DDPM, Nichol & Dhariwal 2021)."""

    offset: float = attrs.field(default=0.008, validator=_nonnegative)
    max_beta: float = attrs.field(default=0.999, validator=unit_interval)

    def raw_betas(self) -> torch.Tensor:
        return betas.cosine_betas(self.num_train_timesteps, self.offset, self.max_beta)


def _finite_real(instance: object, attribute: attrs.Attribute, value: float) -> None:
    if not is_real(value) or not math.isfinite(value):
        raise ConfigError(f"{attribute.name} must be a finite real number, got {value!r}")


@attrs.frozen(kw_only=True, slots=False)
class SigmoidSchedule(DiscreteSchedule):
    """β = beta_start + (beta_end − beta_start)·sigmoid(linspace(−6, 6)) (GeoDiff, Xu et al. 2022)."""

    beta_start: float = attrs.field(default=1e-4, validator=unit_interval)
    beta_end: float = attrs.field(default=0.02, validator=[unit_interval, _greater_than("beta_start")])
    low: float = attrs.field(default=-6.0, validator=_finite_real)
    high: float = attrs.field(default=6.0, validator=[_finite_real, _greater_than("low")])

    def raw_betas(self) -> torch.Tensor:
        return betas.sigmoid_betas(self.num_train_timesteps, self.beta_start, self.beta_end, self.low, self.high)
