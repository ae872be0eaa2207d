"""The generated shapes data: rendering geometry, captions and their parser, the held-out split."""

from __future__ import annotations

import itertools
import math
import time

import attrs
import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from diffkit.demos.shapes import (
    COLORS,
    POSITIONS,
    SHAPES,
    SIZES,
    ShapesConfig,
    ShapesDataset,
    ShapeSpec,
    caption,
    heldout_combinations,
    heldout_prompts,
    parse_prompt,
    render,
)
from diffkit.demos.shapes import data as shapes_module
from diffkit.errors import ConfigError, UnknownNameError

ALL_SPECS = [
    ShapeSpec(shape, color, position, size)
    for color, shape, position, size in itertools.product(COLORS, SHAPES, POSITIONS, SIZES)
]
BACKGROUND = np.array(shapes_module.BACKGROUND, dtype=np.float64)


@pytest.fixture(scope="module")
def train():
    return ShapesDataset(ShapesConfig(), "train")


@pytest.fixture(scope="module")
def heldout():
    return ShapesDataset(ShapesConfig(), "heldout")


def _combos(dataset: ShapesDataset) -> set[tuple[str, str, str]]:
    return {spec.combination() for spec in dataset.specs}


def _object_mask(image: np.ndarray, threshold: float = 60.0) -> np.ndarray:
    """Pixels of a uint8 [H, W, 3] image more than ``threshold`` (RGB distance) from the background."""
    return np.linalg.norm(image.astype(np.float64) - BACKGROUND, axis=-1) > threshold


# -- the vocabulary ----------------------------------------------------------------------------


def test_vocabulary_sizes():
    assert len(COLORS) >= 6 and len(SHAPES) >= 3 and len(POSITIONS) == 5 and SIZES == ("small", "large")
    assert set(POSITIONS) == {"left", "right", "top", "bottom", "center"}


def test_palette_is_well_separated_and_stands_out_from_the_background():
    palette = np.array(list(COLORS.values()), dtype=np.float64)
    gaps = [np.linalg.norm(a - b) for a, b in itertools.combinations(palette, 2)]
    assert min(gaps) >= 100  # of 0…255 per channel
    assert np.linalg.norm(palette - BACKGROUND, axis=1).min() >= 150


# -- rendering ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64])
def test_objects_sit_where_the_spec_says_in_the_palette_colour(size):
    rng = np.random.default_rng(0)
    for spec in ALL_SPECS:
        image = render(spec, size, rng)  # no jitter, no texture
        assert image.shape == (size, size, 3) and image.dtype == np.uint8
        mask = _object_mask(image)
        rows, cols = np.nonzero(mask)
        # centroid of the object's pixels (pixel centres at i + ½) against the nominal centre
        nominal = np.array(shapes_module.POSITION_CENTERS[spec.position]) * size
        centroid = np.array([cols.mean() + 0.5, rows.mean() + 0.5])
        assert np.abs(centroid - nominal).max() <= 0.04 * size, spec
        # the interior is exactly the palette colour; the corners are exactly the background
        interior = image[mask & (np.linalg.norm(image - np.array(COLORS[spec.color]), axis=-1) < 1)]
        assert len(interior) >= 0.4 * mask.sum(), spec  # (a small triangle is mostly rim)
        assert (image[[0, 0, -1, -1], [0, -1, 0, -1]] == shapes_module.BACKGROUND).all()


def test_object_area_and_extent_follow_the_size():
    size, rng = 64, np.random.default_rng(1)
    for spec in ALL_SPECS:
        if spec.position != "center":
            continue
        image = render(spec, size, rng)
        # coverage-weighted area: the fraction of the way from the background to the colour
        colour = np.array(COLORS[spec.color], dtype=np.float64)
        a = ((image - BACKGROUND) @ (colour - BACKGROUND)) / np.sum((colour - BACKGROUND) ** 2)
        extent = shapes_module.SIZE_FRACTIONS[spec.size] * size
        expected = shapes_module.shape_area_fraction(spec.shape) * extent**2
        assert a.clip(0, 1).sum() == pytest.approx(expected, rel=0.03), spec
        cols = np.nonzero(_object_mask(image).any(axis=0))[0]
        width = (cols.max() - cols.min() + 1) / size
        low, high = (0.2, 0.3) if spec.size == "small" else (0.4, 0.5)
        assert low <= width <= high, (spec, width)


def test_analytic_area_fractions():
    assert shapes_module.shape_area_fraction("circle") == pytest.approx(math.pi / 4)
    # equilateral triangle with circumradius R·s/2: side √3·R·s/2, area (√3/4)·side²
    side = math.sqrt(3) * shapes_module.TRIANGLE_RADIUS / 2
    assert shapes_module.shape_area_fraction("triangle") == pytest.approx(math.sqrt(3) / 4 * side**2)


def test_edges_are_anti_aliased():
    image = render(ShapeSpec("circle", "red", "center", "large"), 32, np.random.default_rng(0))
    red = image[..., 0]
    between = (red > BACKGROUND[0] + 5) & (red < COLORS["red"][0] - 5)
    assert between.sum() >= 10  # a rim of partly covered pixels


def test_texture_and_jitter():
    spec = ShapeSpec("square", "blue", "center", "small")
    plain = [render(spec, 32, np.random.default_rng(s)) for s in range(20)]
    assert all(np.array_equal(plain[0], p) for p in plain)  # nothing random without texture/jitter
    textured = render(spec, 32, np.random.default_rng(0), texture=0.05)
    corner = textured[:6, :6].astype(np.float64) - BACKGROUND
    assert corner.std() > 0.5 and np.abs(corner).max() <= 0.05 * 255 + 1
    # grey texture: the same change on every channel
    assert np.abs(corner - corner.mean(axis=-1, keepdims=True)).max() <= 1
    centres = []
    for s in range(40):
        rows, cols = np.nonzero(_object_mask(render(spec, 32, np.random.default_rng(s), jitter=2.0)))
        centres.append((cols.mean() + 0.5, rows.mean() + 0.5))
    offsets = np.array(centres) - 16
    assert np.abs(offsets).max() <= 2.0 + 0.3 and offsets.std(axis=0).min() > 0.5


def test_render_draws_a_missing_size():
    spec = ShapeSpec("circle", "green", "left")
    areas = {int(_object_mask(render(spec, 32, np.random.default_rng(s))).sum()) for s in range(20)}
    assert len(areas) == 2  # small and large


@pytest.mark.parametrize(
    "kwargs, match",
    [({"image_size": 8}, "image_size"), ({"texture": 0.5}, "texture"), ({"jitter": 3.0}, "jitter")],
)
def test_bad_render_arguments(kwargs, match):
    args = {"image_size": 32, **kwargs}
    with pytest.raises(ConfigError, match=match):
        render(ShapeSpec("circle", "red", "left"), args.pop("image_size"), np.random.default_rng(0), **args)


def test_specs_are_validated_with_suggestions():
    with pytest.raises(UnknownNameError, match="'red'"):
        ShapeSpec("circle", "rde", "left")
    with pytest.raises(UnknownNameError, match="'triangle'"):
        ShapeSpec("triangel", "red", "left")
    with pytest.raises(UnknownNameError, match="position"):
        ShapeSpec("circle", "red", "middle")
    with pytest.raises(ConfigError, match="ShapeSpec"):
        render(("circle", "red", "left"), 32, np.random.default_rng(0))


# -- captions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("template", range(len(shapes_module.CAPTION_TEMPLATES)))
def test_every_template_parses_back_to_its_spec(template):
    rng = np.random.default_rng(template)
    for spec in ALL_SPECS:
        for _ in range(3):  # several wordings of the position and size
            with_size = caption(spec, rng, template=template, with_size=True)
            without = caption(spec, rng, template=template, with_size=False)
            assert parse_prompt(with_size) == spec, with_size
            assert parse_prompt(without) == attrs.evolve(spec, size=None), without
            assert not any(w in without.split() for words in shapes_module.SIZE_WORDS.values() for w in words)


def test_captions_vary():
    rng = np.random.default_rng(0)
    spec = ShapeSpec("triangle", "yellow", "top", "large")
    texts = {caption(spec, rng) for _ in range(300)}
    assert len(shapes_module.CAPTION_TEMPLATES) >= 8 and len(texts) >= 30


def test_parse_prompt_synonyms_and_noise():
    assert parse_prompt("A BIG red Circle, top of the picture") == ShapeSpec("circle", "red", "top", "large")
    assert parse_prompt("little violet box in the middle please") == ShapeSpec("square", "purple", "center", "small")
    assert parse_prompt("zebra cyan triangles lower xyz") == ShapeSpec("triangle", "cyan", "bottom")
    assert parse_prompt("a red circle") is None  # no position
    assert parse_prompt("a red and blue circle on the left") is None  # two colours
    assert parse_prompt("") is None
    attrs_only = shapes_module.parse_attributes("a green thing on the right")
    assert attrs_only == {"color": "green", "shape": None, "position": "right", "size": None}
    with pytest.raises(ConfigError, match="string"):
        parse_prompt(3)


def test_caption_arguments_are_checked():
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="template"):
        caption(ALL_SPECS[0], rng, template=len(shapes_module.CAPTION_TEMPLATES))
    with pytest.raises(ConfigError, match="with_size"):
        caption(ShapeSpec("circle", "red", "left"), rng, with_size=True)


# -- the data set and its splits ---------------------------------------------------------------


def test_dataset_tensors_and_items(train):
    assert len(train) == 6000 and len(train.captions) == len(train.specs) == 6000
    assert train.images.shape == (6000, 3, 32, 32) and train.images.dtype == torch.float32
    assert train.images.min() >= -1 and train.images.max() <= 1
    image, text = train[5]
    assert torch.equal(image, train.images[5]) and text == train.captions[5]
    # values are on the uint8 grid x = k/127.5 − 1
    grid = (train.images[:50] + 1) * 127.5
    torch.testing.assert_close(grid, grid.round(), rtol=0, atol=1e-4)
    images, texts = next(iter(DataLoader(train, batch_size=16)))
    assert images.shape == (16, 3, 32, 32) and len(texts) == 16 and isinstance(texts[0], str)
    assert "split='train'" in repr(train)


def test_dataset_captions_describe_their_images(train):
    for text, spec in zip(train.captions, train.specs):
        parsed = parse_prompt(text)
        assert parsed is not None and parsed.combination() == spec.combination(), text
        assert parsed.size in (None, spec.size), text


def test_dataset_images_show_their_specs(heldout):
    pixels = ((heldout.images + 1) * 127.5).round().permute(0, 2, 3, 1).numpy()
    size, jitter = heldout.config.image_size, heldout.config.jitter
    for image, spec in zip(pixels[:100], heldout.specs[:100]):
        rows, cols = np.nonzero(_object_mask(image))
        nominal = np.array(shapes_module.POSITION_CENTERS[spec.position]) * size
        assert np.abs(np.array([cols.mean(), rows.mean()]) + 0.5 - nominal).max() <= jitter + 0.04 * size


def test_generation_is_deterministic_and_seeded():
    config = ShapesConfig(count=200, heldout_count=50, seed=3, texture=0.05)
    a, b = ShapesDataset(config), ShapesDataset(config)
    assert torch.equal(a.images, b.images) and a.captions == b.captions and a.specs == b.specs
    c = ShapesDataset(attrs.evolve(config, seed=4))
    assert not torch.equal(a.images, c.images)
    h1, h2 = ShapesDataset(config, "heldout"), ShapesDataset(config, "heldout")
    assert torch.equal(h1.images, h2.images) and h1.captions == h2.captions


def test_generation_is_fast():
    start = time.perf_counter()
    ShapesDataset(ShapesConfig(count=6000))
    assert time.perf_counter() - start < 10.0


def test_heldout_split_is_disjoint_and_complete(train, heldout):
    withheld = set(heldout_combinations(train.config))
    assert len(withheld) == train.config.held_out == 12
    assert _combos(train).isdisjoint(withheld)
    assert _combos(heldout) == withheld
    every = {(c, s, p) for c in COLORS for s in SHAPES for p in POSITIONS}
    assert _combos(train) | withheld == every
    # balanced over combinations and sizes: 480 images over 24 cells
    counts = {}
    for spec in heldout.specs:
        counts[(spec.combination(), spec.size)] = counts.get((spec.combination(), spec.size), 0) + 1
    assert len(heldout) == 480 and set(counts.values()) == {20}


def test_training_keeps_every_value_and_pair(train):
    combos = _combos(train)
    for axis, values in enumerate((COLORS, SHAPES, POSITIONS)):
        assert {c[axis] for c in combos} == set(values)
    for i, j in itertools.combinations(range(3), 2):
        pairs = {(c[i], c[j]) for c in combos}
        assert len(pairs) == len((COLORS, SHAPES, POSITIONS)[i]) * len((COLORS, SHAPES, POSITIONS)[j])
    assert {spec.size for spec in train.specs} == set(SIZES)


@given(seed=st.integers(0, 2**32 - 1), held_out=st.integers(0, 45))
@example(seed=283191, held_out=23)  # the first random order could not meet the caps: a later one does
def test_heldout_choice_keeps_every_pair_for_any_seed(seed, held_out):
    config = ShapesConfig(seed=seed, held_out=held_out, count=1)
    withheld = set(heldout_combinations(config))
    assert len(withheld) == held_out
    kept = [(c, s, p) for c in COLORS for s in SHAPES for p in POSITIONS if (c, s, p) not in withheld]
    for i, j in itertools.combinations(range(3), 2):
        assert len({(k[i], k[j]) for k in kept}) == len({(k[i], k[j]) for k in shapes_module.all_combinations()})
    # spread: no colour holds more than its share (rounded up) of the withheld combinations
    if held_out <= 24:
        per_color = [sum(1 for c in withheld if c[0] == color) for color in COLORS]
        assert max(per_color) <= math.ceil(held_out / len(COLORS))


def test_heldout_depends_on_the_seed():
    assert heldout_combinations(ShapesConfig(seed=0)) != heldout_combinations(ShapesConfig(seed=1))
    assert heldout_combinations(ShapesConfig(seed=0)) == heldout_combinations(ShapesConfig(seed=0))


def test_heldout_prompts():
    config = ShapesConfig()
    prompts = heldout_prompts(config, n_per_combination=4)
    assert len(prompts) == 4 * config.held_out
    assert prompts == heldout_prompts(config, n_per_combination=4)
    withheld = set(heldout_combinations(config))
    for text, spec in prompts:
        assert spec.combination() in withheld and parse_prompt(text) == spec, text
    assert {spec.size for _, spec in prompts} == {None, *SIZES}
    assert len({text for text, _ in prompts}) == len(prompts)
    with pytest.raises(ConfigError, match="n_per_combination"):
        heldout_prompts(config, n_per_combination=0)


@pytest.mark.parametrize(
    "field, value",
    [
        ("image_size", 8),
        ("count", 0),
        ("seed", -1),
        ("texture", -0.1),
        ("jitter", 2.5),  # > 32/16
        ("held_out", 1.5),
        ("heldout_count", True),
    ],
)
def test_bad_config_is_a_config_error(field, value):
    with pytest.raises(ConfigError, match=field):
        ShapesConfig(**{field: value})


def test_impossible_held_out_and_empty_heldout_split():
    with pytest.raises(ConfigError, match="held_out=80 is too many"):
        heldout_combinations(ShapesConfig(held_out=80))
    with pytest.raises(ConfigError, match="held_out=0"):
        ShapesDataset(ShapesConfig(held_out=0, count=10), "heldout")
    assert len(ShapesDataset(ShapesConfig(held_out=0, count=10), "train")) == 10
    with pytest.raises(UnknownNameError, match="'heldout'"):
        ShapesDataset(ShapesConfig(count=10), "heldot")
