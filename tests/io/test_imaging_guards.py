"""What reaches an image file: values clamped to [−1, 1] exactly, non-finite batches refused with
nothing written, and a batch of the wrong rank named by its shape."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffkit.errors import ConfigError, NonFiniteError, OutputError, ShapeError
from diffkit.io.imaging import check_output, make_grid, read_picture, save_gif, save_png

OUTSIDE = torch.tensor([-3.2, -1.0001, -1.0, 1.0, 1.27, 3.9])  # sampler overshoot, as seen in the demo


def _row(values: torch.Tensor) -> torch.Tensor:
    """One grey image [1, 1, 1, W] holding ``values`` along its single row."""
    return values[None, None, None, :]


@pytest.mark.parametrize("as_numpy", [False, True])
def test_values_outside_the_range_map_to_black_and_white_exactly(tmp_path, as_numpy):
    images = _row(OUTSIDE).numpy() if as_numpy else _row(OUTSIDE)
    expected = [0, 0, 0, 255, 255, 255]
    assert make_grid(images, padding=0)[0, :, 0].tolist() == expected
    png = save_png(tmp_path / "row.png", images, padding=0)
    assert read_picture(png)[0, :, 0].tolist() == expected
    gif = save_gif(tmp_path / "row.gif", [images, images], padding=0)
    assert read_picture(gif)[0, :, 0].tolist() == expected


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("as_numpy", [False, True])
def test_a_non_finite_batch_is_refused_and_nothing_is_written(tmp_path, bad, as_numpy):
    images = torch.zeros(2, 1, 4, 4)
    images[1, 0, 2, 3] = bad
    if as_numpy:
        images = images.numpy()
    with pytest.raises(NonFiniteError, match=r"1 of 32 values .*\[2, 1, 4, 4\].*no file was written"):
        save_png(tmp_path / "x.png", images)
    with pytest.raises(NonFiniteError, match="NaN or ±inf"):
        save_gif(tmp_path / "x.gif", [torch.zeros(2, 1, 4, 4), images])
    assert list(tmp_path.iterdir()) == []  # neither file nor a temporary


def test_a_non_finite_batch_leaves_an_existing_file_as_it_was(tmp_path):
    target = save_png(tmp_path / "keep.png", torch.zeros(1, 1, 2, 2))
    before = target.read_bytes()
    with pytest.raises(NonFiniteError):
        save_png(target, torch.full((1, 1, 2, 2), float("nan")))
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["keep.png"]


@pytest.mark.parametrize("shape", [(4, 4), (2, 1, 1, 4, 4), (2, 2, 4, 4)])
def test_a_batch_of_the_wrong_rank_or_channels_is_a_shape_error_naming_it(tmp_path, shape):
    with pytest.raises(ShapeError, match=str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")):
        save_png(tmp_path / "x.png", torch.zeros(shape))
    with pytest.raises(ShapeError, match="got"):
        save_gif(tmp_path / "x.gif", [np.zeros(shape, dtype=np.float32)])
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_cannot_be_written_is_an_output_error_naming_it(tmp_path):
    (tmp_path / "f").write_text("mine")
    with pytest.raises(OutputError, match="is a file, not a folder") as caught:
        save_png(tmp_path / "f" / "x.png", torch.zeros(1, 1, 2, 2))
    assert isinstance(caught.value, OSError)  # code catching file-system errors keeps catching it
    with pytest.raises(OutputError, match="NUL byte"):
        save_png(tmp_path / "a\0b.png", torch.zeros(1, 1, 2, 2))
    with pytest.raises(OutputError, match="/proc"):
        save_png("/proc/diffkit-test.png", torch.zeros(1, 1, 2, 2))
    assert (tmp_path / "f").read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["f"]


def test_check_output_creates_the_folder_and_refuses_a_folder_as_the_file(tmp_path):
    assert check_output(tmp_path / "new" / "x.png") == tmp_path / "new" / "x.png"
    assert (tmp_path / "new").is_dir()
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        check_output(tmp_path / "folder.png")
    with pytest.raises(ConfigError, match="must end in '.png'"):
        check_output(tmp_path / "x.jpg")
