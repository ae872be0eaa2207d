"""Sample-quality metrics: the Fréchet distance, the digits classifier's FID and accuracy, and
prompt adherence on the generated shapes (:class:`ShapesEvaluator`)."""

from diffkit.metrics.digits import (
    DigitsClassifier,
    DigitsTrainingConfig,
    class_accuracy,
    digits_fid,
    load_or_train_digits_classifier,
    real_baseline_fid,
    train_digits_classifier,
)
from diffkit.metrics.frechet import frechet_distance, frechet_distance_from_stats, gaussian_stats
from diffkit.metrics.shapes import (
    ShapeClassifier,
    ShapesEvaluator,
    ShapeTrainingConfig,
    load_or_train_shape_classifier,
    train_shape_classifier,
)

__all__ = [
    "DigitsClassifier",
    "DigitsTrainingConfig",
    "ShapeClassifier",
    "ShapeTrainingConfig",
    "ShapesEvaluator",
    "class_accuracy",
    "digits_fid",
    "frechet_distance",
    "frechet_distance_from_stats",
    "gaussian_stats",
    "load_or_train_digits_classifier",
    "load_or_train_shape_classifier",
    "real_baseline_fid",
    "train_digits_classifier",
    "train_shape_classifier",
]
