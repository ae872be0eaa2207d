"""The registry's build functions of the text-encoder conditioners: they import transformers when called.

``diffkit.models.conditioners.builtin`` registers these with their config classes; registering
imports neither ``transformers`` nor the conditioners. Building one without transformers
installed is a :class:`~diffkit.errors.ConfigError` naming ``pip install 'diffkit[transformers]'``.
"""

from __future__ import annotations

from typing import Any

import attrs

from diffkit.errors import ConfigError
from diffkit.integrations.transformers.configs import (
    CONFIGS,
    ClipTextConfig,
    FluxTextConfig,
    Sd3TextConfig,
    SdxlTextConfig,
    T5TextConfig,
)
from diffkit.integrations.transformers.extra import require
from diffkit.models.conditioners.base import config_signature


def build(name: str, config: dict[str, Any]) -> Any:
    """The conditioner ``name`` of the config dict, its encoders randomly initialised (weights come by loading)."""
    require("transformers")
    config_class = CONFIGS[name]
    missing = [f.name for f in attrs.fields(config_class) if f.default is attrs.NOTHING and f.name not in config]
    if missing:
        raise ConfigError(
            f"the {name} conditioner wraps pretrained text encoders; its config needs {', '.join(missing)}. "
            f"Build it from a diffusers pipeline folder (diffkit.integrations.transformers.from_pipeline_folder"
            f"({name!r}, folder)) or load a saved one (diffkit.load_pretrained)"
        )
    from diffkit.integrations.transformers.conditioners import CONDITIONERS

    return CONDITIONERS[name](config_class.from_dict(config))


def build_clip_text(**config: Any) -> Any:
    """Stable Diffusion 1/2 prompts: a pretrained CLIP text encoder, as StableDiffusionPipeline.encode_prompt."""
    return build("clip_text", config)


def build_sdxl_text(**config: Any) -> Any:
    """SDXL prompts: two pretrained CLIP encoders and the size time ids, as StableDiffusionXLPipeline."""
    return build("sdxl_text", config)


def build_t5_text(**config: Any) -> Any:
    """PixArt prompts: a pretrained T5 encoder with the token mask, as PixArtAlphaPipeline.encode_prompt."""
    return build("t5_text", config)


def build_sd3_text(**config: Any) -> Any:
    """SD3 prompts: CLIP-L, CLIP-G and T5 (optional), as StableDiffusion3Pipeline.encode_prompt."""
    return build("sd3_text", config)


def build_flux_text(**config: Any) -> Any:
    """FLUX.1 prompts: pooled CLIP and T5 tokens, as FluxPipeline.encode_prompt."""
    return build("flux_text", config)


for _function, _config in (
    (build_clip_text, ClipTextConfig), (build_sdxl_text, SdxlTextConfig), (build_t5_text, T5TextConfig),
    (build_sd3_text, Sd3TextConfig), (build_flux_text, FluxTextConfig),
):
    _function.__signature__ = config_signature(_config)  # type: ignore[attr-defined]
del _function, _config
