"""A generated captioned data set: one coloured shape per image, described in words.

Nothing is downloaded: every image is drawn from a seed. An image shows one flat-coloured
object (a :data:`SHAPES` entry in a :data:`COLORS` colour, :data:`SIZES` small or large) at one
of the :data:`POSITIONS` on a dark, optionally lightly textured background, and its caption
says so in one of :data:`CAPTION_TEMPLATES` ("a red circle on the left", "the yellow square,
in the middle", …). It is small enough for a latent text-to-image model to learn on a CPU,
and every attribute a prompt asks for can be measured on the result
(:mod:`diffkit.demos.shapes.judge`).

Compositional generalisation is built in: :func:`heldout_combinations` withholds some
(colour, shape, position) combinations from the ``"train"`` split; the ``"heldout"`` split
holds only them, so a model is judged on prompts it never saw, made of words it did see.

* :func:`render` — one image of a :class:`ShapeSpec`; :func:`caption` — one caption of it;
  :func:`parse_prompt` — the spec back from a caption or a user's prompt.
* :class:`ShapesDataset` — a split as tensors; :class:`ShapesConfig` — what it contains.
* :func:`heldout_prompts` — evaluation prompts over the withheld combinations.

Geometry (all in pixels of an S×S image, pixel centres at i + ½): the object's centre is at
(¼S, ½S) for ``left``, (¾S, ½S) ``right``, (½S, ¼S) ``top``, (½S, ¾S) ``bottom`` and (½S, ½S)
``center``, moved by a uniform offset in [−jitter, jitter] per axis and then just enough to
keep the object inside the image; its extent is :data:`SIZE_FRACTIONS` · S. Edges are
anti-aliased: each pixel mixes object and background colour by the share of the pixel the
object covers (estimated from the distance to the outline).
"""

from __future__ import annotations

import functools
import math
import numbers
import re
from typing import Any

import attrs
import numpy as np
import torch
from torch.utils.data import Dataset

from diffkit.errors import ConfigError, check_choice
from diffkit.validators import is_real

GENERATOR_VERSION = 1
"""Bump when rendering changes, so models trained on the old images (cache keys) miss."""

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 80, 230),
    "yellow": (235, 215, 50),
    "purple": (160, 60, 210),
    "cyan": (40, 205, 215),
}
"""The palette (sRGB 0…255). Pairwise distances are ≥ 113 and every colour is ≥ 170 away
from the background, so the mean colour of an object names it even after a blur mixes in
background (see :mod:`diffkit.demos.shapes.judge`)."""

SHAPES = ("circle", "square", "triangle")
POSITIONS = ("left", "right", "top", "bottom", "center")
SIZES = ("small", "large")
SPLITS = ("train", "heldout")

BACKGROUND: tuple[int, int, int] = (30, 30, 34)
"""The background's base colour (sRGB); texture adds grey, low-frequency noise to it."""

POSITION_CENTERS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "center": (0.5, 0.5),
}
"""Nominal object centre (x, y) of each position, as fractions of the image side (y down)."""

SIZE_FRACTIONS: dict[str, float] = {"small": 0.26, "large": 0.46}
"""The object's extent s (circle diameter, triangle width) as a fraction of the image side."""

# Shapes in units of the half-extent h = s/2, centred on (0, 0), y pointing down:
#   circle   x² + y² ≤ 1
#   square   max(|x|, |y|) ≤ SQUARE_HALF
#   triangle equilateral, apex up, centroid at (0, 0), circumradius TRIANGLE_RADIUS: the three
#            edges are the lines n_k · (x, y) = R/2 (the inradius) with outward normals
#            n = (0, 1), (±√3/2, −1/2)
SQUARE_HALF = 0.9
TRIANGLE_RADIUS = 1.15
_TRIANGLE_NORMALS = ((0.0, 1.0), (math.sqrt(3) / 2, -0.5), (-math.sqrt(3) / 2, -0.5))

# bounding box (x_min, x_max, y_min, y_max) of each shape in units of h
_EXTENTS: dict[str, tuple[float, float, float, float]] = {
    "circle": (-1.0, 1.0, -1.0, 1.0),
    "square": (-SQUARE_HALF, SQUARE_HALF, -SQUARE_HALF, SQUARE_HALF),
    "triangle": (
        -TRIANGLE_RADIUS * math.sqrt(3) / 2,
        TRIANGLE_RADIUS * math.sqrt(3) / 2,
        -TRIANGLE_RADIUS,
        TRIANGLE_RADIUS / 2,
    ),
}

TEXTURE_CELL = 4  # the texture is bilinear noise on a grid of one node per 4 pixels
_CHUNK = 1024  # images rendered at once (bounds the memory of the intermediate arrays)


def shape_area_fraction(shape: str) -> float:
    """Area of ``shape`` divided by s², its extent squared (before any clipping at the border).

    circle π/4; square SQUARE_HALF² (its side is SQUARE_HALF·s); equilateral triangle (3√3/4)·R²
    with circumradius R = TRIANGLE_RADIUS·s/2, i.e. (3√3/16)·TRIANGLE_RADIUS².
    """
    check_choice("shape", shape, SHAPES)
    if shape == "circle":
        return math.pi / 4
    if shape == "square":
        return SQUARE_HALF**2
    return 3 * math.sqrt(3) / 16 * TRIANGLE_RADIUS**2


# -- specs and configs ---------------------------------------------------------------------------


def _choice_validator(what: str, valid: tuple[str, ...], optional: bool = False) -> Any:
    def check(_: Any, attribute: attrs.Attribute, value: Any) -> None:
        if optional and value is None:
            return
        check_choice(what, value, valid)

    return check


@attrs.frozen
class ShapeSpec:
    """What one image shows: a ``color`` ``shape`` at ``position``, of ``size``.

    ``size`` may be None ("unspecified"): a prompt that names no size parses to such a spec,
    and :func:`render` then draws the size at random.
    """

    shape: str = attrs.field(validator=_choice_validator("shape", SHAPES))
    color: str = attrs.field(validator=_choice_validator("color", tuple(COLORS)))
    position: str = attrs.field(validator=_choice_validator("position", POSITIONS))
    size: str | None = attrs.field(default=None, validator=_choice_validator("size", SIZES, optional=True))

    def combination(self) -> tuple[str, str, str]:
        """(color, shape, position): the unit that :func:`heldout_combinations` withholds."""
        return (self.color, self.shape, self.position)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _int_at_least(low: int) -> Any:
    def check(_: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not _is_int(value) or value < low:
            raise ConfigError(f"{attribute.name} must be an integer ≥ {low}, got {value!r}")

    return check


def _real_in(low: float, high: float) -> Any:
    def check(_: Any, attribute: attrs.Attribute, value: Any) -> None:
        if not is_real(value) or not low <= value <= high:
            raise ConfigError(f"{attribute.name} must be a number in [{low}, {high}], got {value!r}")

    return check


def _check_jitter(instance: ShapesConfig, attribute: attrs.Attribute, value: Any) -> None:
    limit = instance.image_size / 16
    _real_in(0.0, limit)(instance, attribute, value)


@attrs.frozen(kw_only=True)
class ShapesConfig:
    """What a :class:`ShapesDataset` contains; the same config always gives the same data.

    Attributes:
        image_size: side S of the square images (≥ 16).
        count: images in the ``"train"`` split.
        heldout_count: images in the ``"heldout"`` split (spread evenly over the withheld
            combinations and both sizes).
        seed: everything random (specs, captions, offsets, texture, which combinations are
            withheld) comes from it.
        texture: amplitude of the grey background noise as a fraction of full scale
            (0 = plain background; at most 0.1, so the object stays clearly apart).
        jitter: largest random offset of the object's centre from its nominal position, in
            pixels per axis (at most S/16, half the margin to the nearest other position).
        held_out: how many (color, shape, position) combinations are withheld from
            ``"train"`` (see :func:`heldout_combinations`).
    """

    image_size: int = attrs.field(default=32, validator=_int_at_least(16))
    count: int = attrs.field(default=6000, validator=_int_at_least(1))
    heldout_count: int = attrs.field(default=480, validator=_int_at_least(1))
    seed: int = attrs.field(default=0, validator=_int_at_least(0))
    texture: float = attrs.field(default=0.03, validator=_real_in(0.0, 0.1))
    jitter: float = attrs.field(default=2.0, validator=_check_jitter)
    held_out: int = attrs.field(default=12, validator=_int_at_least(0))

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict."""
        return attrs.asdict(self)


# -- rendering -----------------------------------------------------------------------------------


def _texture_fields(n: int, size: int, amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """Grey value noise float32 [n, S, S] in [−amplitude, amplitude]·255 (0 when amplitude = 0).

    Uniform values on a grid with a node every TEXTURE_CELL pixels, bilinearly interpolated
    (a smooth, low-frequency pattern rather than per-pixel grain).
    """
    if amplitude == 0:
        return np.zeros((n, size, size), dtype=np.float32)
    nodes = size // TEXTURE_CELL + 2
    grid = rng.uniform(-1.0, 1.0, size=(n, nodes, nodes)).astype(np.float32)
    t = (np.arange(size, dtype=np.float32) + 0.5) / TEXTURE_CELL  # pixel centre in grid units
    i0 = np.floor(t).astype(np.int64)
    w = (t - i0)[None, :]  # [1, S]
    rows = grid[:, i0, :] * (1 - w)[..., None] + grid[:, i0 + 1, :] * w[..., None]  # [n, S, nodes]
    field = rows[:, :, i0] * (1 - w)[:, None, :] + rows[:, :, i0 + 1] * w[:, None, :]  # [n, S, S]
    return field * np.float32(amplitude * 255.0)


def _coverage(shape: str, cx: np.ndarray, cy: np.ndarray, half: np.ndarray, size: int) -> np.ndarray:
    """Covered fraction float32 [n, S, S] of each pixel by one ``shape`` per image.

    cx, cy, half: float [n] centre and half-extent h in pixels. The coverage is
    clip(½ − d, 0, 1) with d the signed distance (pixels, negative inside) from the pixel
    centre to the outline: exact for a straight edge along a pixel axis, and a one-pixel
    linear ramp (anti-aliasing) across any other edge.
    """
    centres = np.arange(size, dtype=np.float32) + 0.5
    h = half.astype(np.float32)[:, None, None]
    x = (centres[None, None, :] - cx.astype(np.float32)[:, None, None]) / h  # [n, 1, S]
    y = (centres[None, :, None] - cy.astype(np.float32)[:, None, None]) / h  # [n, S, 1]
    if shape == "circle":
        distance = np.sqrt(x * x + y * y) - 1.0
    elif shape == "square":  # Chebyshev distance: exact along the axis-aligned edges
        distance = np.maximum(np.abs(x), np.abs(y)) - SQUARE_HALF
    else:  # the largest signed distance to the three edge lines (exact inside and along the edges)
        distance = np.maximum.reduce([nx * x + ny * y for nx, ny in _TRIANGLE_NORMALS]) - TRIANGLE_RADIUS / 2
    return np.clip(0.5 - distance * h, 0.0, 1.0).astype(np.float32)  # distance·h: in pixels


def render_objects(
    shapes: np.ndarray,
    colors: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
    extent: np.ndarray,
    image_size: int,
    rng: np.random.Generator,
    *,
    texture: float = 0.0,
    background: np.ndarray | None = None,
) -> np.ndarray:
    """Images uint8 [n, S, S, 3] of one object each, from free (not named) attributes.

    The low-level renderer behind :func:`render` and :class:`ShapesDataset`; the shape
    classifier of :mod:`diffkit.demos.shapes.judge` also trains on it with continuous sizes,
    positions and colours.

    Args:
        shapes: int [n] indices into :data:`SHAPES`.
        colors: float [n, 3] object colours (sRGB 0…255).
        cx, cy: float [n] object centres in pixels (x right, y down); each is moved just
            enough for the object to fit inside the image.
        extent: float [n] object extents s in pixels (circle diameter, triangle width).
        image_size: side S.
        rng: draws the texture.
        texture: background noise amplitude (fraction of full scale).
        background: float [n, 3] base background colours; default :data:`BACKGROUND`.
    """
    shapes = np.asarray(shapes, dtype=np.int64)
    n = len(shapes)
    colors = np.asarray(colors, dtype=np.float32).reshape(n, 3)
    half = np.asarray(extent, dtype=np.float64) / 2
    cx, cy = _place(shapes, np.asarray(cx), np.asarray(cy), half, image_size)
    if background is None:
        background = np.broadcast_to(np.asarray(BACKGROUND, dtype=np.float32), (n, 3))
    background = np.asarray(background, dtype=np.float32).reshape(n, 3)
    out = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        part = slice(start, min(start + _CHUNK, n))
        m = part.stop - part.start
        cover = np.zeros((m, image_size, image_size), dtype=np.float32)
        for index, shape in enumerate(SHAPES):
            rows = np.flatnonzero(shapes[part] == index)
            if len(rows):
                cover[rows] = _coverage(shape, cx[part][rows], cy[part][rows], half[part][rows], image_size)
        # pixel = background·(1 − a) + colour·a, a = covered fraction (area-weighted anti-aliasing)
        ground = background[part][:, None, None, :] + _texture_fields(m, image_size, texture, rng)[..., None]
        a = cover[..., None]
        pixels = ground * (1 - a) + colors[part][:, None, None, :] * a
        out[part] = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    return out


def _place(
    shapes: np.ndarray, cx: np.ndarray, cy: np.ndarray, half: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Copies of the centres, each moved just enough for its object's bounding box to fit in [0, S]."""
    cx, cy = cx.astype(np.float64).copy(), cy.astype(np.float64).copy()
    for index, shape in enumerate(SHAPES):
        rows = shapes == index
        x0, x1, y0, y1 = _EXTENTS[shape]
        h = half[rows]
        cx[rows] = np.clip(cx[rows], -x0 * h, size - x1 * h)
        cy[rows] = np.clip(cy[rows], -y0 * h, size - y1 * h)
    return cx, cy


def _render_specs(
    specs: list[ShapeSpec], size: int, texture: float, jitter: float, rng: np.random.Generator
) -> np.ndarray:
    """uint8 [n, S, S, 3] images of ``specs`` (sizes given), offsets and texture drawn from ``rng``."""
    n = len(specs)
    shapes = np.array([SHAPES.index(s.shape) for s in specs], dtype=np.int64)
    colors = np.array([COLORS[s.color] for s in specs], dtype=np.float32).reshape(n, 3)
    nominal = np.array([POSITION_CENTERS[s.position] for s in specs], dtype=np.float64).reshape(n, 2) * size
    offsets = rng.uniform(-jitter, jitter, size=(n, 2))
    extent = np.array([SIZE_FRACTIONS[s.size] for s in specs], dtype=np.float64) * size
    centres = nominal + offsets
    return render_objects(shapes, colors, centres[:, 0], centres[:, 1], extent, size, rng, texture=texture)


def _check_image_size(image_size: Any) -> int:
    if not _is_int(image_size) or image_size < 16:
        raise ConfigError(f"image_size must be an integer ≥ 16, got {image_size!r}")
    return int(image_size)


def render(
    spec: ShapeSpec,
    image_size: int,
    rng: np.random.Generator,
    *,
    texture: float = 0.0,
    jitter: float = 0.0,
) -> np.ndarray:
    """One image of ``spec``: uint8 [image_size, image_size, 3] (sRGB).

    Args:
        spec: what to draw; a None size is drawn uniformly from :data:`SIZES` with ``rng``.
        image_size: side S (≥ 16).
        rng: draws the size (if unspecified), the offset and the texture.
        texture: background noise amplitude (fraction of full scale, 0…0.1).
        jitter: largest offset of the centre in pixels per axis (0…S/16).
    """
    if not isinstance(spec, ShapeSpec):
        raise ConfigError(f"render needs a ShapeSpec, got {type(spec).__name__}")
    config = ShapesConfig(image_size=_check_image_size(image_size), texture=texture, jitter=jitter)
    if spec.size is None:
        spec = attrs.evolve(spec, size=SIZES[int(rng.integers(len(SIZES)))])
    return _render_specs([spec], config.image_size, config.texture, config.jitter, rng)[0]


# -- captions ------------------------------------------------------------------------------------

CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {size}{color} {shape} {where}",
    "{size}{color} {shape} {where}",
    "the {size}{color} {shape}, {where}",
    "{where}, a {size}{color} {shape}",
    "a {size}{shape} in {color} {where}",
    "there is a {size}{color} {shape} {where}",
    "a picture of a {size}{color} {shape} {where}",
    "one {size}{color} {shape}, placed {where}",
    "a {size}{shape}, colored {color}, {where}",
)
"""Caption patterns: ``{size}`` is a size word and a space, or nothing when the size is left out."""

POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "on the left side", "to the left"),
    "right": ("on the right", "on the right side", "to the right"),
    "top": ("at the top", "near the top", "at the top of the image"),
    "bottom": ("at the bottom", "near the bottom", "at the bottom of the image"),
    "center": ("in the center", "in the middle", "in the centre"),
}
SIZE_WORDS: dict[str, tuple[str, ...]] = {"small": ("small", "little"), "large": ("large", "big")}

# the words parse_prompt understands (lower case); anything else is ignored
_VOCABULARY: dict[str, dict[str, str]] = {
    "color": {**{c: c for c in COLORS}, "violet": "purple", "turquoise": "cyan"},
    "shape": {
        **{s: s for s in SHAPES},
        **{s + "s": s for s in SHAPES},
        "disc": "circle",
        "disk": "circle",
        "round": "circle",
        "box": "square",
    },
    "position": {
        **{p: p for p in POSITIONS},
        "centre": "center",
        "middle": "center",
        "centered": "center",
        "centred": "center",
        "central": "center",
        "upper": "top",
        "lower": "bottom",
    },
    "size": {"small": "small", "little": "small", "tiny": "small", "large": "large", "big": "large", "huge": "large"},
}
ATTRIBUTES = ("color", "shape", "position", "size")


def caption(
    spec: ShapeSpec,
    rng: np.random.Generator,
    *,
    template: int | None = None,
    with_size: bool | None = None,
) -> str:
    """A caption of ``spec`` that :func:`parse_prompt` reads back.

    Args:
        spec: what the image shows.
        rng: draws the template, the wording of the position and size, and whether the size
            is mentioned.
        template: index into :data:`CAPTION_TEMPLATES`; default random.
        with_size: mention the size (default: with probability ½). Never when ``spec.size``
            is None; True then is an error.
    """
    if template is None:
        template = int(rng.integers(len(CAPTION_TEMPLATES)))
    elif not _is_int(template) or not 0 <= template < len(CAPTION_TEMPLATES):
        raise ConfigError(f"template must be an index in [0, {len(CAPTION_TEMPLATES) - 1}], got {template!r}")
    if with_size is None:
        with_size = spec.size is not None and bool(rng.integers(2))
    elif with_size and spec.size is None:
        raise ConfigError("with_size=True needs a spec whose size is 'small' or 'large', got size None")
    phrases = POSITION_PHRASES[spec.position]
    where = phrases[int(rng.integers(len(phrases)))]
    size_word = ""
    if with_size:
        words = SIZE_WORDS[spec.size]  # type: ignore[index]
        size_word = words[int(rng.integers(len(words)))] + " "
    return CAPTION_TEMPLATES[template].format(size=size_word, color=spec.color, shape=spec.shape, where=where)


def parse_attributes(text: str) -> dict[str, str | None]:
    """The attributes a prompt names: {"color", "shape", "position", "size"} → value or None.

    Words are matched case-insensitively against a small vocabulary (palette names, shape
    names and plurals, position words with synonyms such as "middle", "centre", "upper",
    size words such as "big", "little"); other words are ignored. An attribute named twice
    with different values ("red and blue") is ambiguous and comes back as None.
    """
    if not isinstance(text, str):
        raise ConfigError(f"a prompt must be a string, got {type(text).__name__}")
    found: dict[str, set[str]] = {name: set() for name in ATTRIBUTES}
    for word in re.findall(r"[a-z]+", text.lower()):
        for name in ATTRIBUTES:
            value = _VOCABULARY[name].get(word)
            if value is not None:
                found[name].add(value)
    return {name: next(iter(values)) if len(values) == 1 else None for name, values in found.items()}


def parse_prompt(text: str) -> ShapeSpec | None:
    """The :class:`ShapeSpec` a prompt describes, or None when it lacks (or is ambiguous about)
    a colour, a shape or a position. The size is optional (None when not named).

    >>> parse_prompt("A big red circle, top of the picture")
    ShapeSpec(shape='circle', color='red', position='top', size='large')
    """
    found = parse_attributes(text)
    if found["color"] is None or found["shape"] is None or found["position"] is None:
        return None
    return ShapeSpec(shape=found["shape"], color=found["color"], position=found["position"], size=found["size"])


# -- splits --------------------------------------------------------------------------------------


def all_combinations() -> list[tuple[str, str, str]]:
    """Every (color, shape, position), in palette × SHAPES × POSITIONS order."""
    return [(c, s, p) for c in COLORS for s in SHAPES for p in POSITIONS]


def _pairs(combo: tuple[str, str, str]) -> tuple[tuple[int, str, str], ...]:
    c, s, p = combo
    return ((0, c, s), (1, c, p), (2, s, p))


# Random orders tried for a withheld set that also meets the balance caps; the first is the
# order diffkit has always used, so a seed whose first order succeeds keeps its combinations.
BALANCE_ATTEMPTS = 64


@functools.lru_cache(maxsize=32)
def _heldout(seed: int, held_out: int) -> tuple[tuple[str, str, str], ...]:
    combos = all_combinations()
    # spread the withheld set evenly over the values of each attribute: at most ⌈n / |values|⌉ each
    caps = [math.ceil(held_out / len(values)) for values in (COLORS, SHAPES, POSITIONS)]
    first: tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]] | None = None
    for attempt in range(BALANCE_ATTEMPTS):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 2] if attempt == 0 else [seed, 2, attempt]))
        order = [combos[i] for i in rng.permutation(len(combos))]
        chosen = _greedy(order, held_out, caps, [])
        if len(chosen) == held_out:
            return tuple(sorted(chosen, key=combos.index))
        first = first or (order, chosen)
    # no order met the caps: the first order, its balanced choice completed without them
    order, balanced = first
    chosen = _greedy(order, held_out, None, balanced)
    if len(chosen) < held_out:
        raise ConfigError(
            f"held_out={held_out} is too many: at most {len(chosen)} of the {len(combos)} (color, shape, position) "
            "combinations can be withheld while every colour–shape, colour–position and shape–position pair "
            "keeps a training example"
        )
    return tuple(sorted(chosen, key=combos.index))


def _greedy(
    order: list[tuple[str, str, str]], held_out: int, caps: list[int] | None, chosen: list[tuple[str, str, str]]
) -> list[tuple[str, str, str]]:
    """``chosen`` extended in ``order`` up to ``held_out`` combinations, each keeping every pair of
    values (colour–shape, colour–position, shape–position) in at least one training combination,
    so a held-out prompt only recombines pairs the model saw; with ``caps``, no value of an
    attribute is withheld more than its cap."""
    chosen = list(chosen)
    remaining: dict[tuple[int, str, str], int] = {}
    for combo in all_combinations():
        for pair in _pairs(combo):
            remaining[pair] = remaining.get(pair, 0) + 1
    uses: list[dict[str, int]] = [{}, {}, {}]
    for combo in chosen:
        for pair in _pairs(combo):
            remaining[pair] -= 1
        for axis, value in enumerate(combo):
            uses[axis][value] = uses[axis].get(value, 0) + 1
    for combo in order:
        if len(chosen) == held_out:
            break
        if combo in chosen or any(remaining[pair] <= 1 for pair in _pairs(combo)):
            continue
        if caps is not None and any(uses[a].get(v, 0) >= caps[a] for a, v in enumerate(combo)):
            continue
        chosen.append(combo)
        for pair in _pairs(combo):
            remaining[pair] -= 1
        for axis, value in enumerate(combo):
            uses[axis][value] = uses[axis].get(value, 0) + 1
    return chosen


def heldout_combinations(config: ShapesConfig) -> list[tuple[str, str, str]]:
    """The (color, shape, position) combinations missing from ``config``'s ``"train"`` split.

    ``config.held_out`` of them, chosen from ``config.seed`` so that every colour–shape,
    colour–position and shape–position pair (hence also every single value) still appears in
    training, and spread as evenly as possible over the colours, shapes and positions.
    Sorted in :func:`all_combinations` order.
    """
    return list(_heldout(config.seed, config.held_out))


def _split_specs(config: ShapesConfig, split: str, rng: np.random.Generator) -> list[ShapeSpec]:
    heldout = heldout_combinations(config)
    if split == "train":
        withheld = set(heldout)
        combos = [c for c in all_combinations() if c not in withheld]
        picks = rng.integers(len(combos), size=config.count)
        sizes = rng.integers(len(SIZES), size=config.count)
        return [
            ShapeSpec(color=combos[i][0], shape=combos[i][1], position=combos[i][2], size=SIZES[z])
            for i, z in zip(picks.tolist(), sizes.tolist())
        ]
    if not heldout:
        raise ConfigError("the 'heldout' split is empty: the config withholds no combinations (held_out=0)")
    # balanced: cycle through every (combination, size) pair, then shuffle the order
    cells = [(c, z) for c in heldout for z in SIZES]
    order = rng.permutation(config.heldout_count) % len(cells)
    return [
        ShapeSpec(color=cells[i][0][0], shape=cells[i][0][1], position=cells[i][0][2], size=cells[i][1])
        for i in order.tolist()
    ]


def heldout_prompts(config: ShapesConfig, n_per_combination: int = 4) -> list[tuple[str, ShapeSpec]]:
    """Evaluation prompts: ``n_per_combination`` captions of each withheld combination.

    Returns (prompt, spec) pairs, spec being what the prompt asks for (:func:`parse_prompt`
    of the prompt: its size is None when the prompt names none). The wording cycles through
    the templates; the k-th prompt of a combination names no size for k mod 4 ∈ {0, 1}, then
    "small" (k mod 4 = 2) and "large" (3). Deterministic given ``config``.
    """
    if not _is_int(n_per_combination) or n_per_combination < 1:
        raise ConfigError(f"n_per_combination must be a positive integer, got {n_per_combination!r}")
    rng = np.random.default_rng(np.random.SeedSequence([config.seed, 3]))
    prompts: list[tuple[str, ShapeSpec]] = []
    for index, (color, shape, position) in enumerate(heldout_combinations(config)):
        for k in range(n_per_combination):
            size = SIZES[k % len(SIZES)] if k % 4 >= 2 else None  # two without size, two with, …
            spec = ShapeSpec(color=color, shape=shape, position=position, size=size)
            template = (index * n_per_combination + k) % len(CAPTION_TEMPLATES)
            prompts.append((caption(spec, rng, template=template, with_size=size is not None), spec))
    return prompts


# -- the data set --------------------------------------------------------------------------------


class ShapesDataset(Dataset):
    """A split of the shapes data as a torch ``Dataset`` of (image, caption).

    Args:
        config: sizes, count, seed, texture, jitter and withheld combinations.
        split: ``"train"`` (``config.count`` images, never a withheld combination) or
            ``"heldout"`` (``config.heldout_count`` images of the withheld combinations only,
            balanced over combinations and sizes).

    Attributes:
        images: float32 [N, 3, S, S] in [−1, 1] (x = pixel/127.5 − 1).
        captions: N strings, one random caption per image.
        specs: N :class:`ShapeSpec` (with sizes) of what each image shows.
    """

    def __init__(self, config: ShapesConfig | None = None, split: str = "train") -> None:
        config = ShapesConfig() if config is None else config
        if not isinstance(config, ShapesConfig):
            raise ConfigError(f"config must be a ShapesConfig, got {type(config).__name__}")
        check_choice("shapes split", split, SPLITS)
        self.config, self.split = config, split
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, SPLITS.index(split)]))
        self.specs: list[ShapeSpec] = _split_specs(config, split, rng)
        pixels = _render_specs(self.specs, config.image_size, config.texture, config.jitter, rng)
        self.captions: list[str] = [caption(spec, rng) for spec in self.specs]
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(torch.float32)  # [N, 3, S, S]
        self.images: torch.Tensor = (images / 127.5 - 1.0).contiguous()

    def __len__(self) -> int:
        return len(self.specs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        return self.images[index], self.captions[index]

    def __repr__(self) -> str:
        c = self.config
        return f"ShapesDataset(split={self.split!r}, n={len(self)}, image_size={c.image_size}, seed={c.seed})"
