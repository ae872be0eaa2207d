"""The embedded handwritten-digits data set: 1,797 grey images of 8×8 pixels, classes 0–9.

The file ``digits.csv.gz`` next to this module is the UCI "Optical Recognition of Handwritten
Digits" test set as scikit-learn ships it (attribution and licence: ``DIGITS-LICENSE.txt``).
Each of its rows holds 64 pixel values 0…16 (row-major) and then the class. Being inside the
package, it lets examples, tests and metrics train and evaluate without any download.

* :func:`load_digits` — every image as float32 [1797, 1, S, S] in [−1, 1] and the labels.
* :class:`DigitsDataset` — a torch ``Dataset`` over all images or over a fixed, stratified
  90 % / 10 % train/test split.
* :func:`digits_split_indices` — the indices of that split; :func:`digits_file_sha256` — the
  data file's hash (cache keys of models trained on it).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from diffkit.errors import ConfigError, DiffkitError, check_choice
from diffkit.validators import is_integer

DATA_FILE = "digits.csv.gz"
NATIVE_SIZE = 8  # the images are 8×8
NUM_CLASSES = 10
NUM_IMAGES = 1797
MAX_PIXEL = 16  # pixel values are counts 0…16 (4×4 blocks of a 32×32 bitmap)
SPLITS = ("all", "train", "test")
TEST_FRACTION = 0.1


def _data_bytes() -> bytes:
    return resources.files("diffkit.demos.digits").joinpath(DATA_FILE).read_bytes()


@functools.lru_cache(maxsize=1)
def digits_file_sha256() -> str:
    """The SHA-256 (hex) of the packaged ``digits.csv.gz``: changes whenever the data does."""
    return hashlib.sha256(_data_bytes()).hexdigest()


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """The parsed file: pixels uint8 [1797, 64] in 0…16 and labels int64 [1797] (read-only)."""
    try:
        text = gzip.decompress(_data_bytes())
        table = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError) as exc:
        raise DiffkitError(f"the packaged {DATA_FILE} cannot be read ({exc}); reinstall diffkit") from exc
    pixels, labels = table[:, :-1], table[:, -1]
    expected = (NUM_IMAGES, NATIVE_SIZE * NATIVE_SIZE + 1)
    if (
        table.shape != expected
        or pixels.min() < 0
        or pixels.max() > MAX_PIXEL
        or labels.min() < 0
        or labels.max() >= NUM_CLASSES
    ):
        raise DiffkitError(
            f"the packaged {DATA_FILE} is damaged: expected {expected[0]} rows of {expected[1] - 1} pixels "
            f"in 0..{MAX_PIXEL} and a class in 0..{NUM_CLASSES - 1}, got a table of shape {table.shape}; "
            "reinstall diffkit"
        )
    pixels = np.ascontiguousarray(pixels, dtype=np.uint8)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    pixels.flags.writeable = False
    labels.flags.writeable = False
    return pixels, labels


def _check_size(size: object) -> int:
    if not is_integer(size) or size <= 0 or size % NATIVE_SIZE:
        raise ConfigError(
            f"digits image size must be a positive multiple of {NATIVE_SIZE} (8 is native; e.g. 16, 32), "
            f"got {size!r}"
        )
    return int(size)


def _check_seed(seed: object) -> int:
    if not is_integer(seed) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def load_digits(size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Every digit image and its class.

    Args:
        size: side S of the returned images; 8 is the native resolution, any other positive
            multiple of 8 is a bilinear (antialiased) resize of the 8×8 images.

    Returns:
        images float32 [1797, 1, S, S] in [−1, 1] (x = pixel/16 · 2 − 1: background −1, ink up
        to +1) and labels int64 [1797] in 0…9. Both are new tensors on every call (the parsed
        file itself is cached).
    """
    size = _check_size(size)
    pixels, labels = _raw_digits()
    images = torch.tensor(pixels, dtype=torch.float32).reshape(-1, 1, NATIVE_SIZE, NATIVE_SIZE)
    images = images / MAX_PIXEL * 2 - 1  # 0…16 → [−1, 1]
    if size != NATIVE_SIZE:
        # the bilinear (triangle) kernel has non-negative weights summing to 1, so the result stays
        # in [−1, 1] up to rounding, which the clamp removes
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        images = images.clamp_(-1.0, 1.0)
    return images, torch.tensor(labels, dtype=torch.int64)


@functools.lru_cache(maxsize=8)
def _split(seed: int) -> tuple[np.ndarray, np.ndarray]:
    _, labels = _raw_digits()
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(NUM_CLASSES):  # stratified: 10 % of every class, so the test set is balanced
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(TEST_FRACTION * len(members)))
        test.append(members[:n_test])
        train.append(members[n_test:])
    train_idx, test_idx = np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
    train_idx.flags.writeable = False
    test_idx.flags.writeable = False
    return train_idx, test_idx


def digits_split_indices(split: str = "all", seed: int = 0) -> np.ndarray:
    """Indices (sorted int64) of ``split`` into :func:`load_digits`'s arrays.

    ``"train"`` and ``"test"`` are a stratified 90 % / 10 % partition fixed by ``seed``: each
    class is shuffled with ``numpy.random.default_rng(seed)`` and round(10 %) of it goes to
    the test split. ``"all"`` is every index.
    """
    check_choice("digits split", split, SPLITS)
    seed = _check_seed(seed)
    if split == "all":
        return np.arange(NUM_IMAGES, dtype=np.int64)
    train_idx, test_idx = _split(seed)
    return (train_idx if split == "train" else test_idx).copy()


class DigitsDataset(Dataset):
    """The digits as a torch ``Dataset`` of (image float32 [1, S, S] in [−1, 1], label int).

    Args:
        size: image side S (a multiple of 8; see :func:`load_digits`).
        split: ``"all"`` (1,797 images), ``"train"`` (≈ 90 %) or ``"test"`` (≈ 10 %), a fixed
            stratified split (:func:`digits_split_indices`).
        seed: which split; the same seed always gives the same split.

    The whole split is held in memory (:attr:`images` [N, 1, S, S], :attr:`labels` [N]).
    """

    num_classes = NUM_CLASSES

    def __init__(self, size: int = 8, split: str = "all", seed: int = 0) -> None:
        indices = torch.from_numpy(digits_split_indices(split, seed))
        images, labels = load_digits(size)
        self.size, self.split, self.seed = int(size), split, int(seed)
        self.images: torch.Tensor = images[indices].contiguous()  # [N, 1, S, S]
        self.labels: torch.Tensor = labels[indices].contiguous()  # [N]

    def __len__(self) -> int:
        return self.labels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])

    def __repr__(self) -> str:
        return f"DigitsDataset(size={self.size}, split={self.split!r}, seed={self.seed}, n={len(self)})"
