"""A text-encoder conditioner from a diffusers pipeline folder (local files only).

:func:`from_pipeline_folder` reads the pipeline's ``text_encoder*`` and ``tokenizer*`` subfolders
with ``transformers``' ``from_pretrained`` (``local_files_only=True``; safetensors only unless
``allow_pickle``), and hands the loaded encoders to the conditioner as they are: the weights are
in memory once (transformers 5 loads them onto a meta-device model; transformers 4 without
``accelerate`` briefly holds the file's tensors and the model). The tokenizers are turned into
:class:`~diffkit.integrations.transformers.configs.TokenizerSpec` s and dropped. The options the
pipeline keeps outside the encoders come from ``model_index.json`` and the other components'
``config.json`` (SDXL's image size from the UNet and VAE, SD3's ``joint_attention_dim`` from the
transformer), and may be overridden by keyword.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from diffkit.errors import CheckpointError, ConfigError, UnknownNameError
from diffkit.integrations.transformers.configs import CONFIGS
from diffkit.integrations.transformers.extra import require
from diffkit.io.files import read_json_object
from diffkit.io.weights import aligned

PIPELINE_CONDITIONERS: dict[str, str] = {
    "StableDiffusionPipeline": "clip_text",
    "StableDiffusionImg2ImgPipeline": "clip_text",
    "StableDiffusionInpaintPipeline": "clip_text",
    "StableDiffusionXLPipeline": "sdxl_text",
    "StableDiffusionXLImg2ImgPipeline": "sdxl_text",
    "StableDiffusionXLInpaintPipeline": "sdxl_text",
    "PixArtAlphaPipeline": "t5_text",
    "PixArtSigmaPipeline": "t5_text",
    "StableDiffusion3Pipeline": "sd3_text",
    "StableDiffusion3Img2ImgPipeline": "sd3_text",
    "FluxPipeline": "flux_text",
    "FluxImg2ImgPipeline": "flux_text",
}
"""diffusers pipeline class (model_index.json's ``_class_name``) → the conditioner reproducing its encode_prompt."""

OPTIONAL = {("sdxl_text", "text_encoder"), ("sd3_text", "text_encoder_3")}
"""Encoders a pipeline may lack: SDXL's first CLIP (the refiner), SD3's T5."""

SETTING_KEYS = ("text_encoder", "tokenizer")


def conditioner_name_for(model_index: Mapping[str, Any]) -> str | None:
    """The registry name of the conditioner for a ``model_index.json`` (None: no text conditioner here)."""
    return PIPELINE_CONDITIONERS.get(str(model_index.get("_class_name")))


def from_components(name: str, components: Mapping[str, Any], **settings: Any) -> Any:
    """The conditioner ``name`` around already loaded ``transformers`` encoders and tokenizers.

    Args:
        name: the registry name (``"clip_text"``, ``"sdxl_text"``, ``"t5_text"``, ``"sd3_text"``,
            ``"flux_text"``).
        components: the pipeline's components by their diffusers names — ``text_encoder``,
            ``tokenizer``, ``text_encoder_2``, … (e.g. ``pipe.components`` of a loaded diffusers
            pipeline; other entries are ignored). The encoders become the conditioner's
            submodules as they are (frozen: ``requires_grad`` off, eval mode); the tokenizers
            are copied into the config as :class:`TokenizerSpec` s.
        **settings: the other config fields (``clip_skip``, ``drop_prob``, …).

    Returns the conditioner in eval mode.
    """
    from diffkit.integrations.transformers.conditioners import CONDITIONERS
    from diffkit.integrations.transformers.tokenizers import tokenizer_spec_of

    if name not in CONDITIONERS:
        raise UnknownNameError("text-encoder conditioner", name, list(CONDITIONERS))
    fixed = sorted(k for k in settings if k.startswith(SETTING_KEYS))
    if fixed:
        raise ConfigError(f"{fixed[0]} is a component (pass it in components), not a setting")
    conditioner_class = CONDITIONERS[name]
    config: dict[str, Any] = dict(settings)
    encoders: dict[str, Any] = {}
    for key, class_name in conditioner_class.encoder_classes.items():
        tokenizer_key = key.replace("text_encoder", "tokenizer")
        encoder, tokenizer = components.get(key), components.get(tokenizer_key)
        if encoder is None and tokenizer is None and (name, key) in OPTIONAL:
            continue
        if encoder is None or tokenizer is None:
            missing = " and ".join(k for k, v in ((key, encoder), (tokenizer_key, tokenizer)) if v is None)
            raise ConfigError(
                f"the {name} conditioner needs {key} (a {class_name}) and {tokenizer_key}; {missing} missing"
            )
        if type(encoder).__name__ != class_name:
            raise ConfigError(f"the {name} conditioner needs {key} to be a {class_name}, got {type(encoder).__name__}")
        config[tokenizer_key] = tokenizer_spec_of(tokenizer)
        config[key] = encoder.config.to_dict()
        encoders[key] = encoder
    return conditioner_class(CONFIGS[name].from_dict(config), encoders=encoders).eval()


def from_pipeline_folder(
    name: str,
    folder: str | os.PathLike[str],
    model_index: Mapping[str, Any] | None = None,
    *,
    dtype: torch.dtype | None = None,
    variant: str | None = None,
    allow_pickle: bool = False,
    **settings: Any,
) -> Any:
    """The conditioner ``name`` with the text encoders and tokenizers of a diffusers pipeline folder.

    Args:
        name: ``"clip_text"``, ``"sdxl_text"``, ``"t5_text"``, ``"sd3_text"`` or ``"flux_text"``
            (:func:`conditioner_name_for` picks it from ``model_index``).
        folder: the pipeline folder (``model_index.json`` and the subfolders ``text_encoder``,
            ``tokenizer``, ``text_encoder_2``, ``tokenizer_2``, ``text_encoder_3``, ``tokenizer_3``
            as the pipeline has them).
        model_index: the folder's ``model_index.json`` as a dict (read from the folder when None).
            A component is present when its entry names a class (``[library, class]``, not
            ``[null, null]``); encoders must be the class the conditioner needs.
        dtype: the encoders' dtype (default float32).
        variant: the weights variant (``model.fp16.safetensors``: ``"fp16"``).
        allow_pickle: also read ``pytorch_model.bin`` weights (with transformers' own loader);
            by default only safetensors are read.
        **settings: config fields other than the encoders and tokenizers (``clip_skip``,
            ``drop_prob``, ``max_sequence_length``, SDXL's ``original_size`` …); the defaults
            are the pipeline's (see the module docstring).

    Returns the conditioner in eval mode, on the CPU. Raises :class:`CheckpointError` for a
    missing or unreadable component, :class:`ConfigError` for a wrong class or setting.
    """
    from diffkit.integrations.transformers.conditioners import CONDITIONERS

    if name not in CONDITIONERS:
        raise UnknownNameError("text-encoder conditioner", name, list(CONDITIONERS))
    transformers = require()
    folder = Path(folder)
    if model_index is None:
        model_index = read_json_object(folder / "model_index.json", what="diffusers pipeline index")
    if not isinstance(model_index, Mapping):
        raise ConfigError(f"model_index must be the dict of model_index.json, got {type(model_index).__name__}")
    dtype = torch.float32 if dtype is None else dtype
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    components: dict[str, Any] = {}
    for key, class_name in CONDITIONERS[name].encoder_classes.items():
        tokenizer_key = key.replace("text_encoder", "tokenizer")
        present = [_present(folder, model_index, k) for k in (key, tokenizer_key)]
        if not all(present):
            if (name, key) in OPTIONAL and not any(present):
                continue
            missing = [k for k, here in zip((key, tokenizer_key), present) if not here]
            raise CheckpointError(
                f"{folder} has no {' and no '.join(missing)} (model_index.json and subfolders); the {name} "
                f"conditioner needs {key} ({class_name}) and {tokenizer_key}"
            )
        listed = model_index[key][1]
        if listed != class_name:
            raise ConfigError(f"{folder / key} holds a {listed}; the {name} conditioner needs a {class_name}")
        components[tokenizer_key] = _load_tokenizer(transformers, folder / tokenizer_key, model_index[tokenizer_key][1])
        components[key] = _load_encoder(transformers, class_name, folder / key, dtype, variant, allow_pickle)
    return from_components(name, components, **{**_defaults(name, folder, model_index), **settings})


def _present(folder: Path, model_index: Mapping[str, Any], key: str) -> bool:
    entry = model_index.get(key)
    listed = isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], str)
    if listed and not (folder / key).is_dir():
        raise CheckpointError(f"{folder}/model_index.json lists {key} ({entry[1]}), but {folder / key} is not a folder")
    return listed


def _load_tokenizer(transformers: Any, path: Path, class_name: str) -> Any:
    """The tokenizer class model_index names (when transformers has it), else AutoTokenizer; local files only."""
    base = getattr(transformers, "PreTrainedTokenizerBase", None)
    tokenizer_class = getattr(transformers, class_name, None)
    if not (isinstance(tokenizer_class, type) and base is not None and issubclass(tokenizer_class, base)):
        tokenizer_class = transformers.AutoTokenizer
    try:
        return tokenizer_class.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read the tokenizer in {path}: {exc}") from exc


def _load_encoder(
    transformers: Any, class_name: str, path: Path, dtype: torch.dtype, variant: str | None, allow_pickle: bool
) -> Any:
    major = int(str(transformers.__version__).split(".")[0])
    options: dict[str, Any] = {"dtype" if major >= 5 else "torch_dtype": dtype, "local_files_only": True}
    if variant is not None:
        options["variant"] = variant
    if not allow_pickle:
        options["use_safetensors"] = True
    try:
        encoder = getattr(transformers, class_name).from_pretrained(str(path), **options)
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read the {class_name} in {path}: {exc}") from exc
    for tensor in (*encoder.parameters(), *encoder.buffers()):  # computes as a saved-and-loaded copy does
        tensor.data = aligned(tensor.data)
    return encoder


def _config_json(folder: Path, component: str) -> dict[str, Any] | None:
    file = folder / component / "config.json"
    return read_json_object(file, what=f"{component} config") if file.is_file() else None


def _defaults(name: str, folder: Path, model_index: Mapping[str, Any]) -> dict[str, Any]:
    """The pipeline's own values of the settings (what its ``__call__`` and ``encode_prompt`` default to)."""
    pipeline = model_index.get("_class_name")
    if name == "t5_text":
        return {"max_sequence_length": 300 if pipeline == "PixArtSigmaPipeline" else 120}
    if name == "sd3_text":
        transformer = _config_json(folder, "transformer") or {}
        dim = transformer.get("joint_attention_dim", 4096)
        return {"joint_attention_dim": dim} if isinstance(dim, int) and not isinstance(dim, bool) else {}
    if name != "sdxl_text":
        return {}
    unet, vae = _config_json(folder, "unet"), _config_json(folder, "vae")
    sample_size = unet.get("sample_size") if unet is not None else None
    sample_size = sample_size if isinstance(sample_size, int) and not isinstance(sample_size, bool) else 128
    channels = vae.get("block_out_channels") if vae is not None else None
    factor = 2 ** (len(channels) - 1) if isinstance(channels, list) and channels else 8
    size = (sample_size * factor, sample_size * factor)
    out: dict[str, Any] = {"original_size": size, "target_size": size}
    zeros = model_index.get("force_zeros_for_empty_prompt", True)
    out["force_zeros_for_empty_prompt"] = zeros if isinstance(zeros, bool) else True
    if model_index.get("requires_aesthetics_score") is True:
        out["aesthetic_score"] = 6.0
    return out


text_conditioner_from_folder = from_pipeline_folder
"""The name :mod:`diffkit.integrations.diffusers.folders` imports (same function)."""
