"""What a recipe builds: its pipeline, its training data set and the conditions of its preview grids.

Shared by the run (:mod:`diffkit.recipes.run`) and by the check that runs before any work
(:mod:`diffkit.recipes.validate`, which builds the pipeline on the meta device, or loads a
pretrained one: :mod:`diffkit.recipes.finetune`).

The ``folder`` data source (:class:`~diffkit.io.image_folder.ImageFolder`) takes ``root``,
``size``, ``channels`` (default 3), ``flip``, ``labels`` (class labels from the sub-folders) and
``captions`` (the extension of the caption files beside the images, e.g. ``"txt"``); for a
pretrained pipeline ``size`` and ``channels`` may be null: the pipeline's.
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
from diffkit.recipes.finetune import image_shape, is_pretrained, load_pretrained_pipeline

DATA_SOURCES = ("digits", "folder", "shapes")


def build_pipeline(recipe: RecipeDict, *, autoencoder: Any = None, captions: Any = None) -> Pipeline:
    """The untrained :class:`~diffkit.Pipeline` a recipe describes (with a trained autoencoder).

    A conditioner option ``"vocabulary": "captions"`` becomes the word vocabulary of the
    training ``captions`` (:func:`~diffkit.models.conditioners.tokenizer.build_vocabulary`).
    A recipe with ``pipeline.pretrained`` gets the pipeline loaded from that folder, with its weights
    (:mod:`diffkit.recipes.finetune`).
    """
    if is_pretrained(recipe):
        return load_pretrained_pipeline(recipe)
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


def build_data(recipe: RecipeDict, *, pipeline: Pipeline | None = None, verify: bool = True) -> Any:
    """The training data set a recipe names (``digits``, ``shapes`` or an image ``folder``).

    ``pipeline``: the pretrained pipeline whose image size and channels a folder's null
    ``size`` and ``channels`` take. ``verify=False`` indexes a folder without opening its images
    (the captions are read either way): the check before a run.
    """
    data = dict(recipe["data"])
    name = data.pop("name")
    if name == "digits":
        return DigitsDataset(size=data.get("size", 8))
    if name == "folder":
        root = data.get("root")
        if not root:
            raise ConfigError("data.name=folder needs data.root=PATH (a folder of images)")
        channels, size = folder_image_shape(recipe, pipeline)
        return ImageFolder(
            root, size, flip=bool(data.get("flip", False)), channels=channels, labels=bool(data.get("labels", False)),
            captions=data.get("captions"), verify=verify,
        )
    if name == "shapes":
        return ShapesDataset(ShapesConfig(**data), split="train")  # held-out combinations excluded
    raise UnknownNameError("data source", name, DATA_SOURCES)


def folder_image_shape(recipe: RecipeDict, pipeline: Pipeline | None = None) -> tuple[int, int]:
    """(channels, size) of a folder source: ``data.channels`` (default 3) and ``data.size``, or where
    null, those of the pretrained ``pipeline`` (:func:`~diffkit.recipes.finetune.image_shape`)."""
    data = recipe["data"]
    channels, size = data.get("channels", 3), data.get("size")
    if channels is not None and size is not None:
        return channels, size
    shape = image_shape(pipeline) if pipeline is not None and is_pretrained(recipe) else None
    if shape is None:
        unset = [f"data.{key}" for key, value in (("size", size), ("channels", channels)) if value is None]
        why = "only a pretrained pipeline gives them" if pipeline is None or not is_pretrained(recipe) else (
            "the pretrained pipeline does not tell its image shape")
        raise ConfigError(f"recipe key {' and '.join(unset)}: null ({why}); set {' and '.join(unset)}")
    return (shape[0] if channels is None else channels), (shape[1] if size is None else size)


def sample_settings(pipeline: Pipeline, recipe: RecipeDict) -> tuple[int | None, float]:
    """(steps, guidance) of the preview and final grids: ``sample.steps`` and ``sample.guidance``, or
    where null the pipeline's ``default_steps`` (steps None) and ``default_guidance``."""
    sample = recipe["sample"]
    guidance = sample.get("guidance")
    return sample.get("steps"), float(pipeline.default_guidance if guidance is None else guidance)


def preview_conditions(pipeline: Pipeline, n: int, recipe: RecipeDict, data_cond: Any = None) -> Any:
    """Conditioning inputs for a preview grid of ``n``: each class in turn, or the recipe's prompts.

    ``data_cond``: the training data's conditions. Class labels cycle over the classes the data
    has (a pretrained class-conditional pipeline may know many more); without ``sample.prompts``
    a text pipeline previews the data's first distinct captions.
    """
    conditioner = pipeline.conditioner
    if conditioner is None:
        return None
    num_classes = getattr(conditioner.config, "num_classes", None)
    if num_classes is not None:
        if isinstance(data_cond, torch.Tensor) and data_cond.numel() and not data_cond.is_floating_point():
            num_classes = max(1, min(num_classes, int(data_cond.max()) + 1))
        return torch.arange(n) % num_classes
    prompts = recipe["sample"].get("prompts")
    if not prompts and recipe["data"]["name"] == "shapes":  # the held-out combinations
        config = ShapesConfig(**{k: v for k, v in recipe["data"].items() if k != "name"})
        prompts = [text for text, _ in heldout_prompts(config, n_per_combination=1)]
    if not prompts and isinstance(data_cond, (list, tuple)) and data_cond and isinstance(data_cond[0], str):
        prompts = list(dict.fromkeys(data_cond))[:n]  # the first captions, each once
    if prompts:
        return [prompts[i % len(prompts)] for i in range(n)]
    raise ConfigError("this recipe's conditioner needs sample.prompts for its preview grids")


def grid_rows(pipeline: Pipeline, n: int, cond: Any = None) -> int:
    """Images per grid row: one row per cycle of the classes (those ``cond`` cycles over), else a square."""
    num_classes = getattr(getattr(pipeline.conditioner, "config", None), "num_classes", None)
    if num_classes and isinstance(cond, torch.Tensor) and cond.numel() and not cond.is_floating_point():
        num_classes = min(num_classes, int(cond.max()) + 1)
    return num_classes or max(1, round(n**0.5))
