"""Pretrained ``transformers`` text encoders as diffkit conditioners (``pip install 'diffkit[transformers]'``).

Registered conditioners (kind ``"conditioner"``), each reproducing a diffusers 0.42 pipeline's
``encode_prompt`` exactly (see :mod:`~diffkit.integrations.transformers.conditioners`):

``clip_text`` (Stable Diffusion 1/2), ``sdxl_text`` (SDXL, base and refiner), ``t5_text``
(PixArt-α/Σ), ``sd3_text`` (Stable Diffusion 3), ``flux_text`` (FLUX.1).

Build one from a diffusers pipeline folder with :func:`from_pipeline_folder`; save it with
``diffkit.save_pretrained(conditioner, folder, kind="conditioner")`` and load it back with
``diffkit.load_pretrained(folder)`` — the tokenizers travel inside the config (see
:mod:`~diffkit.integrations.transformers.configs`).

The names load on first use (PEP 562): ``import diffkit`` and the registration of these
conditioners import neither ``transformers`` nor ``tokenizers``.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "ClipTextConfig": "configs", "SdxlTextConfig": "configs", "T5TextConfig": "configs",
    "Sd3TextConfig": "configs", "FluxTextConfig": "configs", "TokenizerSpec": "configs", "CONFIGS": "configs",
    "encoder_config": "configs",
    "TransformersTextConditioner": "conditioners", "ClipTextConditioner": "conditioners",
    "SdxlTextConditioner": "conditioners", "T5TextConditioner": "conditioners", "Sd3TextConditioner": "conditioners",
    "FluxTextConditioner": "conditioners", "CONDITIONERS": "conditioners", "check_prompts": "conditioners",
    "TextTokenizer": "tokenizers", "tokenizer_spec_of": "tokenizers",
    "from_pipeline_folder": "folders", "from_components": "folders", "conditioner_name_for": "folders",
    "PIPELINE_CONDITIONERS": "folders", "text_conditioner_from_folder": "folders",
    "INSTALL": "extra",
}

__all__ = [
    "CONDITIONERS",
    "CONFIGS",
    "INSTALL",
    "PIPELINE_CONDITIONERS",
    "ClipTextConditioner",
    "ClipTextConfig",
    "FluxTextConditioner",
    "FluxTextConfig",
    "Sd3TextConditioner",
    "Sd3TextConfig",
    "SdxlTextConditioner",
    "SdxlTextConfig",
    "T5TextConditioner",
    "T5TextConfig",
    "TextTokenizer",
    "TokenizerSpec",
    "TransformersTextConditioner",
    "check_prompts",
    "conditioner_name_for",
    "encoder_config",
    "from_components",
    "from_pipeline_folder",
    "text_conditioner_from_folder",
    "tokenizer_spec_of",
]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
