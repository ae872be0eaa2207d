"""Which sample sizes a backbone takes besides the one it was built for.

A pipeline samples at its ``sample_shape`` (C, H, W) unless ``Pipeline.sample(height=, width=)``
asks for another image size. A backbone that can run at other sizes says so with a method
``size_rule() -> SizeRule``: a convolutional UNet needs H and W divisible by 2^(levels − 1) (each
downsampling halves them), a patch transformer by its patch size, and one with a bounded
position table (SD3's ``pos_embed_max_size``) also caps the side. A backbone without the method
(diffkit's DiT, whose sin-cos position embedding is built for one grid, as diffusers' DiT
pipeline is) samples only at its built size.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from diffkit.errors import ConfigError
from diffkit.validators import check_int, int_at_least, optional

MAX_SIDE = 2**16  # the largest side of a sample in the backbone's space (as Pipeline's sample_shape)


@attrs.frozen
class SizeRule:
    """The sample sides (H, W, in the backbone's own space: latent pixels for a latent model) a backbone takes.

    Args:
        multiple: H and W must be multiples of this (≥ 1).
        max_side: the largest H or W (None: no limit besides memory).
    """

    multiple: int = attrs.field(validator=int_at_least(1))
    max_side: int | None = attrs.field(default=None, validator=optional(int_at_least(1)))

    def admits(self, height: int, width: int) -> bool:
        """Whether the backbone runs on an H×W sample."""
        fits = height % self.multiple == 0 and width % self.multiple == 0
        return fits and (self.max_side is None or max(height, width) <= self.max_side)

    def describe(self, scale: int = 1) -> str:
        """The rule in words, in units ``scale`` times the backbone's (image pixels for a latent model)."""
        text = f"multiples of {self.multiple * scale}"
        if self.max_side is not None:
            text += f" up to {self.max_side * scale}"
        return text


def pixel_factor(autoencoder: Any) -> int | None:
    """Image pixels per sample pixel a side: 1 without an autoencoder, else its ``downsampling_factor`` (None: unknown)."""
    return 1 if autoencoder is None else getattr(autoencoder, "downsampling_factor", None)


def sample_shape_at(
    sample_shape: tuple[int, ...], backbone: Any, autoencoder: Any, height: Any, width: Any
) -> tuple[int, ...]:
    """(C, h, w) of a sample whose image is ``height`` × ``width`` pixels, checked before any work.

    ``sample_shape`` is the pipeline's own (C, H, W), in the backbone's space; an autoencoder
    with a ``downsampling_factor`` f maps it to images f·H × f·W (no autoencoder: f = 1). A side
    left None keeps the pipeline's. Another size needs the backbone's :meth:`size_rule`.
    """
    if height is None and width is None:
        return tuple(sample_shape)
    if len(sample_shape) != 3:
        raise ConfigError(f"height= and width= size images (C, H, W); this pipeline's samples have shape {sample_shape}")
    channels, own_h, own_w = sample_shape
    factor = pixel_factor(autoencoder)
    scale = factor or 1
    own = f"{own_h * scale}×{own_w * scale}"
    limit = MAX_SIDE * scale
    height = own_h * scale if height is None else check_int("height (pixels)", height, minimum=1, maximum=limit)
    width = own_w * scale if width is None else check_int("width (pixels)", width, minimum=1, maximum=limit)
    if (height, width) == (own_h * scale, own_w * scale):
        return tuple(sample_shape)
    size_rule = getattr(backbone, "size_rule", None)
    rule = size_rule() if callable(size_rule) else None
    if rule is None or factor is None:
        part = f"its {type(backbone).__name__} backbone" if rule is None else f"its {type(autoencoder).__name__}"
        raise ConfigError(
            f"this pipeline samples only at {own} pixels: {part} takes only the size it was built for "
            f"(asked for {height}×{width})"
        )
    if height % scale or width % scale or not rule.admits(height // scale, width // scale):
        through = f" (latents {rule.describe()}, through the autoencoder's ×{scale})" if scale > 1 else ""
        raise ConfigError(
            f"height and width must be {rule.describe(scale)} pixels for this pipeline's {type(backbone).__name__}"
            f"{through}; got {height}×{width} (its own size: {own})"
        )
    return channels, height // scale, width // scale


def spacing_options_at(options: Mapping[str, Any], own: tuple[int, ...], shape: tuple[int, ...]) -> dict[str, Any]:
    """A pipeline's own grid options for samples of ``shape`` instead of ``own`` (both (C, H, W)).

    Flux's dynamic shift places the grid by the image's token count (``image_seq_len``), which
    is proportional to the area: it is scaled by (h·w)/(H·W), as diffusers' pipelines compute it
    from ``height`` and ``width``. Every other option stays.
    """
    options = dict(options)
    if "image_seq_len" in options and tuple(shape) != tuple(own):
        area, own_area = shape[1] * shape[2], own[1] * own[2]
        options["image_seq_len"] = int(options["image_seq_len"]) * area // own_area
    return options
