"""Deprecated (diffkit 0.1): the metrics moved to :mod:`diffkit.demos.digits`,
:mod:`diffkit.demos.shapes` and :mod:`diffkit.demos.frechet`."""

from diffkit.moved import moved_names

_DIGITS = ("DigitsClassifier", "DigitsTrainingConfig", "class_accuracy", "digits_fid")
_DIGITS += ("load_or_train_digits_classifier", "real_baseline_fid", "train_digits_classifier")
_SHAPES = ("ShapeClassifier", "ShapesEvaluator", "ShapeTrainingConfig")
_SHAPES += ("load_or_train_shape_classifier", "train_shape_classifier")
__getattr__ = moved_names(
    __name__,
    {
        **dict.fromkeys(_DIGITS, "diffkit.demos.digits"),
        **dict.fromkeys(_SHAPES, "diffkit.demos.shapes"),
        **dict.fromkeys(("frechet_distance", "frechet_distance_from_stats", "gaussian_stats"), "diffkit.demos.frechet"),
    },
)
