"""The ``digits`` demo: the embedded UCI digits, their classifier judge, the recipe, its evaluation."""

from diffkit.demos.digits.data import DigitsDataset, load_digits
from diffkit.demos.digits.judge import (
    DigitsClassifier,
    DigitsTrainingConfig,
    class_accuracy,
    digits_fid,
    load_or_train_digits_classifier,
    real_baseline_fid,
    train_digits_classifier,
)

__all__ = ["DigitsClassifier", "DigitsDataset", "DigitsTrainingConfig", "class_accuracy", "digits_fid", "load_digits",
           "load_or_train_digits_classifier", "real_baseline_fid", "train_digits_classifier"]
