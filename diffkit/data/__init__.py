"""Data sets: the embedded handwritten digits and the generated captioned shapes (no download),
and image folders."""

from diffkit.data.digits import DigitsDataset, load_digits
from diffkit.data.folder import ImageFolder
from diffkit.data.shapes import (
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

__all__ = [
    "COLORS",
    "POSITIONS",
    "SHAPES",
    "SIZES",
    "DigitsDataset",
    "ImageFolder",
    "ShapeSpec",
    "ShapesConfig",
    "ShapesDataset",
    "caption",
    "heldout_combinations",
    "heldout_prompts",
    "load_digits",
    "parse_prompt",
    "render",
]
