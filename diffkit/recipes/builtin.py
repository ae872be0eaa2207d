"""Registers the built-in recipes of :mod:`diffkit.recipes` (``finetune``) through the hook a plugin uses.

(The demo recipes register in :mod:`diffkit.demos.builtin`.)
"""

from __future__ import annotations

from diffkit.hookspecs import hookimpl
from diffkit.recipes.finetune import finetune
from diffkit.registry import Registrar


@hookimpl
def diffkit_register_recipes(recipes: Registrar) -> None:
    recipes.add(
        "finetune", finetune,
        summary="fine-tune a pretrained pipeline (pipeline.pretrained=FOLDER) on an image folder (data.root=IMAGES)",
    )
