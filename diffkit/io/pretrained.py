"""``diffkit.load_pretrained``: one entry point for every folder diffkit reads.

A folder with ``pipeline.json`` is a saved :class:`~diffkit.pipeline.Pipeline`; one with
``diffkit.json`` a diffkit component folder (:mod:`diffkit.io.components`); one with a
diffusers ``config.json`` a diffusers model, read through the converter registered for its
``_class_name`` (:mod:`diffkit.io.converters`); one with a diffusers ``model_index.json`` a
whole diffusers pipeline, read as a :class:`~diffkit.pipeline.Pipeline`
(:mod:`diffkit.integrations.diffusers.folders`). ``device`` and ``dtype`` are checked before
anything is read, and files are only read, never written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffkit.errors import CheckpointError, ConfigError, UnknownNameError
from diffkit.io.components import CONFIG_FILE, build_with_weights, check_weights_types, load_component
from diffkit.io.converters import DIFFUSERS_FORMATS, converter_for
from diffkit.io.files import read_json_object
from diffkit.io.records import check_numbers, naming_errors, short
from diffkit.io.state_dicts import check_device, check_dtype
from diffkit.io.weights import diffusers_weight_names, read_weights
from diffkit.pipeline import PIPELINE_FILE, load_pipeline

# -- loading ----------------------------------------------------------------------------------


def load_pretrained(
    path: str | os.PathLike[str],
    *,
    subfolder: str | None = None,
    allow_pickle: bool = False,
    variant: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    allow_nonfinite: bool = False,
) -> nn.Module:
    """The diffkit module stored in ``path`` (a diffkit pipeline, component or diffusers model folder), in eval mode.

    A folder written by :meth:`diffkit.Pipeline.save` gives back the :class:`~diffkit.Pipeline`, and so
    does a diffusers pipeline folder (``model_index.json``; the supported classes are
    :func:`diffkit.integrations.diffusers.folders.supported_pipelines`).

    Args:
        path: a folder with ``diffkit.json`` (written by :func:`save_pretrained`) or with a
            diffusers ``config.json`` (``_class_name`` one of :data:`DIFFUSERS_FORMATS`).
        subfolder: a component of a diffusers pipeline folder, e.g. ``"vae"`` or ``"unet"``.
        allow_pickle: also read ``.bin`` pickle weights (with ``torch.load(weights_only=True)``)
            when no safetensors file is there. Off by default: unpickling can run code.
        variant: diffusers weight variant, e.g. ``"fp16"`` → ``diffusion_pytorch_model.fp16.safetensors``.
        device, dtype: where and in which floating dtype the module ends up (default: CPU,
            float32). Both are checked before any file is read: a device this machine lacks or
            a non-floating dtype is a :class:`~diffkit.errors.ConfigError`.
        allow_nonfinite: load weights holding NaN or ±inf (refused by default, naming them).
            Integer or bool tensors where the model has floating-point ones are always refused.

    Raises :class:`~diffkit.errors.CheckpointError` for missing, refused, corrupted, non-finite
    or non-fitting weights and malformed config files; :class:`~diffkit.errors.UnknownNameError`
    for an unsupported diffusers class or a registry entry that is not installed (naming the
    plugin recorded at save time); :class:`~diffkit.errors.ConfigError` for bad arguments and
    for a diffusers config the converter cannot represent.
    """
    device, dtype = check_device(device), check_dtype(dtype)
    _check_flags(allow_pickle=allow_pickle, allow_nonfinite=allow_nonfinite)
    for what, value in (("subfolder", subfolder), ("variant", variant)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{what} must be a string or None, got {value!r}")
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"path must be a folder path (str or os.PathLike), got {path!r}")
    folder = Path(path)
    if subfolder is not None:
        folder = folder / subfolder
    if not folder.is_dir():
        what = "a file; pass the folder that holds it" if folder.exists() else "not found"
        raise CheckpointError(f"{folder} is {what}")
    if (folder / PIPELINE_FILE).exists():
        return load_pipeline(folder, device=device, dtype=dtype, allow_nonfinite=allow_nonfinite)
    if (folder / CONFIG_FILE).exists():
        module = load_component(folder, allow_pickle=allow_pickle, allow_nonfinite=allow_nonfinite)
    elif (folder / "config.json").exists():
        module = _load_diffusers(folder, allow_pickle=allow_pickle, variant=variant, allow_nonfinite=allow_nonfinite)
    elif (folder / "model_index.json").exists():
        from diffkit.integrations.diffusers.folders import load_pipeline_folder  # the pipeline level, lazily

        module = load_pipeline_folder(
            folder, allow_pickle=allow_pickle, variant=variant, allow_nonfinite=allow_nonfinite
        )
    else:
        present = sorted(p.name for p in folder.iterdir())[:20]
        raise CheckpointError(
            f"{folder} is not a model folder: looked for {CONFIG_FILE} (diffkit), config.json (diffusers "
            f"model) and model_index.json (diffusers pipeline); found {present or 'nothing'}"
        )
    return module.to(device=device, dtype=dtype).eval()


def _check_flags(**flags: Any) -> None:
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be True or False, got {value!r}")


# -- diffusers model folders ---------------------------------------------------------------------------


def _load_diffusers(folder: Path, *, allow_pickle: bool, variant: str | None, allow_nonfinite: bool) -> nn.Module:
    config_file = folder / "config.json"
    config_dict = read_json_object(config_file, what="diffusers model config")
    check_numbers(config_dict, where=str(config_file))
    class_name = config_dict.get("_class_name")
    if class_name is None:
        raise CheckpointError(f"{config_file} has no _class_name: not a diffusers model config")
    if not isinstance(class_name, str):
        raise CheckpointError(f"{config_file}: _class_name must be a string, got {short(class_name)}")
    converter = converter_for(class_name)
    if converter is None:
        raise UnknownNameError("diffusers model class (in config.json's _class_name)", class_name, DIFFUSERS_FORMATS)
    with naming_errors(config_file):
        config = converter.config_from_diffusers(config_dict)
    state_dict, _ = read_weights(folder, diffusers_weight_names(variant), allow_pickle=allow_pickle)
    check_weights_types(state_dict, what=f"the weights in {folder}", allow_nonfinite=allow_nonfinite)
    with naming_errors(folder):
        weights = converter.convert_state_dict(state_dict, config)
        config_dict = config.to_dict()
    del state_dict  # what the converter kept is in weights; the rest (e.g. unfused q, k, v) is freed now
    # the values were checked above, before converting; checking them again would only cost time
    return build_with_weights(
        converter.kind, converter.name, config_dict, weights, source=config_file,
        what=f"the converted weights of {folder}", allow_nonfinite=True,
    )
