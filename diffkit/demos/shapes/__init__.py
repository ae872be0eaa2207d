"""The ``shapes`` demo: generated captioned shapes, their adherence judge, the recipe, its evaluation."""

from diffkit.demos.shapes.data import (
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
from diffkit.demos.shapes.judge import (
    ShapeClassifier,
    ShapesEvaluator,
    ShapeTrainingConfig,
    load_or_train_shape_classifier,
    train_shape_classifier,
)

__all__ = ["COLORS", "POSITIONS", "SHAPES", "SIZES", "ShapeClassifier", "ShapeSpec", "ShapeTrainingConfig",
           "ShapesConfig", "ShapesDataset", "ShapesEvaluator", "caption", "heldout_combinations", "heldout_prompts",
           "parse_prompt", "render", "train_shape_classifier", "load_or_train_shape_classifier"]
