"""Registers the built-in conditioners through the same hook a third-party plugin uses."""

from __future__ import annotations

from diffkit.hookspecs import hookimpl
from diffkit.models.conditioners.class_label import ClassLabelConfig, build_class_label
from diffkit.models.conditioners.concat import ConcatConfig, build_concat
from diffkit.models.conditioners.text import TextConfig, build_text
from diffkit.models.conditioners.timestep import TimestepConfig, build_timestep
from diffkit.registry import Registrar


@hookimpl
def diffkit_register_conditioners(conditioners: Registrar) -> None:
    conditioners.add("class_label", build_class_label, options=ClassLabelConfig,
                     paper="Ho & Salimans 2022, Classifier-Free Diffusion Guidance; Peebles & Xie 2023 (label drop)")
    conditioners.add("timestep", build_timestep, options=TimestepConfig, paper="Ho et al. 2020; Dhariwal & Nichol 2021")
    conditioners.add("concat", build_concat, options=ConcatConfig,
                     paper="Saharia et al. 2022, Image Super-Resolution via Iterative Refinement (SR3)")
    conditioners.add("text", build_text, options=TextConfig,
                     paper="Rombach et al. 2022, High-Resolution Image Synthesis with Latent Diffusion Models (§3.3)")
