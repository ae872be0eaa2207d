"""Registers the built-in conditioners through the same hook a third-party plugin uses.

The text-encoder conditioners of :mod:`diffkit.integrations.transformers` register here too; their
configs and build functions import ``transformers`` only when one is built (an optional extra).
"""

from __future__ import annotations

from diffkit.hookspecs import hookimpl
from diffkit.integrations.transformers import builders as transformers_builders
from diffkit.integrations.transformers import configs as transformers_configs
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
    conditioners.add("clip_text", transformers_builders.build_clip_text, options=transformers_configs.ClipTextConfig,
                     paper="Radford et al. 2021, CLIP; Rombach et al. 2022 (Stable Diffusion)")
    conditioners.add("sdxl_text", transformers_builders.build_sdxl_text, options=transformers_configs.SdxlTextConfig,
                     paper="Podell et al. 2023, SDXL: Improving Latent Diffusion Models (§2.1, §2.2)")
    conditioners.add("t5_text", transformers_builders.build_t5_text, options=transformers_configs.T5TextConfig,
                     paper="Raffel et al. 2020, T5; Chen et al. 2023, PixArt-α")
    conditioners.add("sd3_text", transformers_builders.build_sd3_text, options=transformers_configs.Sd3TextConfig,
                     paper="Esser et al. 2024, Scaling Rectified Flow Transformers (SD3, §5.1)")
    conditioners.add("flux_text", transformers_builders.build_flux_text, options=transformers_configs.FluxTextConfig,
                     paper="Black Forest Labs 2024, FLUX.1")
