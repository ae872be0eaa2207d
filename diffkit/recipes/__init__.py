"""Named training recipes (``diffkit train --recipe NAME``); see :mod:`diffkit.recipes.base`."""

from diffkit.recipes.base import apply_overrides, get_recipe, recipe_names, register_recipe
from diffkit.recipes.build import build_data, build_pipeline
from diffkit.recipes.run import train_recipe

__all__ = ["apply_overrides", "build_data", "build_pipeline", "get_recipe", "recipe_names", "register_recipe", "train_recipe"]
