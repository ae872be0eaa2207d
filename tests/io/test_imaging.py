"""Image grids, PNG and GIF files: grid geometry, the [−1, 1] → uint8 mapping, round trips
through Pillow, and atomic writes (no temporary file left, the old file kept on failure)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from diffkit.errors import ConfigError, ShapeError, UnknownNameError
from diffkit.io.imaging import make_grid, save_gif, save_png


def constant_batch(n: int, c: int, h: int, w: int) -> torch.Tensor:
    """Image i is the constant value v_i, with distinct values in (−1, 1) (none near ±1)."""
    values = torch.linspace(-0.9, 0.9, n) if n > 1 else torch.zeros(1)
    return values[:, None, None, None].expand(n, c, h, w).clone()


# -- make_grid ----------------------------------------------------------------------------------


@given(
    n=st.integers(1, 11),
    c=st.sampled_from([1, 3]),
    h=st.integers(1, 5),
    w=st.integers(1, 5),
    nrow=st.none() | st.integers(1, 6),
    padding=st.integers(0, 3),
    scale=st.integers(1, 3),
)
def test_grid_geometry_places_every_image_in_its_cell(n, c, h, w, nrow, padding, scale):
    images = torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(n * 31 + h)) * 2 - 1
    grid = make_grid(images, nrow=nrow, padding=padding, pad_value=-1.0, scale=scale)
    cols = min(nrow if nrow is not None else math.ceil(math.sqrt(n)), n)
    rows = math.ceil(n / cols)
    assert grid.dtype == np.uint8
    assert grid.shape == (scale * (rows * (h + padding) + padding), scale * (cols * (w + padding) + padding), c)

    expected = np.rint((images.numpy() + 1) * 127.5).astype(np.uint8)
    covered = np.zeros(grid.shape[:2], dtype=bool)
    for i in range(n):
        top = scale * (padding + (i // cols) * (h + padding))
        left = scale * (padding + (i % cols) * (w + padding))
        cell = grid[top : top + scale * h, left : left + scale * w]
        # nearest-neighbour upscaling: every source pixel becomes a scale × scale block
        np.testing.assert_array_equal(cell[::scale, ::scale], expected[i].transpose(1, 2, 0))
        for dy in range(scale):
            for dx in range(scale):
                np.testing.assert_array_equal(cell[dy::scale, dx::scale], cell[::scale, ::scale])
        covered[top : top + scale * h, left : left + scale * w] = True
    assert (grid[~covered] == 0).all()  # padding and empty cells: pad_value −1 → 0


def test_default_nrow_is_ceil_sqrt_n():
    for n, cols in [(1, 1), (4, 2), (5, 3), (9, 3), (10, 4)]:
        grid = make_grid(constant_batch(n, 3, 2, 2), padding=0)
        assert grid.shape[1] == cols * 2
        assert grid.shape[0] == math.ceil(n / cols) * 2


def test_value_mapping_endpoints_midpoint_and_clamping():
    values = torch.tensor([-5.0, -1.0, 0.0, 1.0, 7.0, float("inf"), float("-inf")])
    images = values[:, None, None, None].expand(-1, 1, 1, 1)
    grid = make_grid(images, nrow=len(values), padding=0)
    # (x + 1)·127.5 rounded: −1 → 0, 1 → 255, 0 → 127.5 → 128 (half to even); outside clamps
    assert grid[0, :, 0].tolist() == [0, 0, 128, 255, 255, 255, 0]


def test_value_mapping_is_monotone_and_exact_on_the_255_levels():
    levels = np.arange(256)
    x = torch.tensor(levels / 127.5 - 1.0, dtype=torch.float32)[None, None, None, :]  # one 1×256 image
    np.testing.assert_array_equal(make_grid(x, padding=0)[0, :, 0], levels)


def test_nan_shows_grey_with_a_warning():
    images = torch.full((1, 1, 2, 2), float("nan"))
    with pytest.warns(UserWarning, match="NaN"):
        grid = make_grid(images, padding=0)
    assert (grid == 128).all()


def test_pad_value_colours_the_padding():
    grid = make_grid(constant_batch(2, 3, 2, 2), nrow=2, padding=1, pad_value=1.0)
    assert (grid[0] == 255).all() and (grid[:, 0] == 255).all() and (grid[:, 3] == 255).all()


def test_single_image_and_numpy_input():
    image = np.zeros((3, 4, 5), dtype=np.float32)
    grid = make_grid(image, padding=0)
    assert grid.shape == (4, 5, 3) and (grid == 128).all()


@pytest.mark.parametrize("shape", [(2, 2, 4, 4), (2, 4, 4, 4), (2, 4, 4), (0, 3, 4, 4), (3, 4)])
def test_bad_shapes_raise_shape_error(shape):
    with pytest.raises(ShapeError, match="C = 1 or 3"):
        make_grid(torch.zeros(shape))


@pytest.mark.parametrize(
    "kwargs", [{"nrow": 0}, {"padding": -1}, {"scale": 0}, {"scale": 1.5}, {"pad_value": 2.0}, {"nrow": True}]
)
def test_bad_grid_options_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        make_grid(torch.zeros(2, 3, 4, 4), **kwargs)


# -- save_png -----------------------------------------------------------------------------------


def test_png_round_trip_of_a_batch_equals_the_grid(tmp_path):
    images = torch.rand(5, 3, 6, 7, generator=torch.Generator().manual_seed(0)) * 2 - 1
    path = save_png(tmp_path / "grid.png", images, nrow=2, padding=2, scale=2)
    with Image.open(path) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(image), make_grid(images, nrow=2, padding=2, scale=2))


@pytest.mark.parametrize("shape", [(9, 11), (9, 11, 1), (9, 11, 3), (9, 11, 4)])
def test_png_round_trip_of_uint8_pictures(tmp_path, shape):
    picture = np.random.default_rng(1).integers(0, 256, size=shape, dtype=np.uint8)
    path = save_png(tmp_path / "p.png", picture)
    with Image.open(path) as image:
        back = np.asarray(image)
    np.testing.assert_array_equal(back.reshape(shape), picture)


def test_grayscale_batch_saves_as_mode_l(tmp_path):
    path = save_png(tmp_path / "g.png", torch.zeros(4, 1, 8, 8), scale=4)
    with Image.open(path) as image:
        assert image.mode == "L" and image.size == (4 * (2 * 9 + 1), 4 * (2 * 9 + 1))


def test_png_creates_parent_folders_and_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "a" / "b" / "grid.png"
    save_png(target, torch.zeros(2, 3, 4, 4))
    save_png(target, torch.ones(2, 3, 4, 4))  # overwrite
    assert sorted(os.listdir(target.parent)) == ["grid.png"]
    with Image.open(target) as image:
        assert np.asarray(image)[1, 1].tolist() == [255, 255, 255]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path, monkeypatch):
    target = tmp_path / "grid.png"
    save_png(target, torch.zeros(1, 3, 4, 4))
    before = target.read_bytes()
    real_save = Image.Image.save

    def half_then_crash(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)
        with open(fp, "r+b") as f:
            f.truncate(10)  # a half-written file …
        raise KeyboardInterrupt  # … and the process is interrupted

    monkeypatch.setattr(Image.Image, "save", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        save_png(target, torch.ones(1, 3, 4, 4))
    assert target.read_bytes() == before
    assert os.listdir(tmp_path) == ["grid.png"]


def test_png_argument_errors(tmp_path):
    with pytest.raises(ConfigError, match="must end in '.png'"):
        save_png(tmp_path / "grid.jpg", torch.zeros(1, 3, 4, 4))
    with pytest.raises(ConfigError, match="grid options"):
        save_png(tmp_path / "p.png", np.zeros((4, 4, 3), np.uint8), scale=2)
    with pytest.raises(ConfigError, match="floating point"):
        save_png(tmp_path / "p.png", torch.zeros(1, 3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ShapeError):
        save_png(tmp_path / "p.png", np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(UnknownNameError, match="did you mean 'nrow'"):
        save_png(tmp_path / "p.png", torch.zeros(1, 3, 4, 4), nrows=2)
    assert os.listdir(tmp_path) == []


# -- save_gif -----------------------------------------------------------------------------------


def test_gif_has_every_frame_its_size_duration_and_loop(tmp_path):
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 256, size=(10, 14, 3), dtype=np.uint8) for _ in range(4)]
    path = save_gif(tmp_path / "anim" / "a.gif", frames, duration_ms=120, loop=0)
    with Image.open(path) as image:
        assert image.format == "GIF"
        assert image.n_frames == 4 and image.is_animated
        assert image.size == (14, 10)
        assert image.info["loop"] == 0 and image.info["duration"] == 120
    assert os.listdir(path.parent) == ["a.gif"]


def test_gif_of_grayscale_frames_is_exact(tmp_path):
    # ≤ 256 grey levels fit GIF's palette, so a grayscale animation round-trips exactly
    frames = [np.full((6, 6), v, dtype=np.uint8) for v in (0, 100, 255)]
    frames[1][2, 3] = 7
    path = save_gif(tmp_path / "g.gif", frames, duration_ms=[50, 60, 70], loop=None)
    with Image.open(path) as image:
        assert "loop" not in image.info  # plays once
        for i, frame in enumerate(frames):
            image.seek(i)
            np.testing.assert_array_equal(np.asarray(image.convert("L")), frame)


def test_gif_from_image_batches_uses_make_grid(tmp_path):
    batches = [torch.full((4, 1, 8, 8), v) for v in (-1.0, 0.0, 1.0)]
    path = save_gif(tmp_path / "b.gif", batches, scale=2, padding=1)
    with Image.open(path) as image:
        assert image.n_frames == 3
        assert image.size == make_grid(batches[0], scale=2, padding=1).shape[1::-1]


def test_gif_argument_errors(tmp_path):
    frame = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ShapeError, match="frame 1"):
        save_gif(tmp_path / "a.gif", [frame, np.zeros((5, 4, 3), np.uint8)])
    with pytest.raises(ConfigError, match="non-empty"):
        save_gif(tmp_path / "a.gif", [])
    with pytest.raises(ConfigError, match="2 durations"):
        save_gif(tmp_path / "a.gif", [frame, frame, frame], duration_ms=[10, 20])
    with pytest.raises(ConfigError, match="must end in '.gif'"):
        save_gif(tmp_path / "a.png", [frame])
    assert os.listdir(tmp_path) == []
