"""Data sets: the embedded handwritten digits (no download) and image folders."""

from diffkit.data.digits import DigitsDataset, load_digits
from diffkit.data.folder import ImageFolder

__all__ = ["DigitsDataset", "ImageFolder", "load_digits"]
