"""Sample-quality metrics: the Fréchet distance and the digits classifier's FID and accuracy."""

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

__all__ = [
    "DigitsClassifier",
    "DigitsTrainingConfig",
    "class_accuracy",
    "digits_fid",
    "frechet_distance",
    "frechet_distance_from_stats",
    "gaussian_stats",
    "load_or_train_digits_classifier",
    "real_baseline_fid",
    "train_digits_classifier",
]
