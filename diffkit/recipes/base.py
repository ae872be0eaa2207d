"""Recipes: named, editable training configurations.

A recipe is plain data (JSON-ready nested dicts) saying what to build and how to train it:

    {
      "data": {"name": "digits", "size": 8},
      "pipeline": {"backbone": "unet", "schedule": ["cosine", {}], "conditioner": [...],
                   "parameterization": "v", "sampler": "unipc", ...},
      "backbones": {"unet": {...config...}, "dit": {...config...}},   # the choices --backbone picks from
      "train": {...TrainConfig fields...},
      "sample": {"n": 100, "steps": 20, "guidance": 2.0}
    }

so a user copies one, edits it, or overrides single keys on the command line:
``diffkit train --recipe digits train.steps=500 backbones.unet.block_out_channels=[64,128]``.
Overrides name existing keys only (a typo gets close matches); values are read as JSON,
falling back to the plain string.

A recipe may instead fine-tune a pretrained pipeline: its pipeline section names a folder
(``"pipeline": {"pretrained": "FOLDER", "sampler": null}``, ``"backbones": {}``), a diffusers or
diffkit pipeline folder whose weights training starts from; the built-in ``finetune`` recipe
has every key, with placeholders to set:
``diffkit train --recipe finetune pipeline.pretrained=FOLDER data.root=IMAGES --out RUN``
(:mod:`diffkit.recipes.finetune`).
"""

from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from diffkit import registry
from diffkit.errors import ConfigError, UnknownNameError
from diffkit.training.config import TrainConfig

RecipeDict = dict[str, Any]

# Recipes registered with the deprecated decorator (diffkit 0.1); the registry is their home now.
_DECORATED: dict[str, Callable[[], RecipeDict]] = {}


def register_recipe(name: str) -> Callable[[Callable[[], RecipeDict]], Callable[[], RecipeDict]]:
    """Deprecated decorator (diffkit 0.1): register ``fn() -> recipe dict`` as ``name``.

    Recipes are a registry kind now: implement ``diffkit_register_recipes(recipes)`` and call
    ``recipes.add(name, fn)`` in a plugin, like every other component.
    """
    warnings.warn(
        "register_recipe is deprecated: register recipes with the diffkit_register_recipes hook",
        DeprecationWarning,
        stacklevel=2,
    )

    def add(fn: Callable[[], RecipeDict]) -> Callable[[], RecipeDict]:
        _DECORATED[name] = fn
        return fn

    return add


def recipe_names() -> list[str]:
    """The names of the known recipes (built-in and plugins')."""
    return sorted({*registry.names("recipe"), *_DECORATED})


def get_recipe(name: str, overrides: Sequence[str] = (), *, backbone: str | None = None) -> RecipeDict:
    """A fresh copy of recipe ``name`` with ``KEY=VALUE`` overrides and an optional backbone choice."""
    if name in _DECORATED and name not in registry.names("recipe"):
        make, source = _DECORATED[name], f"recipe {name!r}"
    else:
        entry = registry.get_entry("recipe", name)  # unknown names get close matches
        make, source = entry.obj, f"recipe {name!r} ({entry.origin.describe()})"
    recipe = make()
    if not isinstance(recipe, Mapping) or not isinstance(recipe.get("pipeline"), Mapping):
        raise ConfigError(f"{source} returned {type(recipe).__name__}; a recipe is a dict with a 'pipeline' section")
    recipe = copy.deepcopy(dict(recipe))
    recipe["name"] = name
    recipe["train"] = _complete_train_section(recipe.get("train", {}))
    if backbone is not None:
        choices = recipe.get("backbones", {})
        if backbone not in choices:
            raise UnknownNameError(f"backbone of recipe {name!r}", backbone, sorted(choices))
        recipe["pipeline"]["backbone"] = backbone
    return apply_overrides(recipe, overrides)


def _complete_train_section(train: Mapping[str, Any]) -> dict[str, Any]:
    """Every :class:`~diffkit.training.TrainConfig` field, the recipe's values over the defaults.

    So any training setting can be overridden (``train.accumulation=4``) and ``recipe.json``
    records the whole configuration a run used.
    """

    defaults = TrainConfig().to_dict()
    unknown = sorted(set(train) - set(defaults))
    if unknown:
        raise UnknownNameError("train setting", unknown[0], sorted(defaults))
    return {**defaults, **train}


def parse_value(text: str) -> Any:
    """JSON when it parses (numbers, lists, true/false/null), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def apply_overrides(recipe: RecipeDict, overrides: Sequence[str]) -> RecipeDict:
    """Set dotted keys (``train.steps=500``) in a copy of ``recipe``; only existing keys."""
    recipe = copy.deepcopy(recipe)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"an override must look like KEY=VALUE (e.g. train.steps=500), got {item!r}")
        node: Any = recipe
        parts = key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, Mapping):
                where = ".".join(parts[:depth])
                raise ConfigError(f"cannot set {key!r}: {where!r} is a value, not a section")
            if part not in node:
                where = ".".join(parts[:depth]) or "the recipe"
                raise UnknownNameError(f"key in {where}", part, sorted(node))
            if depth == len(parts) - 1:
                node[part] = parse_value(text)
            else:
                node = node[part]
    return recipe


def backbone_spec(recipe: RecipeDict) -> tuple[str, dict[str, Any]]:
    """(registry name, config) of the recipe's chosen backbone."""
    name = recipe["pipeline"]["backbone"]
    return name, dict(recipe["backbones"][name])
