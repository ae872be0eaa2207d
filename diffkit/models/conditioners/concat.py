"""Image conditioning by channel concatenation (SR3, Saharia et al. 2022; InstructPix2Pix;
LDM's inpainting and super-resolution models).

An image c [B, C_c, H, W] (a low-resolution image upsampled to H×W, a masked image, a
depth map, …) becomes ``Conditioning(concat=c)``; ``unet`` and ``latent_unet`` concatenate it
to x along channels before their first convolution, so their ``in_channels`` count C_x + C_c.
The null condition is the zero image. Since a batch size alone does not say H×W, ``null``
needs ``size`` (from the config, or passed to it); ``forward(images, force_drop=True)`` gives
the same record without one.
"""

from __future__ import annotations

import numbers
from typing import Any

import attrs
import torch

from diffkit.errors import ConfigError, ShapeError
from diffkit.models.conditioners.base import Conditioner, config_signature
from diffkit.models.conditioners.record import Conditioning
from diffkit.models.configs import ModelConfig
from diffkit.validators import int_at_least, is_integer, probability


def _size(value: Any) -> Any:
    """An int becomes a square (H, W); a list (JSON) a tuple; None stays None."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return (int(value), int(value))
    return tuple(value) if isinstance(value, list) else value


def _size_validator(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or any(not is_integer(v) or v < 1 for v in value)
    ):
        raise ConfigError(f"{attribute.name} must be None, a positive int or a pair (H, W) of them, got {value!r}")


@attrs.frozen(kw_only=True)
class ConcatConfig(ModelConfig):
    """Configuration of :class:`ConcatConditioner`."""

    channels: int = attrs.field(validator=int_at_least(1))
    """C_c, the channels of the conditioning image."""
    drop_prob: float = attrs.field(default=0.0, validator=probability)
    """p_uncond: training-time probability of the null condition (the zero image)."""
    size: tuple[int, int] | None = attrs.field(default=None, converter=_size, validator=_size_validator)
    """(H, W) of the conditioning image, if fixed: checked on input and used by ``null``."""


class ConcatConditioner(Conditioner):
    """Images [B, C_c, H, W] (floating point) → ``Conditioning(concat=images)``."""

    config_class = ConcatConfig
    inputs = "images"

    config: ConcatConfig

    def prepare(self, images: Any, generator: torch.Generator | None = None) -> torch.Tensor:
        """``images`` checked: floating point, [B, C_c, H, W] (H×W = the config's ``size``, if set)."""
        cfg = self.config
        if not isinstance(images, torch.Tensor) or not images.dtype.is_floating_point:
            raise ShapeError(
                f"the concat conditioner takes a floating-point image tensor [B, {cfg.channels}, H, W], "
                f"got {getattr(images, 'dtype', type(images).__name__)}"
            )
        if images.ndim != 4 or images.shape[1] != cfg.channels:
            raise ShapeError(
                f"conditioning images must have shape [B, {cfg.channels}, H, W], got {tuple(images.shape)}"
            )
        if cfg.size is not None and tuple(images.shape[2:]) != cfg.size:
            raise ShapeError(
                f"conditioning images must be {cfg.size[0]}×{cfg.size[1]} (config size), got {tuple(images.shape[2:])}"
            )
        return images

    def batch_size_of(self, inputs: Any) -> int:
        return int(self.prepare(inputs).shape[0])

    def apply_drop(self, batch: torch.Tensor, drop: torch.Tensor) -> Conditioning:
        return Conditioning(concat=batch.masked_fill(drop[:, None, None, None], 0.0))  # ∅ = zeros

    def null(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        *,
        size: int | tuple[int, int] | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Conditioning:
        """Zeros [B, C_c, H, W]; (H, W) is ``size`` or the config's ``size``."""
        size = _size(size) if size is not None else self.config.size
        if size is None:
            raise ConfigError(
                "the concat conditioner's null record needs the image size: set size=(H, W) in its config, "
                "pass null(batch_size, size=(H, W)), or call it on the images with force_drop=True"
            )
        return Conditioning(concat=torch.zeros(batch_size, self.config.channels, *size, device=device, dtype=dtype))


def build_concat(**config: Any) -> ConcatConditioner:
    """Image conditioning concatenated to x along channels (SR3, inpainting); ∅ = zeros."""
    return ConcatConditioner(ConcatConfig.from_dict(config))


build_concat.__signature__ = config_signature(ConcatConfig)  # type: ignore[attr-defined]
