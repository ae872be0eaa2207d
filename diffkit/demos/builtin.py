"""Registers the built-in recipes through the same hook a third-party plugin uses."""

from __future__ import annotations

from diffkit.demos.digits.recipe import digits, digits_flow
from diffkit.demos.shapes.recipe import shapes, shapes_flow
from diffkit.hookspecs import hookimpl
from diffkit.registry import Registrar


@hookimpl
def diffkit_register_recipes(recipes: Registrar) -> None:
    recipes.add("digits", digits, summary="class-conditional UNet on the embedded 8×8 handwritten digits (the main demo)")
    recipes.add("digits-flow", digits_flow, summary="the digits UNet trained by flow matching (velocity, logit-normal t)")
    recipes.add("shapes", shapes, summary="latent text-to-image: KL autoencoder + DiT on captioned coloured shapes")
    recipes.add("shapes-flow", shapes_flow, summary="the shapes DiT trained by flow matching (velocity, logit-normal t)")
