"""ImageFolder captions: sidecar text files with the image's stem (``img001.png`` + ``img001.txt``).

Read as UTF-8 and stripped; a missing, empty, binary, non-UTF-8, oversized or non-file caption
is an error naming the image; captions stay with their images through indexing, skipped files
and read-time substitution; labels and captions are not mixed; the folder as training data
gives the list of captions.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffkit.errors import ConfigError
from diffkit.io.image_folder import (
    MAX_CAPTION_BYTES,
    ImageFolder,
    ImageSkippedWarning,
    caption_path,
    read_caption,
    read_captions,
)
from diffkit.training import as_training_data


def image(path: Path, value: int = 0, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)
    return path


def captioned(folder: Path, items: dict[str, str]) -> Path:
    """PNG images named by the keys (grey levels in order), each with its caption file."""
    for i, (name, text) in enumerate(items.items()):
        image(folder / name, value=40 * i)
        caption_path(folder / name).write_text(text, encoding="utf-8")
    return folder


def test_captions_are_read_from_sidecar_files_with_the_same_stem(tmp_path):
    captioned(tmp_path, {"img001.png": "a red cat\n", "img002.png": "  a blue dog  ", "sub/img003.png": "a photo"})
    data = ImageFolder(tmp_path, 8, captions="txt")
    assert [p.name for p in data.paths] == ["img001.png", "img002.png", "img003.png"]
    assert data.captions == ["a red cat", "a blue dog", "a photo"]
    for i, (picture, caption) in enumerate(data[i] for i in range(len(data))):
        assert picture.shape == (3, 8, 8) and caption == data.captions[i]
    assert torch.equal(data[1][0], data.load(data.paths[1]))  # the image is the one beside the caption
    assert "captions='.txt'" in repr(data)


def test_utf8_text_is_kept_as_written_but_for_the_surrounding_space_and_a_bom(tmp_path):
    image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes("\ufeff  ein Bild: Ölgemälde, 猫 🐈\nzweite Zeile \r\n".encode())
    assert ImageFolder(tmp_path, 8, captions=".txt").captions == ["ein Bild: Ölgemälde, 猫 🐈\nzweite Zeile"]
    assert read_caption(tmp_path / "a.txt") == "ein Bild: Ölgemälde, 猫 🐈\nzweite Zeile"


def test_the_caption_extension_is_chosen_and_dots_are_optional(tmp_path):
    image(tmp_path / "a.png")
    (tmp_path / "a.caption").write_text("from .caption")
    (tmp_path / "a.txt").write_text("from .txt")
    assert ImageFolder(tmp_path, 8, captions="caption").captions == ["from .caption"]
    assert ImageFolder(tmp_path, 8, captions=".txt").captions == ["from .txt"]
    assert caption_path(tmp_path / "x.tar.png", ".txt") == tmp_path / "x.tar.txt"


def test_caption_files_are_not_images_and_without_captions_items_are_images(tmp_path):
    captioned(tmp_path, {"a.png": "one", "b.png": "two"})
    data = ImageFolder(tmp_path, 8)
    assert data.captions is None and len(data) == 2
    assert isinstance(data[0], torch.Tensor)


def test_a_missing_caption_is_an_error_naming_every_such_image(tmp_path):
    captioned(tmp_path, {"a.png": "one"})
    image(tmp_path / "b.png")
    image(tmp_path / "c.png")
    with pytest.raises(ConfigError) as error:
        ImageFolder(tmp_path, 8, captions="txt")
    message = str(error.value)
    assert "2 of 3 image(s) have no usable caption file" in message
    assert "b.png" in message and "b.txt is missing" in message and "c.txt is missing" in message
    assert "a.png" not in message
    assert "img001.png + img001.txt" in message


def test_many_missing_captions_are_listed_ten_and_counted(tmp_path):
    for i in range(13):
        image(tmp_path / f"{i:02d}.png")
    with pytest.raises(ConfigError, match="13 of 13 image") as error:
        ImageFolder(tmp_path, 8, captions="txt")
    assert "09.txt is missing" in str(error.value) and "10.txt" not in str(error.value)
    assert "and 3 more" in str(error.value)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "is empty"),
        (b"  \n\t \r\n", "is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "holds NUL bytes: a binary file"),
        ("caf\u00e9 au lait".encode("latin-1"), "is not UTF-8 text (byte 0xe9 at offset 3)"),
        (b"a" * (MAX_CAPTION_BYTES + 1), "is larger than 1 MiB"),
    ],
    ids=["empty", "blank", "binary", "latin-1", "huge"],
)
def test_odd_caption_files_are_errors_saying_what_is_wrong(tmp_path, content, reason):
    image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes(content)
    with pytest.raises(ConfigError, match="a.png") as error:
        ImageFolder(tmp_path, 8, captions="txt")
    assert f"a.txt {reason}" in str(error.value)
    with pytest.raises(ConfigError, match=reason.split(" (")[0]):
        read_caption(tmp_path / "a.txt")


def test_a_caption_that_is_a_folder_is_not_a_file(tmp_path):
    image(tmp_path / "a.png")
    (tmp_path / "a.txt").mkdir()
    with pytest.raises(ConfigError, match="a.txt is not a file"):
        ImageFolder(tmp_path, 8, captions="txt")


def test_a_caption_of_exactly_the_size_limit_is_read(tmp_path):
    image(tmp_path / "a.png")
    (tmp_path / "a.txt").write_bytes(b"w" * MAX_CAPTION_BYTES)
    assert len(ImageFolder(tmp_path, 8, captions="txt").captions[0]) == MAX_CAPTION_BYTES


def test_an_image_skipped_at_indexing_needs_no_caption(tmp_path):
    captioned(tmp_path, {"a.png": "one", "c.png": "three"})
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")  # no b.txt either
    with pytest.warns(ImageSkippedWarning, match="b.png"):
        data = ImageFolder(tmp_path, 8, captions="txt")
    assert [p.name for p in data.paths] == ["a.png", "c.png"] and data.captions == ["one", "three"]


def test_an_image_that_fails_on_read_is_replaced_with_the_next_one_and_its_own_caption(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "a.jpg", quality=95)
    raw = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "a.jpg").write_bytes(raw[: 3 * len(raw) // 4])  # verify() cannot tell
    (tmp_path / "a.txt").write_text("the broken one")
    captioned(tmp_path, {"b.png": "the next one"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = ImageFolder(tmp_path, 8, captions="txt")
    with pytest.warns(ImageSkippedWarning, match="a.jpg"):
        picture, caption = data[0]
    assert caption == "the next one" and torch.equal(picture, data.load(tmp_path / "b.png"))


def test_read_captions_checks_a_list_of_images(tmp_path):
    captioned(tmp_path, {"a.png": "one", "b.png": "two"})
    assert read_captions([tmp_path / "b.png", tmp_path / "a.png"]) == ["two", "one"]
    with pytest.raises(ConfigError, match="1 of 1 image"):
        read_captions([tmp_path / "nope.png"])


def test_labels_and_captions_together_are_refused(tmp_path):
    captioned(tmp_path / "cats", {"a.png": "a cat"})
    with pytest.raises(ConfigError, match="labels=True .* and captions='txt' .* pass one of them"):
        ImageFolder(tmp_path, 8, labels=True, captions="txt")


@pytest.mark.parametrize("bad", ["", ".", "png", ".JPG", "a/b", " txt", 3, True])
def test_bad_caption_extensions_are_refused(tmp_path, bad):
    captioned(tmp_path, {"a.png": "one"})
    with pytest.raises(ConfigError, match="captions"):
        ImageFolder(tmp_path, 8, captions=bad)


def test_class_folders_keep_working_with_labels(tmp_path):
    image(tmp_path / "dogs" / "x.png")
    image(tmp_path / "cats" / "y.png")
    (tmp_path / "cats" / "y.txt").write_text("ignored without captions=")
    data = ImageFolder(tmp_path, 8, labels=True)
    assert data.classes == ["cats", "dogs"] and data.captions is None and data[1][1] == 1


def test_a_captioned_folder_is_training_data_with_a_list_of_captions(tmp_path):
    captioned(tmp_path, {"a.png": "one", "b.png": "two", "c.png": "three"})
    data = as_training_data(ImageFolder(tmp_path, 8, captions="txt"))
    assert data.images.shape == (3, 3, 8, 8) and data.cond == ["one", "two", "three"]
    _, batch = data.batch(torch.tensor([2, 0]))
    assert batch == ["three", "one"]
