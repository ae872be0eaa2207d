"""Image-to-image: sampling that starts from a given image noised part of the way (SDEdit).

SDEdit (Meng et al. 2022) noises a clean sample x0 to a level σ_s below σ_max and runs the
sampler from there: y_s = x0 + σ_s·z in the σ form, which is exactly what diffusers' img2img
pipelines make with ``scheduler.add_noise`` (VP: x_t = √ᾱ·x0 + √(1 − ᾱ)·z = y_s/√(1 + σ_s²)) or
``scale_noise`` (flow: x_t = (1 − t)·x0 + t·z = y_s/(1 + σ_s)). ``strength`` s ∈ (0, 1] says
how far: of an N-step grid σ_0 > … > σ_N = 0 the last ⌊N·s⌋ steps run, from σ_{N − ⌊N·s⌋}
(diffusers' ``get_timesteps``; s = 1 starts from σ_max, from x0 + σ_max·z rather than noise
alone). A multistep sampler starts its history afresh on that tail, as diffusers' schedulers do
after ``set_begin_index``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from diffkit.errors import ConfigError, ShapeError
from diffkit.validators import check_real

DEFAULT_STRENGTH = 0.8  # diffusers' img2img default


def check_strength(strength: Any) -> float:
    """s ∈ (0, 1], the share of the grid's steps an img2img run takes (None: :data:`DEFAULT_STRENGTH`)."""
    if strength is None:
        return DEFAULT_STRENGTH
    return check_real("strength", strength, low=0.0, high=1.0, low_open=True)


def steps_run(steps: int, strength: float) -> int:
    """⌊N·s⌋, the steps an img2img run takes of an N-step grid; at least one, or a clear error."""
    kept = min(int(steps * strength), steps)  # diffusers' init_timestep
    if kept < 1:
        need = math.ceil(1 / strength)
        raise ConfigError(
            f"strength={strength:g} of {steps} steps runs no step (⌊steps·strength⌋ = 0): use steps ≥ {need} or a "
            f"strength ≥ {1 / steps:g}"
        )
    return kept


def check_image(image: Any, n: int, channels: int | None) -> torch.Tensor:
    """The img2img start images as a float tensor [n, C, H, W] in about [−1, 1], checked before any work.

    ``image`` is [n, C, H, W], or one image [C, H, W] for all n samples; ``channels`` is the C
    the pipeline's autoencoder (or a pixel backbone) takes (None: not checked).
    """
    if not isinstance(image, torch.Tensor):
        raise ConfigError(f"image must be a tensor [n, C, H, W] (or [C, H, W]) in [−1, 1], got {type(image).__name__}")
    if not image.dtype.is_floating_point:
        raise ConfigError(f"image must be a floating-point tensor in [−1, 1], got dtype {image.dtype}")
    if image.ndim == 3:
        image = image.unsqueeze(0).expand(n, -1, -1, -1)
    if image.ndim != 4 or image.shape[0] != n:
        raise ShapeError(f"image must be [n={n}, C, H, W] or one image [C, H, W], got shape {list(image.shape)}")
    if channels is not None and image.shape[1] != channels:
        raise ShapeError(f"image has {image.shape[1]} channel(s); this pipeline's images have {channels}")
    if not bool(torch.isfinite(image).all()):
        raise ConfigError("image holds NaN or ±inf; pass finite images in [−1, 1]")
    return image
