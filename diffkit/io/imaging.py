"""Pictures out of image batches: grids, PNG files and animated GIFs.

* :func:`make_grid` — a batch [N, C, H, W] with values in [−1, 1] → one uint8 picture
  [H', W', C] laid out in rows, with padding, optionally upscaled (8×8 digits need ×4 to be
  seen at all).
* :func:`save_png`, :func:`save_gif` — write a picture (or a batch, through
  :func:`make_grid`) or a list of frames. Files are written atomically: to a temporary file
  in the target folder, flushed and fsynced, then renamed over the target (``os.replace``),
  so a kill mid-write leaves the old file or the new one, never half a PNG. Parent folders
  are created.

The value mapping is the one every diffkit image uses: x ∈ [−1, 1] ↦ round((x + 1)·127.5),
so −1 → 0 and 1 → 255; values outside [−1, 1] are clamped first (samplers overshoot a
little: ``Pipeline.sample`` returns the model's estimate, not clamped). :func:`make_grid`
shows NaN as mid-grey with a warning, but the writers refuse non-finite images outright
(:class:`~diffkit.errors.NonFiniteError`, nothing written): a file must not pass a diverged
model off as a grey picture.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
from PIL import Image

from diffkit.errors import ConfigError, NonFiniteError, OutputError, ShapeError, check_choice
from diffkit.io.atomic import make_folder, write_atomic
from diffkit.validators import is_integer

ImageBatch = Union[torch.Tensor, np.ndarray]
"""[N, C, H, W] (or one image [C, H, W]), float, values in [−1, 1]."""

_GRID_OPTIONS = ("nrow", "padding", "pad_value", "scale")  # make_grid's keyword options


def make_grid(
    images: ImageBatch,
    nrow: int | None = None,
    padding: int = 1,
    pad_value: float = 1.0,
    scale: int = 1,
) -> np.ndarray:
    """Lay a batch of images out as one uint8 picture [H', W', C].

    Args:
        images: [N, C, H, W] (or one image [C, H, W]) tensor or array with C = 1 or 3,
            values in [−1, 1] (clamped; NaN shows as mid-grey, with a warning).
        nrow: images per row; default ⌈√N⌉, at most N. Rows = ⌈N / nrow⌉; unused cells of
            the last row are filled with ``pad_value``.
        padding: pixels between images and around the border.
        pad_value: colour of the padding on the same [−1, 1] scale (1 = white, −1 = black).
        scale: integer nearest-neighbour upscaling of the whole picture, padding included.

    Returns:
        uint8 array of shape [scale·(rows·(H + p) + p), scale·(nrow·(W + p) + p), C] with
        p = ``padding``; image i sits at row ⌊i / nrow⌋, column i mod nrow.
    """
    batch = _as_float_batch(images)
    n, c, h, w = batch.shape
    if nrow is None:
        nrow = math.ceil(math.sqrt(n))
    _check_int("nrow", nrow, minimum=1)
    _check_int("padding", padding, minimum=0)
    _check_int("scale", scale, minimum=1)
    if not (isinstance(pad_value, (int, float)) and -1.0 <= float(pad_value) <= 1.0):
        raise ConfigError(f"make_grid: pad_value must be a number in [-1, 1] (1 = white), got {pad_value!r}")
    nrow = min(nrow, n)
    rows = math.ceil(n / nrow)

    pixels = _to_uint8(batch)  # [N, C, H, W] uint8
    fill = _to_uint8(np.array(float(pad_value), dtype=np.float32))
    grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c), fill, dtype=np.uint8)
    for i in range(n):
        top = padding + (i // nrow) * (h + padding)
        left = padding + (i % nrow) * (w + padding)
        grid[top : top + h, left : left + w, :] = pixels[i].transpose(1, 2, 0)  # [C, H, W] → [H, W, C]
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    return grid


def save_png(path: str | os.PathLike[str], array_or_images: np.ndarray | ImageBatch, **grid_kwargs: Any) -> Path:
    """Write a picture or a batch of images as a PNG file, atomically; returns the path.

    Args:
        path: target file; must end in ``.png``. Missing parent folders are created.
        array_or_images: a uint8 numpy picture [H, W] or [H, W, C] (C = 1, 3 or 4), written
            as is; or a float batch [N, C, H, W] / image [C, H, W] in [−1, 1] (tensor or
            array), laid out with :func:`make_grid`.
        **grid_kwargs: ``nrow``, ``padding``, ``pad_value``, ``scale`` for :func:`make_grid`.
    """
    target = _target(path, ".png", "save_png")
    picture = _as_picture(array_or_images, grid_kwargs, "save_png")
    image = _pil(picture)
    _write(target, lambda tmp: image.save(tmp, format="PNG"))
    return target


def save_gif(
    path: str | os.PathLike[str],
    frames: Sequence[np.ndarray | ImageBatch],
    duration_ms: int | Sequence[int] = 100,
    loop: int | None = 0,
    **grid_kwargs: Any,
) -> Path:
    """Write frames as an animated GIF, atomically; returns the path.

    Args:
        path: target file; must end in ``.gif``. Missing parent folders are created.
        frames: a non-empty list of uint8 pictures [H, W] / [H, W, C] (C = 1 or 3) or of
            float image batches in [−1, 1] (each laid out with :func:`make_grid`). All frames
            must come out the same size.
        duration_ms: display time of each frame in milliseconds, one number or one per frame.
            GIF stores centiseconds, so times are rounded to 10 ms by viewers.
        loop: 0 = loop forever, k = play k + 1 times (Netscape extension), None = play once.
        **grid_kwargs: ``nrow``, ``padding``, ``pad_value``, ``scale`` for :func:`make_grid`.

    Colour frames are quantized to a 256-colour palette per frame (GIF's limit). Pillow
    merges identical consecutive frames into one, summing their durations.
    """
    target = _target(path, ".gif", "save_gif")
    if isinstance(frames, (torch.Tensor, np.ndarray)) or len(frames) == 0:
        raise ConfigError("save_gif: frames must be a non-empty list of pictures or image batches")
    pictures = [_as_picture(frame, grid_kwargs, "save_gif") for frame in frames]
    first = pictures[0].shape
    for i, picture in enumerate(pictures):
        if picture.shape != first:
            raise ShapeError(f"save_gif: frame {i} has shape {picture.shape}, frame 0 has {first}; all must match")
        if picture.shape[-1] == 4:
            raise ConfigError(f"save_gif: frame {i} has an alpha channel; GIF frames must be grey or RGB")
    if isinstance(duration_ms, (int, float)):
        durations = [int(duration_ms)] * len(pictures)
    else:
        durations = [int(d) for d in duration_ms]
        if len(durations) != len(pictures):
            raise ConfigError(f"save_gif: {len(durations)} durations given for {len(pictures)} frames")
    if any(d <= 0 for d in durations):
        raise ConfigError(f"save_gif: durations must be positive milliseconds, got {durations}")
    if loop is not None:
        _check_int("loop", loop, minimum=0)

    images = [_pil(p) for p in pictures]
    options: dict[str, Any] = {"save_all": True, "append_images": images[1:], "duration": durations}
    if loop is not None:
        options["loop"] = loop
    _write(target, lambda tmp: images[0].save(tmp, format="GIF", **options))
    return target


def read_picture(path: str | os.PathLike[str]) -> np.ndarray:
    """A PNG (or any image Pillow reads) as uint8 [H, W, C], C = 1 (grey) or 3 (RGB)."""
    with Image.open(path) as image:
        grey = image.mode in ("1", "L", "I;16", "I")
        array = np.asarray(image.convert("L" if grey else "RGB"))
    return array[:, :, None] if array.ndim == 2 else array


# -- helpers ----------------------------------------------------------------------------------


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if not is_integer(value) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _as_float_batch(images: ImageBatch) -> np.ndarray:
    """A float32 numpy batch [N, C, H, W] (C = 1 or 3) from a tensor or array."""
    if isinstance(images, torch.Tensor):
        array = images.detach().to(device="cpu", dtype=torch.float32).numpy()
    elif isinstance(images, np.ndarray):
        array = images.astype(np.float32, copy=False)
    else:
        raise ConfigError(f"images must be a torch.Tensor or numpy array [N, C, H, W], got {type(images).__name__}")
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[1] not in (1, 3) or 0 in array.shape:
        raise ShapeError(
            f"images must have shape [N, C, H, W] (or [C, H, W]) with C = 1 or 3 and no empty axis, "
            f"got {tuple(array.shape)}"
        )
    return array


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """[−1, 1] ↦ {0 … 255}: round((clamp(x, −1, 1) + 1)·127.5); NaN ↦ 128 (mid-grey)."""
    nan = np.isnan(values)
    if nan.any():
        warnings.warn(f"{int(nan.sum())} NaN value(s) in the images are shown as mid-grey", stacklevel=3)
        values = np.where(nan, np.float32(0.0), values)
    clamped = np.clip(values, -1.0, 1.0)  # ±inf clamp to ±1
    return np.rint((clamped + 1.0) * 127.5).astype(np.uint8)


def _as_picture(value: Any, grid_kwargs: dict[str, Any], caller: str) -> np.ndarray:
    """A uint8 [H, W, C] picture: uint8 numpy arrays as they are, anything else through make_grid."""
    for key in grid_kwargs:
        check_choice(f"{caller} grid option", key, _GRID_OPTIONS)
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:
        if grid_kwargs:
            raise ConfigError(
                f"{caller}: grid options {sorted(grid_kwargs)} apply to float image batches, "
                f"not to a uint8 picture"
            )
        picture = value[:, :, None] if value.ndim == 2 else value
        if picture.ndim != 3 or picture.shape[-1] not in (1, 3, 4) or 0 in picture.shape:
            raise ShapeError(
                f"{caller}: a uint8 picture must be [H, W] or [H, W, C] with C = 1, 3 or 4, got {value.shape}"
            )
        return picture
    if isinstance(value, torch.Tensor) and not (value.is_floating_point()):
        raise ConfigError(
            f"{caller}: image tensors must be floating point with values in [-1, 1], got dtype {value.dtype}; "
            f"pass a uint8 picture as a numpy array [H, W, C]"
        )
    batch = _as_float_batch(value)  # checks the type and the shape first
    _require_finite(value, batch.shape, caller)
    return make_grid(batch, **grid_kwargs)


def _require_finite(value: ImageBatch, shape: tuple[int, ...], caller: str) -> None:
    """A file must show what the model made: NaN or ±inf is an error here, not a grey or white pixel.

    Counted on the caller's own values (a huge float64 is finite even where float32 is not).
    """
    finite = torch.isfinite(value) if isinstance(value, torch.Tensor) else np.isfinite(value)
    bad = int((~finite).sum())
    if bad:
        raise NonFiniteError(
            f"{caller}: {bad} of {finite.numel() if isinstance(finite, torch.Tensor) else finite.size} values "
            f"of the images {list(shape)} are NaN or ±inf (the model or sampler diverged); no file was written"
        )


def _pil(picture: np.ndarray) -> Image.Image:
    """uint8 [H, W, C] → a Pillow image; Pillow infers mode L, RGB or RGBA from the shape."""
    data = picture[:, :, 0] if picture.shape[-1] == 1 else picture
    return Image.fromarray(np.ascontiguousarray(data))


def check_output(path: str | os.PathLike[str], suffix: str = ".png", caller: str = "--out") -> Path:
    """The picture file ``path`` as a :class:`~pathlib.Path`, checked before any work is spent.

    It must end in ``suffix``, not name a folder, and its folder must exist or be creatable
    and be writable (missing folders are created here); otherwise a named error:
    :class:`ConfigError` for the name, :class:`~diffkit.errors.OutputError` for the file system.
    """
    target = _target(path, suffix, caller)
    if target.is_dir():
        raise ConfigError(f"{caller} {str(target)!r} is a folder; pass a file name ending in {suffix!r}")
    make_folder(target.parent)
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {target}: its folder {target.parent} is not writable")
    return target


def _target(path: str | os.PathLike[str], suffix: str, caller: str) -> Path:
    target = Path(path)
    if target.suffix.lower() != suffix:
        raise ConfigError(f"{caller} writes {suffix} files; the path {str(target)!r} must end in {suffix!r}")
    return target


def _write(target: Path, write: Any) -> None:
    """Create the parent folders, then write through a fsynced temporary file and os.replace."""
    make_folder(target.parent)
    write_atomic([(target, write)])
