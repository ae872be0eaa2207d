"""A folder of image files as a torch Dataset of float32 [C, size, size] images in [−1, 1].

Each read: open with Pillow → apply the EXIF orientation → composite any transparency over
white → convert to RGB (``channels=3``) or luma L = 0.299 R + 0.587 G + 0.114 B
(``channels=1``) → resize with Lanczos (antialiased: the filter widens with the
downscaling factor) so that the short side becomes ``size`` and crop the centre square
(``center_crop=True``; done in one resampling pass over the centred square of the source) or
squash the whole picture to size × size (``center_crop=False``) → optional random
horizontal flip → x = pixel / 127.5 − 1. Animated files (GIF, WebP) give their first frame.

Random flips draw from torch's *global* RNG unless a ``generator`` is given. That is the
choice that works with ``DataLoader(num_workers > 0)``: the DataLoader seeds each worker's
global RNG with a fresh ``base_seed + worker_id`` every epoch (``base_seed`` from the
DataLoader's ``generator`` or the main process's RNG), so workers flip independently and
epochs differ, and ``torch.manual_seed`` makes a run repeatable. A per-dataset generator
would be *copied* into every worker, so all workers would repeat one flip sequence, and
every epoch would replay it; pass ``generator`` only for single-process loading (tests,
notebooks).

Broken files never crash a run. The index is built with ``Image.open`` + ``verify()`` on
every candidate file (``verify=True``); a file that fails is reported with
:class:`ImageSkippedWarning` naming its path and reason, recorded in ``skipped`` and left
out. Some damage only shows when the pixels are decoded (``verify`` does not decode; e.g. a
truncated JPEG): such a file is warned about and recorded when read, and the next readable
image in index order is returned instead (that file is not retried by this process). In
DataLoader workers, read-time entries land in the worker's copy of ``skipped``.

Captions (``captions="txt"``): each image's caption is the sidecar text file beside it with the
same stem and that extension — ``img001.png`` + ``img001.txt``, the convention of kohya's and
diffusers' training scripts — and items become (image, caption). Every caption is read when the
index is built: the whole file as UTF-8 (a byte-order mark is dropped), stripped of leading and
trailing white space; nothing else is changed. A missing, empty (or white-space only),
non-UTF-8, binary (NUL bytes) or oversized (over 1 MiB) caption file is an error that names
every such image (the first ten and a count) when the folder is indexed — never a silent empty
caption, which would train the image as unconditional (classifier-free guidance training drops
captions by itself, with the conditioner's ``drop_prob``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from diffkit.errors import ConfigError, DiffkitError
from diffkit.validators import is_integer

DEFAULT_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
MAX_CAPTION_BYTES = 1 << 20
"""A caption file larger than this (1 MiB) is refused: it is not a caption."""
_LISTED = 10  # problems named in an error message


class ImageSkippedWarning(UserWarning):
    """An image file that could not be read; the message names its path and the reason."""


class ImageFolder(Dataset):
    """Images under ``root`` as float32 tensors [C, size, size] with values in [−1, 1].

    Args:
        root: the folder. Files are listed in sorted path order; names starting with "." (files
            and folders) are ignored.
        size: output height and width in pixels.
        center_crop: resize the short side to ``size`` and keep the centre square (True), or
            resize the whole image to size × size, changing its aspect ratio (False).
        flip: mirror left↔right with probability 1/2 on every read.
        channels: 3 for RGB, 1 for grayscale (luma).
        extensions: file name endings to read (case-insensitive; "png" and ".png" both work).
        recursive: also look in sub-folders (below the class folders when ``labels=True``).
        labels: class labels from the first-level sub-folder names; items become
            (image, label) with ``classes[label]`` the folder name. ``classes`` is the sorted
            list of sub-folders holding at least one file with a listed extension.
        captions: the extension of the sidecar caption files (``"txt"`` or ``".txt"``): items
            become (image, caption) with the caption read from the file with the image's stem
            and this extension (module docstring); None (default): no captions. Not with
            ``labels=True``.
        verify: open and verify every file while building the index (one pass over the
            files' bytes, no decoding); False defers every check to reading (the captions are
            read either way).
        generator: source of flip randomness for single-process use; None (default) uses
            torch's global RNG, which DataLoader workers seed per worker and epoch.

    Attributes:
        paths: the indexed image files, in index order.
        targets: the label of each path (``labels=True``), else None.
        captions: the caption of each path (``captions=...``), else None.
        classes, class_to_idx: class names in label order and their inverse (empty without labels).
        skipped: (path, reason) of every file left out, at indexing or on read.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        size: int,
        *,
        center_crop: bool = True,
        flip: bool = False,
        channels: int = 3,
        extensions: Iterable[str] = DEFAULT_EXTENSIONS,
        recursive: bool = True,
        labels: bool = False,
        captions: str | None = None,
        verify: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        self.root = Path(root)
        where = f"ImageFolder({str(self.root)!r})"
        if not is_integer(size) or size < 1:
            raise ConfigError(f"{where}: size must be a positive integer (pixels), got {size!r}")
        if channels not in (1, 3) or isinstance(channels, bool):
            raise ConfigError(f"{where}: channels must be 1 (grayscale) or 3 (RGB), got {channels!r}")
        if isinstance(extensions, str):
            extensions = (extensions,)
        exts = tuple(dict.fromkeys(("" if e.startswith(".") else ".") + e.lower() for e in extensions))
        if not exts or "." in exts:
            raise ConfigError(f"{where}: extensions must be non-empty file endings like '.png', got {extensions!r}")
        caption_extension = None if captions is None else _caption_extension(captions, exts, where)
        if caption_extension is not None and labels:
            raise ConfigError(
                f"{where}: labels=True (class labels from sub-folders) and captions={captions!r} (text from caption "
                "files) give two conditions per image; pass one of them"
            )
        if not self.root.exists():
            raise ConfigError(f"{where}: the folder {str(self.root)!r} does not exist")
        if not self.root.is_dir():
            raise ConfigError(f"{where}: {str(self.root)!r} is a file, not a folder")

        self.size = int(size)
        self.center_crop = center_crop
        self.flip = flip
        self.channels = channels
        self.extensions = exts
        self.generator = generator
        self.skipped: list[tuple[Path, str]] = []
        self.paths: list[Path] = []
        self.targets: list[int] | None = None
        self.captions: list[str] | None = None
        self.caption_extension = caption_extension
        self._unreadable: set[int] = set()  # indices that failed on read in this process

        candidates, self.classes = self._scan(recursive, labels, where)
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}
        if not candidates:
            raise ConfigError(
                f"{where}: no image files found in {str(self.root)!r}"
                f"{' or its sub-folders' if recursive else ''} (looked for {', '.join(exts)})"
            )
        kept = [(path, label) for path, label in candidates if not verify or self._verifies(path)]
        if not kept:
            raise ConfigError(
                f"{where}: none of the {len(candidates)} image file(s) in {str(self.root)!r} could be read "
                f"(see `skipped`; first: {self.skipped[0][0]}: {self.skipped[0][1]})"
            )
        self.paths = [path for path, _ in kept]
        self.targets = [label for _, label in kept] if labels else None
        if caption_extension is not None:
            self.captions = read_captions(self.paths, caption_extension, where=where)

    # -- indexing ----------------------------------------------------------------------------

    def _scan(self, recursive: bool, labels: bool, where: str) -> tuple[list[tuple[Path, int]], list[str]]:
        """Candidate files (by extension) with their labels (−1 without labels), and the classes."""
        if not labels:
            return [(p, -1) for p in self._list(self.root, recursive)], []
        loose = self._list(self.root, recursive=False)
        if loose:
            raise ConfigError(
                f"{where}: labels=True reads classes from sub-folders, but {len(loose)} image(s) lie directly "
                f"in the root (e.g. {str(loose[0])!r}); move them into a class folder or use labels=False"
            )
        found: list[tuple[str, list[Path]]] = []
        for entry in sorted(self.root.iterdir()):
            if entry.is_dir() and not entry.name.startswith("."):
                files = self._list(entry, recursive)
                if files:
                    found.append((entry.name, files))
        classes = [name for name, _ in found]  # sorted, since iterdir() was sorted
        return [(p, label) for label, (_, files) in enumerate(found) for p in files], classes

    def _list(self, folder: Path, recursive: bool) -> list[Path]:
        """Sorted non-hidden files under ``folder`` whose names end in one of the extensions."""
        out: list[Path] = []
        for current, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
            base = Path(current)
            out.extend(base / f for f in files if not f.startswith(".") and f.lower().endswith(self.extensions))
        return sorted(out)

    def _verifies(self, path: Path) -> bool:
        try:
            with Image.open(path) as image:
                image.verify()  # checks the container (chunks, CRCs) without decoding pixels
        except Exception as error:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, struct.error, …
            self._skip(path, error)
            return False
        return True

    def _skip(self, path: Path, error: BaseException) -> None:
        reason = f"{type(error).__name__}: {error}"
        self.skipped.append((path, reason))
        warnings.warn(f"skipping unreadable image {str(path)!r}: {reason}", ImageSkippedWarning, stacklevel=3)

    # -- reading -----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, int]:
        n = len(self.paths)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for an ImageFolder of {n} images")
        index %= n
        for offset in range(n):  # this file, else the next readable one
            i = (index + offset) % n
            if i in self._unreadable:
                continue
            try:
                image = self.load(self.paths[i])
            except Exception as error:  # noqa: BLE001 - any decoding failure skips the file
                self._unreadable.add(i)
                self._skip(self.paths[i], error)
                continue
            if self.flip and torch.rand((), generator=self.generator).item() < 0.5:
                image = image.flip(-1)  # [C, H, W]: mirror the W axis
            if self.captions is not None:
                return image, self.captions[i]
            return image if self.targets is None else (image, self.targets[i])
        raise DiffkitError(f"ImageFolder({str(self.root)!r}): none of its {n} images could be read (see `skipped`)")

    def load(self, path: str | os.PathLike[str]) -> torch.Tensor:
        """One file → float32 [C, size, size] in [−1, 1], without the random flip."""
        image = open_upright(path, self.channels)
        width, height = image.size
        if self.center_crop:
            side = min(width, height)  # the centred square of the source (sub-pixel box allowed)
            box = ((width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2)
        else:
            box = (0.0, 0.0, float(width), float(height))
        # Lanczos over the box; reducing_gap=3 first shrinks by an integer factor when the image
        # is ≥ 3× larger than needed (fast, and indistinguishable at that gap).
        image = image.resize((self.size, self.size), Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)
        return as_tensor(image)

    def __repr__(self) -> str:
        extra = f", classes={len(self.classes)}" if self.targets is not None else ""
        extra += f", captions={self.caption_extension!r}" if self.captions is not None else ""
        return (
            f"ImageFolder({str(self.root)!r}, size={self.size}, images={len(self)}{extra}, "
            f"channels={self.channels}, center_crop={self.center_crop}, flip={self.flip}, skipped={len(self.skipped)})"
        )


# -- captions ----------------------------------------------------------------------------------


def open_upright(path: str | os.PathLike[str], channels: int = 3) -> Image.Image:
    """A picture file as a decoded RGB (``channels=3``) or L (``channels=1``) Pillow image at its own size.

    The EXIF orientation is applied and any transparency is composited over white (the module
    docstring's first steps); Pillow's errors (a missing or unreadable file, not a picture) pass.
    """
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)  # a decoded copy, turned upright
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", image.size, (255, 255, 255, 255)), image)
    return image.convert("RGB" if channels == 3 else "L")


def as_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB or L Pillow image as float32 [C, H, W] in [−1, 1]: x = pixel / 127.5 − 1."""
    pixels = np.asarray(image, dtype=np.float32)  # [H, W] or [H, W, 3], 0 … 255
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))) / 127.5 - 1.0


def _caption_extension(captions: object, image_extensions: tuple[str, ...], where: str) -> str:
    """``"txt"`` or ``".txt"`` → ``".txt"``; not a path, not an image extension."""
    if not isinstance(captions, str) or not captions.strip(".") or any(c in captions for c in "/\\\0") or (
        captions.strip() != captions
    ):
        raise ConfigError(
            f"{where}: captions must be the extension of the caption files, e.g. 'txt' (img001.png + img001.txt), "
            f"got {captions!r}"
        )
    extension = captions if captions.startswith(".") else "." + captions
    if extension.lower() in image_extensions:
        raise ConfigError(
            f"{where}: captions={captions!r} is one of the image extensions ({', '.join(image_extensions)}); "
            "caption files need another one, e.g. 'txt'"
        )
    return extension


def caption_path(image: str | os.PathLike[str], extension: str = ".txt") -> Path:
    """The sidecar caption file of ``image``: same folder and stem, ``extension`` (``a/img001.png`` → ``a/img001.txt``)."""
    image = Path(image)
    return image.with_name(image.stem + extension)


def read_caption(path: str | os.PathLike[str]) -> str:
    """The caption in the text file ``path``: UTF-8 (a BOM dropped), stripped of surrounding white space.

    Raises :class:`~diffkit.errors.ConfigError` naming the file and what is wrong with it: missing,
    not a file, unreadable, over :data:`MAX_CAPTION_BYTES`, binary (NUL bytes), not UTF-8, or empty.
    """
    path = Path(path)
    text, problem = _caption_text(path)
    if text is None:
        raise ConfigError(f"the caption file {str(path)!r} {problem}")
    return text


def _caption_text(path: Path) -> tuple[str | None, str]:
    """(the stripped text, "") or (None, what is wrong with the file, as a predicate: "is empty")."""
    if not path.exists():
        return None, "is missing"
    if not path.is_file():
        return None, "is not a file"
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_CAPTION_BYTES + 1)
    except OSError as error:
        return None, f"cannot be read ({error.strerror or error})"
    if len(data) > MAX_CAPTION_BYTES:
        return None, f"is larger than {MAX_CAPTION_BYTES >> 20} MiB: not a caption"
    if b"\0" in data:
        return None, "holds NUL bytes: a binary file, not a caption"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        return None, f"is not UTF-8 text (byte 0x{data[error.start]:02x} at offset {error.start})"
    text = text.strip()
    if not text:
        return None, "is empty"
    return text, ""


def read_captions(images: Iterable[str | os.PathLike[str]], extension: str = ".txt", *, where: str = "") -> list[str]:
    """The caption of each image, from its sidecar file (:func:`caption_path`), in order.

    Every image is checked; one :class:`~diffkit.errors.ConfigError` names the images without a
    usable caption file (the first ten, and how many there are), and why each is unusable.
    """
    captions: list[str] = []
    problems: list[str] = []
    paths = [Path(image) for image in images]
    for image in paths:
        sidecar = caption_path(image, extension)
        text, problem = _caption_text(sidecar)
        if text is None:
            problems.append(f"{str(image)!r}: {sidecar.name} {problem}")
        else:
            captions.append(text)
    if problems:
        listed = "; ".join(problems[:_LISTED]) + (f"; and {len(problems) - _LISTED} more" if len(problems) > _LISTED else "")
        prefix = f"{where}: " if where else ""
        raise ConfigError(
            f"{prefix}{len(problems)} of {len(paths)} image(s) have no usable caption file ({listed}). Each image "
            f"needs a UTF-8 text file with its name and the extension {extension} beside it (img001.png + "
            f"img001{extension}) holding its caption"
        )
    return captions
