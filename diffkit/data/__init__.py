"""Deprecated (diffkit 0.1): the data sets moved to :mod:`diffkit.demos.digits`,
:mod:`diffkit.demos.shapes` and :mod:`diffkit.io.image_folder`."""

from diffkit.moved import moved_names

_SHAPES = ("COLORS", "POSITIONS", "SHAPES", "SIZES", "ShapesConfig", "ShapesDataset", "ShapeSpec", "caption")
_SHAPES += ("heldout_combinations", "heldout_prompts", "parse_prompt", "render")
__getattr__ = moved_names(
    __name__,
    {
        "DigitsDataset": "diffkit.demos.digits",
        "load_digits": "diffkit.demos.digits",
        "ImageFolder": "diffkit.io.image_folder",
        **dict.fromkeys(_SHAPES, "diffkit.demos.shapes"),
    },
)
