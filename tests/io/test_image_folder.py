"""ImageFolder on generated folders of small PNG/JPEG files: shapes and value range, centre
crop versus squash, flips, grayscale, transparency, EXIF orientation, class labels, and the
failure cases (corrupt and truncated files skipped with a warning, empty / missing folders,
bad arguments)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from diffkit.errors import ConfigError
from diffkit.io.image_folder import ImageFolder, ImageSkippedWarning

STEP = 2 / 255  # one 8-bit level on the [−1, 1] scale
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def write(path: Path, pixels: np.ndarray, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **save)
    return path


def solid(h: int, w: int, colour) -> np.ndarray:
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (h, w, len(colour))).copy()


def stripes(h: int, w: int, colours) -> np.ndarray:
    """Vertical bands of equal width, left to right."""
    bands = np.array_split(np.arange(w), len(colours))
    out = np.zeros((h, w, 3), dtype=np.uint8)
    for band, colour in zip(bands, colours):
        out[:, band] = colour
    return out


@pytest.fixture
def mixed(tmp_path) -> Path:
    """PNGs and JPEGs of different sizes, one in a sub-folder, plus files to be ignored."""
    rng = np.random.default_rng(0)
    write(tmp_path / "a.png", rng.integers(0, 256, (20, 40, 3), dtype=np.uint8))
    write(tmp_path / "b.JPG", rng.integers(0, 256, (33, 17, 3), dtype=np.uint8), quality=90)
    write(tmp_path / "sub" / "c.png", rng.integers(0, 256, (25, 25), dtype=np.uint8))  # grayscale file
    write(tmp_path / "sub" / "d.jpeg", rng.integers(0, 256, (9, 64, 3), dtype=np.uint8))
    (tmp_path / "notes.txt").write_text("not an image")
    write(tmp_path / ".hidden.png", solid(4, 4, RED))
    write(tmp_path / ".cache" / "e.png", solid(4, 4, RED))
    return tmp_path


# -- shapes, ranges, geometry -----------------------------------------------------------------


@pytest.mark.parametrize("center_crop", [True, False])
def test_every_image_comes_out_float32_c_size_size_in_range(mixed, center_crop):
    ds = ImageFolder(mixed, 12, center_crop=center_crop)
    assert [p.relative_to(mixed).as_posix() for p in ds.paths] == ["a.png", "b.JPG", "sub/c.png", "sub/d.jpeg"]
    assert ds.targets is None and ds.classes == [] and ds.skipped == []
    for i in range(len(ds)):
        x = ds[i]
        assert x.dtype == torch.float32 and x.shape == (3, 12, 12)
        assert x.min() >= -1 and x.max() <= 1


def test_non_recursive_reads_only_the_root(mixed):
    ds = ImageFolder(mixed, 8, recursive=False)
    assert [p.name for p in ds.paths] == ["a.png", "b.JPG"]


def test_extensions_filter_and_normalization(mixed):
    ds = ImageFolder(mixed, 8, extensions=["PNG"])
    assert [p.name for p in ds.paths] == ["a.png", "c.png"]


def test_black_and_white_map_to_minus_one_and_one(tmp_path):
    write(tmp_path / "black.png", solid(10, 30, (0, 0, 0)))
    write(tmp_path / "white.png", solid(30, 10, (255, 255, 255)))
    ds = ImageFolder(tmp_path, 7)
    assert (ds[0] == -1).all() and (ds[1] == 1).all()


def test_same_size_image_is_read_exactly(tmp_path):
    pixels = np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    write(tmp_path / "x.png", pixels)
    x = ImageFolder(tmp_path, 16)[0]
    expected = torch.from_numpy(pixels).permute(2, 0, 1).float() / 127.5 - 1
    assert (x - expected).abs().max() <= 1e-6


def test_center_crop_keeps_the_middle_and_plain_resize_keeps_everything(tmp_path):
    # 60 wide × 20 high: red | green | blue thirds; the centred 20 × 20 square is all green
    write(tmp_path / "x.png", stripes(20, 60, [RED, GREEN, BLUE]))
    cropped = ImageFolder(tmp_path, 10)[0]
    inner = cropped[:, :, 3:7]  # away from the edges, which Lanczos's support lets see the neighbours
    assert torch.allclose(inner[1], torch.ones_like(inner[1]), atol=STEP)
    assert torch.allclose(inner[[0, 2]], -torch.ones_like(inner[[0, 2]]), atol=STEP)
    assert (cropped[1] > cropped[0]).all() and (cropped[1] > cropped[2]).all()  # green dominates everywhere

    squashed = ImageFolder(tmp_path, 9, center_crop=False)[0]  # 3 output columns per colour band
    for band, channel in enumerate([0, 1, 2]):
        middle = squashed[:, :, 3 * band + 1]
        assert torch.allclose(middle[channel], torch.ones(9), atol=0.05)
    # the crop of a portrait image takes the vertical centre instead
    write(tmp_path / "x.png", stripes(20, 60, [RED, GREEN, BLUE]).transpose(1, 0, 2).copy())  # 20 wide, 60 high
    assert ImageFolder(tmp_path, 10)[0][1, 3:7].min() > 1 - STEP


# -- flips --------------------------------------------------------------------------------------


def test_flip_mirrors_left_right_and_is_repeatable_with_a_seed(tmp_path):
    write(tmp_path / "x.png", stripes(8, 8, [RED, BLUE]))
    plain = ImageFolder(tmp_path, 8)[0]
    mirrored = plain.flip(-1)
    assert not torch.equal(plain, mirrored)

    def reads(seed: int) -> list[bool]:
        ds = ImageFolder(tmp_path, 8, flip=True, generator=torch.Generator().manual_seed(seed))
        out = []
        for _ in range(40):
            x = ds[0]
            assert torch.equal(x, plain) or torch.equal(x, mirrored)
            out.append(torch.equal(x, mirrored))
        return out

    flips = reads(123)
    assert reads(123) == flips  # a fixed seed fixes the sequence
    assert 5 < sum(flips) < 35  # both outcomes occur (p ≈ 1 − 2·10⁻⁵ for a fair coin)
    assert reads(124) != flips


def test_flip_without_generator_follows_torch_global_seed(tmp_path):
    write(tmp_path / "x.png", stripes(8, 8, [RED, BLUE]))
    ds = ImageFolder(tmp_path, 8, flip=True)
    torch.manual_seed(7)
    first = [ds[0] for _ in range(10)]
    torch.manual_seed(7)
    second = [ds[0] for _ in range(10)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert len({bool(x[0, 0, 0] > 0) for x in first}) == 2  # red on the left, then on the right


def test_no_flip_is_the_default(tmp_path):
    write(tmp_path / "x.png", stripes(8, 8, [RED, BLUE]))
    ds = ImageFolder(tmp_path, 8)
    assert all(ds[0][0, 0, 0] == 1 for _ in range(10))


# -- colour handling ----------------------------------------------------------------------------


def test_grayscale_is_one_channel_luma(tmp_path):
    write(tmp_path / "red.png", solid(6, 6, RED))
    write(tmp_path / "green.png", solid(6, 6, GREEN))
    ds = ImageFolder(tmp_path, 4, channels=1)
    for x, weight in [(ds[1], 0.299), (ds[0], 0.587)]:  # sorted: green.png, red.png
        assert x.shape == (1, 4, 4)
        assert (x - (weight * 255 / 127.5 - 1)).abs().max() <= STEP


def test_grayscale_file_read_as_rgb_repeats_the_channel(mixed):
    x = ImageFolder(mixed, 8)[2]  # sub/c.png is a mode-L file
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])


def test_transparency_is_composited_over_white(tmp_path):
    pixels = np.zeros((4, 4, 4), dtype=np.uint8)  # fully transparent black …
    pixels[:, :2] = (0, 0, 0, 255)  # … except an opaque black left half
    write(tmp_path / "t.png", pixels)
    x = ImageFolder(tmp_path, 4)[0]
    assert (x[:, :, :2] == -1).all() and (x[:, :, 2:] == 1).all()


def test_exif_orientation_is_applied(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    write(tmp_path / "r.jpg", stripes(16, 32, [RED, BLUE]), exif=exif.tobytes(), quality=95)
    x = ImageFolder(tmp_path, 8, center_crop=False)[0]
    # shown upright, the stored left (red) half is on top and the right (blue) half at the bottom
    assert x[0, 1].mean() > 0.8 and x[2, 1].mean() < -0.8
    assert x[2, 6].mean() > 0.8 and x[0, 6].mean() < -0.8


# -- labels -------------------------------------------------------------------------------------


def test_labels_come_from_sorted_sub_folder_names(tmp_path):
    write(tmp_path / "dog" / "1.png", solid(5, 5, BLUE))
    write(tmp_path / "cat" / "1.png", solid(5, 5, RED))
    write(tmp_path / "cat" / "deep" / "2.png", solid(5, 5, RED))
    (tmp_path / "empty").mkdir()
    ds = ImageFolder(tmp_path, 4, labels=True)
    assert ds.classes == ["cat", "dog"] and ds.class_to_idx == {"cat": 0, "dog": 1}
    assert ds.targets == [0, 0, 1]
    image, label = ds[2]
    assert label == 1 and image.shape == (3, 4, 4) and (image[2] == 1).all()
    images, labels = next(iter(DataLoader(ds, batch_size=3)))
    assert images.shape == (3, 3, 4, 4) and labels.tolist() == [0, 0, 1]


def test_labels_refuse_images_outside_class_folders(tmp_path):
    write(tmp_path / "cat" / "1.png", solid(5, 5, RED))
    write(tmp_path / "loose.png", solid(5, 5, RED))
    with pytest.raises(ConfigError, match="loose.png"):
        ImageFolder(tmp_path, 4, labels=True)


# -- broken files and errors --------------------------------------------------------------------


def test_corrupt_file_is_warned_about_by_path_and_skipped(mixed):
    bad = mixed / "sub" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.warns(ImageSkippedWarning, match="broken.png"):
        ds = ImageFolder(mixed, 8)
    assert bad not in ds.paths and len(ds) == 4
    assert [path for path, _ in ds.skipped] == [bad]
    assert all(ds[i].shape == (3, 8, 8) for i in range(len(ds)))


def test_damage_found_only_when_decoding_is_skipped_on_read(tmp_path):
    write(tmp_path / "a.jpg", np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8), quality=95)
    write(tmp_path / "b.png", solid(8, 8, GREEN))
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "a.jpg").write_bytes(data[: 3 * len(data) // 4])  # cut in the scan data: verify() cannot tell
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = ImageFolder(tmp_path, 8)
    assert len(ds) == 2
    with pytest.warns(ImageSkippedWarning, match="a.jpg"):
        x = ds[0]
    assert (x[1] == 1).all()  # the next readable image, b.png, stands in
    assert [path.name for path, _ in ds.skipped] == ["a.jpg"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not retried, not warned about again
        assert torch.equal(ds[0], x)


def test_a_folder_of_only_broken_files_is_an_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"nope")
    with pytest.warns(ImageSkippedWarning), pytest.raises(ConfigError, match="could be read"):
        ImageFolder(tmp_path, 8)


def test_empty_folder_names_the_extensions_looked_for(tmp_path):
    (tmp_path / "readme.txt").write_text("no images here")
    with pytest.raises(ConfigError, match=r"no image files.*\.png.*\.jpg") as info:
        ImageFolder(tmp_path, 8)
    assert str(tmp_path) in str(info.value)


def test_missing_folder_and_file_root(tmp_path):
    with pytest.raises(ConfigError, match="does not exist") as info:
        ImageFolder(tmp_path / "nowhere", 8)
    assert str(tmp_path / "nowhere") in str(info.value)
    path = write(tmp_path / "x.png", solid(4, 4, RED))
    with pytest.raises(ConfigError, match="not a folder"):
        ImageFolder(path, 8)


@pytest.mark.parametrize("size", [0, -3, 2.5, True, "64"])
def test_bad_size_is_a_config_error_naming_the_path(mixed, size):
    with pytest.raises(ConfigError, match="size must be a positive integer") as info:
        ImageFolder(mixed, size)
    assert str(mixed) in str(info.value)


@pytest.mark.parametrize("kwargs", [{"channels": 2}, {"channels": 4}, {"extensions": []}, {"extensions": ["."]}])
def test_bad_options_are_config_errors(mixed, kwargs):
    with pytest.raises(ConfigError):
        ImageFolder(mixed, 8, **kwargs)


def test_index_out_of_range(mixed):
    ds = ImageFolder(mixed, 8)
    assert torch.equal(ds[-1], ds[len(ds) - 1])
    with pytest.raises(IndexError):
        ds[len(ds)]
