"""The embedded digits: file parsing, scaling, resizing, the stratified split, the Dataset."""

from __future__ import annotations

import csv
import gzip
import io
from collections import Counter
from importlib import resources

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from diffkit.demos.digits import DigitsDataset, load_digits
from diffkit.demos.digits.data import digits_file_sha256, digits_split_indices
from diffkit.errors import ConfigError, UnknownNameError


def _rows_with_csv_module() -> list[list[int]]:
    """The data file read independently of the library (stdlib gzip + csv, no numpy)."""
    raw = resources.files("diffkit.demos.digits").joinpath("digits.csv.gz").read_bytes()
    text = io.StringIO(gzip.decompress(raw).decode("ascii"))
    return [[int(v) for v in row] for row in csv.reader(text) if row]


def test_native_images_match_the_file_pixel_by_pixel():
    rows = _rows_with_csv_module()
    images, labels = load_digits()
    assert images.shape == (1797, 1, 8, 8) and images.dtype == torch.float32
    assert labels.shape == (1797,) and labels.dtype == torch.int64
    expected = torch.tensor([row[:64] for row in rows], dtype=torch.float32).reshape(-1, 1, 8, 8)
    torch.testing.assert_close(images, expected / 16 * 2 - 1, rtol=0, atol=0)
    assert labels.tolist() == [row[64] for row in rows]


def test_scaling_spans_minus_one_to_one_and_every_class_is_present():
    images, labels = load_digits()
    assert images.min() == -1.0 and images.max() == 1.0
    # values lie on the grid pixel/16·2 − 1, i.e. (x + 1)·8 is an integer 0…16
    grid = (images + 1) * 8
    torch.testing.assert_close(grid, grid.round(), rtol=0, atol=1e-5)
    counts = Counter(labels.tolist())
    assert sorted(counts) == list(range(10))
    assert min(counts.values()) >= 170  # the UCI test set is nearly balanced (174…183 per class)


@pytest.mark.parametrize("size", [16, 24, 32])
def test_resized_images_keep_range_and_per_image_mean(size):
    native, labels = load_digits(8)
    images, labels_resized = load_digits(size)
    assert images.shape == (1797, 1, size, size) and images.dtype == torch.float32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert torch.equal(labels, labels_resized)
    # bilinear upsampling by an integer factor (half-pixel centres, clamped edges) gives every
    # input pixel the same total weight, so each image's mean brightness is unchanged
    torch.testing.assert_close(images.mean(dim=(1, 2, 3)), native.mean(dim=(1, 2, 3)), rtol=0, atol=1e-5)
    # the blank corner pixels of the 8×8 digits stay blank
    assert (images[:, :, 0, 0] == -1).float().mean() > 0.99


@pytest.mark.parametrize("size", [0, -8, 7, 12, 8.0, True, "8"])
def test_bad_sizes_are_config_errors(size):
    with pytest.raises(ConfigError, match="multiple of 8"):
        load_digits(size)


def test_each_call_returns_fresh_tensors():
    images, labels = load_digits()
    images.fill_(0.0)
    labels.fill_(3)
    again, labels_again = load_digits()
    assert again.min() == -1.0 and len(set(labels_again.tolist())) == 10


def test_file_hash_is_a_stable_sha256():
    digest = digits_file_sha256()
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert digest == digits_file_sha256()


def test_split_is_a_stratified_partition():
    _, labels = load_digits()
    train = digits_split_indices("train", seed=0)
    test = digits_split_indices("test", seed=0)
    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(1797))
    for c in range(10):
        in_class = int((labels == c).sum())
        assert int((labels[torch.from_numpy(test)] == c).sum()) == round(0.1 * in_class)


def test_split_is_fixed_by_the_seed():
    assert np.array_equal(digits_split_indices("test", 0), digits_split_indices("test", 0))
    assert not np.array_equal(digits_split_indices("test", 0), digits_split_indices("test", 1))
    assert np.array_equal(digits_split_indices("all", 5), np.arange(1797))


def test_dataset_items_and_sizes():
    full = DigitsDataset()
    train = DigitsDataset(split="train", seed=0)
    test = DigitsDataset(split="test", seed=0)
    assert len(full) == 1797 and len(train) + len(test) == 1797
    image, label = test[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32 and isinstance(label, int)
    images, labels = load_digits()
    index = int(digits_split_indices("test", 0)[0])
    assert torch.equal(image, images[index]) and label == int(labels[index])
    big = DigitsDataset(size=32, split="test")
    assert big[0][0].shape == (1, 32, 32) and len(big) == len(test)
    assert "split='test'" in repr(test)


def test_dataset_works_with_a_dataloader():
    loader = DataLoader(DigitsDataset(split="test"), batch_size=64, shuffle=False)
    images, labels = next(iter(loader))
    assert images.shape == (64, 1, 8, 8) and labels.dtype == torch.int64


def test_unknown_split_suggests_the_close_name():
    with pytest.raises(UnknownNameError, match="'test'"):
        DigitsDataset(split="tset")


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_bad_seed_is_a_config_error(seed):
    with pytest.raises(ConfigError, match="seed"):
        DigitsDataset(split="train", seed=seed)
