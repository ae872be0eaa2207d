"""What a recipe builds: its pipeline, its training data set and the conditions of its preview grids.

Shared by the run (:mod:`diffkit.recipes.run`) and by the check that runs before any work
(:mod:`diffkit.recipes.validate`, which builds the pipeline on the meta device).
"""

from __future__ import annotations

from typing import Any

import torch

from diffkit.demos.digits.data import DigitsDataset
from diffkit.demos.shapes.data import ShapesConfig, ShapesDataset, heldout_prompts
from diffkit.errors import ConfigError, UnknownNameError
from diffkit.io.image_folder import ImageFolder
from diffkit.models.conditioners.tokenizer import build_vocabulary
from diffkit.pipeline import Pipeline
from diffkit.recipes.base import RecipeDict, backbone_spec

DATA_SOURCES = ("digits", "folder", "shapes")


def build_pipeline(recipe: RecipeDict, *, autoencoder: Any = None, captions: Any = None) -> Pipeline:
    """The untrained :class:`~diffkit.Pipeline` a recipe describes (with a trained autoencoder).

    A conditioner option ``"vocabulary": "captions"`` becomes the word vocabulary of the
    training ``captions`` (:func:`~diffkit.models.conditioners.tokenizer.build_vocabulary`).
    """
    spec = dict(recipe["pipeline"])
    spec["backbone"] = backbone_spec(recipe)
    if autoencoder is not None:
        spec["autoencoder"] = autoencoder
    for key in ("schedule", "conditioner", "autoencoder"):
        value = spec.get(key)
        if isinstance(value, list):  # JSON has no tuples: ["name", {config}]
            spec[key] = (value[0], dict(value[1]))
    conditioner = spec.get("conditioner")
    if isinstance(conditioner, tuple) and conditioner[1].get("vocabulary") == "captions":
        if captions is None or isinstance(captions, torch.Tensor) or not all(isinstance(c, str) for c in captions):
            raise ConfigError('conditioner vocabulary "captions" needs training data with text captions')
        conditioner[1]["vocabulary"] = list(build_vocabulary(captions))
    return Pipeline(**spec)


def build_data(recipe: RecipeDict) -> Any:
    """The training data set a recipe names (``digits`` or an image ``folder``)."""
    data = dict(recipe["data"])
    name = data.pop("name")
    if name == "digits":
        return DigitsDataset(size=data.get("size", 8))
    if name == "folder":
        root = data.get("root")
        if not root:
            raise ConfigError("data.name=folder needs data.root=PATH (a folder of images)")
        return ImageFolder(root, data["size"], flip=bool(data.get("flip", False)), channels=data.get("channels", 3))
    if name == "shapes":
        return ShapesDataset(ShapesConfig(**data), split="train")  # held-out combinations excluded
    raise UnknownNameError("data source", name, DATA_SOURCES)


def preview_conditions(pipeline: Pipeline, n: int, recipe: RecipeDict) -> Any:
    """Conditioning inputs for a preview grid of ``n``: each class in turn, or the recipe's prompts."""
    conditioner = pipeline.conditioner
    if conditioner is None:
        return None
    num_classes = getattr(conditioner.config, "num_classes", None)
    if num_classes is not None:
        return torch.arange(n) % num_classes
    prompts = recipe["sample"].get("prompts")
    if not prompts and recipe["data"]["name"] == "shapes":  # the held-out combinations
        config = ShapesConfig(**{k: v for k, v in recipe["data"].items() if k != "name"})
        prompts = [text for text, _ in heldout_prompts(config, n_per_combination=1)]
    if prompts:
        return [prompts[i % len(prompts)] for i in range(n)]
    raise ConfigError("this recipe's conditioner needs sample.prompts for its preview grids")


def grid_rows(pipeline: Pipeline, n: int) -> int:
    """Images per grid row: one row per cycle of the classes, else a square."""
    num_classes = getattr(getattr(pipeline.conditioner, "config", None), "num_classes", None)
    return num_classes or max(1, round(n**0.5))
