"""Check a whole recipe before any work is spent on it.

``diffkit train`` trains for minutes to hours before it samples its preview grids, writes the
final pictures or evaluates; a bad value in those late sections would surface only then, after
checkpoints were written. :func:`validate_recipe` checks every section up front:

* its shape: a JSON object with the sections ``data``, ``pipeline``, ``backbones``, ``train``
  and ``sample`` (``autoencoder`` for latent recipes), each an object;
* ``train`` as a :class:`~diffkit.training.TrainConfig`, ``autoencoder.train`` as an
  :class:`~diffkit.training.autoencoder.AutoencoderTrainConfig`;
* ``pipeline``, ``backbones`` and ``autoencoder.config`` by building every component with its
  config — the networks on PyTorch's ``meta`` device, which checks the configs and shapes
  without allocating weights; a ``pipeline.pretrained`` folder is instead loaded, once, and
  the run trains that loaded pipeline (:mod:`diffkit.recipes.finetune` says why);
* ``sample``: the preview and evaluation settings (counts, steps, guidance, prompts);
* ``data``: the source name and its settings. An image ``folder`` is indexed (its files listed,
  no image opened) and its captions read, so that a folder without images, missing caption
  files, or conditions that do not fit the pipeline's conditioner (class labels, text, none)
  are refused here; nothing is generated.

Every problem is a :class:`~diffkit.errors.ConfigError` (or
:class:`~diffkit.errors.UnknownNameError`) naming the recipe key, the value and what is valid.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from diffkit import registry
from diffkit.demos.shapes.data import ShapesConfig
from diffkit.errors import ConfigError, DiffkitError, UnknownNameError
from diffkit.recipes.build import DATA_SOURCES, build_data, build_pipeline, preview_conditions
from diffkit.recipes.finetune import image_shape, is_pretrained, load_pretrained_pipeline
from diffkit.schedules.flow import FlowSchedule
from diffkit.training.autoencoder import AutoencoderTrainConfig
from diffkit.training.config import TrainConfig
from diffkit.training.objectives import FLOW
from diffkit.validators import is_integer

SECTIONS = ("data", "pipeline", "backbones", "train", "sample")

# sample section: key → (check, description of what is valid); all optional except n, steps, guidance
_REQUIRED_SAMPLE_KEYS = ("n", "steps", "guidance")


def validate_recipe(recipe: Any) -> Any:
    """Raise a named :class:`~diffkit.errors.ConfigError` for anything wrong in ``recipe``.

    Returns the recipe's pipeline built on the meta device (no weights), for checks that need
    its shapes; for a recipe with ``pipeline.pretrained`` the pipeline loaded from that folder,
    with its weights, which the run then trains.
    """
    if not isinstance(recipe, Mapping):
        raise ConfigError(f"a recipe must be a JSON object of sections, got {type(recipe).__name__}")
    missing = [name for name in SECTIONS if name not in recipe]
    if missing:
        raise ConfigError(f"the recipe lacks the section(s) {', '.join(missing)} (a recipe has {', '.join(SECTIONS)})")
    for name in (*SECTIONS, *(("autoencoder",) if "autoencoder" in recipe else ())):
        if not isinstance(recipe[name], Mapping):
            raise ConfigError(f"recipe section {name!r} must be an object {{...}}, got {_short(recipe[name])}")
    _validate_train(recipe)
    _validate_sample(recipe["sample"])
    _validate_data(recipe["data"])
    pipeline = load_pretrained_pipeline(recipe) if is_pretrained(recipe) else _validate_components(recipe)
    data_cond = _validate_folder(recipe, pipeline) if recipe["data"]["name"] == "folder" else None
    _validate_previews(recipe, pipeline, data_cond)
    return pipeline


def _validate_train(recipe: Mapping[str, Any]) -> None:
    _build_config(TrainConfig, recipe["train"], "train")
    if "autoencoder" in recipe:
        section = recipe["autoencoder"]
        for key in ("config", "train"):
            if not isinstance(section.get(key), Mapping):
                raise ConfigError(f"recipe key autoencoder.{key} must be an object {{...}}, got {_short(section.get(key))}")
        _build_config(AutoencoderTrainConfig, section["train"], "autoencoder.train")


def _build_config(cls: type, values: Mapping[str, Any], where: str) -> Any:
    import attrs

    valid = [field.name for field in attrs.fields(cls)]
    for key in values:
        if key not in valid:
            raise UnknownNameError(f"key in {where}", key, valid)
    try:
        return cls(**values)
    except DiffkitError as error:
        raise ConfigError(f"recipe section {where}: {error}") from error
    except (TypeError, ValueError) as error:  # a converter or comparison given the wrong type
        raise ConfigError(f"recipe section {where}: a value has the wrong type ({error})") from error


def _validate_sample(sample: Mapping[str, Any]) -> None:
    missing = [key for key in _REQUIRED_SAMPLE_KEYS if key not in sample]
    if missing:
        raise ConfigError(f"recipe section sample lacks {', '.join(missing)}")
    checks = {
        "n": _positive_int, "steps": _or_null(_positive_int), "eval_n": _positive_int,
        "eval_per_combination": _positive_int, "guidance": _or_null(_guidance), "prompts": _prompts,
    }
    for key, value in sample.items():
        if key not in checks:
            raise UnknownNameError("key in sample", key, sorted(checks))
        checks[key](f"sample.{key}", value)


def _or_null(check: Any) -> Any:
    """``check``, with null allowed (sample.steps, sample.guidance: the pipeline's default)."""

    def checked(key: str, value: Any) -> None:
        if value is not None:
            check(key, value)

    return checked


def _positive_int(key: str, value: Any) -> None:
    if not is_integer(value) or not 1 <= value <= 10**7:
        raise ConfigError(f"recipe key {key} must be an integer in [1, 10000000], got {_short(value)}")


def _guidance(key: str, value: Any) -> None:
    ok = not isinstance(value, bool) and isinstance(value, numbers.Real) and math.isfinite(value)
    if not ok or not 0 <= value <= 1000:
        raise ConfigError(
            f"recipe key {key} must be a number in [0, 1000] (1 = no guidance, 0 = unconditional), got {_short(value)}"
        )


def _prompts(key: str, value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not value or not all(isinstance(p, str) and p.strip() for p in value):
        raise ConfigError(f"recipe key {key} must be null or a non-empty list of non-empty strings, got {_short(value)}")


def _validate_data(data: Mapping[str, Any]) -> None:
    name = data.get("name")
    if not isinstance(name, str):
        raise ConfigError(f"recipe key data.name must be one of {', '.join(DATA_SOURCES)}, got {_short(name)}")
    settings = {k: v for k, v in data.items() if k != "name"}
    if name == "digits":
        for key in settings:
            if key != "size":
                raise UnknownNameError("key in data (digits)", key, ["name", "size"])
        size = settings.get("size", 8)
        if not is_integer(size) or not 4 <= size <= 256:
            raise ConfigError(f"recipe key data.size must be an integer in [4, 256], got {_short(size)}")
    elif name == "shapes":
        _build_config(ShapesConfig, settings, "data")
    elif name == "folder":
        _validate_folder_keys(settings)
    else:
        raise UnknownNameError("data source (data.name)", name, DATA_SOURCES)


_FOLDER_KEYS = ("root", "size", "channels", "flip", "labels", "captions")


def _validate_folder_keys(settings: Mapping[str, Any]) -> None:
    for key in settings:
        if key not in _FOLDER_KEYS:
            raise UnknownNameError("key in data (folder)", key, ["name", *_FOLDER_KEYS])
    root = settings.get("root")
    if root is None:
        raise ConfigError("recipe key data.root is not set: pass data.root=PATH, a folder of images")
    if not isinstance(root, str) or not root or not Path(root).is_dir():
        raise ConfigError(f"recipe key data.root must name an existing folder of images, got {_short(root)}")
    size = settings.get("size")
    if size is not None and (not is_integer(size) or not 1 <= size <= 16384):
        raise ConfigError(f"recipe key data.size must be an integer in [1, 16384] (pixels), got {_short(size)}")
    channels = settings.get("channels", 3)
    if channels is not None and (not is_integer(channels) or channels not in (1, 3)):
        raise ConfigError(f"recipe key data.channels must be 1 (grayscale) or 3 (RGB), got {_short(channels)}")
    for key in ("flip", "labels"):
        if not isinstance(settings.get(key, False), bool):
            raise ConfigError(f"recipe key data.{key} must be true or false, got {_short(settings[key])}")
    captions = settings.get("captions")
    if captions is not None and not isinstance(captions, str):
        raise ConfigError(
            f"recipe key data.captions must be null or the extension of the caption files (e.g. txt), got "
            f"{_short(captions)}"
        )
    if captions is not None and settings.get("labels", False):
        raise ConfigError(
            "recipe keys data.labels=true and data.captions: an image has class labels (its sub-folder) or a caption "
            "(its text file), not both; set one of them"
        )


def _validate_folder(recipe: Mapping[str, Any], pipeline: Any) -> Any:
    """Index the image folder (no image opened; captions read) and check it fits the pipeline.

    Returns the data's conditions (labels tensor, captions list or None) for the preview check.
    """
    data = recipe["data"]
    pretrained = is_pretrained(recipe)
    if pretrained:
        shape = image_shape(pipeline)
        for key, value, own in (("channels", data.get("channels", 3), shape and shape[0]),
                                ("size", data.get("size"), shape and shape[1])):
            if value is not None and shape is not None and value != own:
                raise ConfigError(
                    f"recipe key data.{key}={value}, but the pretrained pipeline trains on {shape[0]}-channel "
                    f"{shape[1]}×{shape[1]} images: set data.{key}={own} or null (the pipeline's)"
                )
    folder = build_data(dict(recipe), pipeline=pipeline, verify=False)  # its errors name the folder
    conditioner = pipeline.conditioner
    takes = None if conditioner is None else getattr(conditioner, "inputs", None)
    labels, captions = folder.targets is not None, folder.captions is not None
    if conditioner is None:
        if labels or captions:
            what = "class labels (data.labels=true)" if labels else f"captions (data.captions={data['captions']})"
            raise ConfigError(
                f"the recipe reads {what} from the folder, but the pipeline has no conditioner (it is unconditional): "
                f"set data.{'labels=false' if labels else 'captions=null'}"
            )
        return None
    if takes == "class labels":
        if not labels:
            raise ConfigError(
                "the pipeline is conditioned on class labels: set data.labels=true to read them from the folder's "
                "class sub-folders (IMAGES/<class>/…, labels 0, 1, … in sorted order)"
            )
        num_classes = getattr(conditioner.config, "num_classes", None)
        if isinstance(num_classes, int) and len(folder.classes) > num_classes:
            raise ConfigError(
                f"the folder {data['root']!r} has {len(folder.classes)} class sub-folders, the pipeline's conditioner "
                f"{num_classes} classes"
            )
        return torch.tensor(folder.targets)
    if takes == "text":
        if not captions:
            raise ConfigError(
                "the pipeline is conditioned on text: set data.captions=txt to read each image's caption from the text "
                "file beside it (img001.png + img001.txt)"
            )
        return folder.captions
    if takes is not None:
        raise ConfigError(
            f"the pipeline is conditioned on {takes}; an image folder gives class labels (data.labels) or captions "
            "(data.captions)"
        )
    return folder.captions if captions else torch.tensor(folder.targets) if labels else None


def _validate_previews(recipe: Mapping[str, Any], pipeline: Any, data_cond: Any) -> None:
    """The preview grids can be drawn: their conditions, and guidance only with a conditioner."""
    guidance = recipe["sample"].get("guidance")
    if pipeline.conditioner is None and guidance is not None and guidance != 1:
        raise ConfigError(
            f"recipe key sample.guidance={guidance} needs a conditioned pipeline; this one has no conditioner: "
            "set sample.guidance=1 (or null)"
        )
    if is_pretrained(recipe):
        preview_conditions(pipeline, 1, recipe, data_cond)
        return
    with torch.device("meta"):
        preview_conditions(pipeline, 1, recipe, data_cond)


def _validate_components(recipe: Mapping[str, Any]) -> Any:
    """Build the pipeline the recipe describes with its networks on the meta device."""
    pipeline_section = recipe["pipeline"]
    choice = pipeline_section.get("backbone")
    if not isinstance(choice, str) or choice not in recipe["backbones"]:
        raise UnknownNameError("backbone (pipeline.backbone; the keys of backbones)", str(choice), list(recipe["backbones"]))
    if not isinstance(recipe["backbones"][choice], Mapping):
        raise ConfigError(f"recipe key backbones.{choice} must be an object {{...}}, got {_short(recipe['backbones'][choice])}")
    for key in ("schedule", "conditioner", "autoencoder"):
        spec = pipeline_section.get(key)
        named = isinstance(spec, str) or (
            isinstance(spec, list) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], Mapping)
        )
        if spec is not None and not named:
            raise ConfigError(f'recipe key pipeline.{key} must be a registry name or ["name", {{config}}], got {_short(spec)}')
    probe = copy.deepcopy(dict(recipe))
    conditioner = probe["pipeline"].get("conditioner")
    if (
        isinstance(conditioner, list) and len(conditioner) == 2 and isinstance(conditioner[1], Mapping)
        and conditioner[1].get("vocabulary") == "captions"  # the words come from the data later
    ):
        conditioner[1] = {**conditioner[1], "vocabulary": ["shape", "circle"]}
    try:
        schedule = probe["pipeline"].get("schedule", "linear")  # its tables are computed on the CPU
        if isinstance(schedule, list) and len(schedule) == 2 and isinstance(schedule[1], Mapping):
            schedule = (schedule[0], dict(schedule[1]))
        probe["pipeline"]["schedule"] = _build_schedule(schedule)
        _check_flow_pairing(probe["pipeline"].get("parameterization", "eps"), probe["pipeline"]["schedule"])
        with torch.device("meta"):
            pipeline = build_pipeline(probe)
            if "autoencoder" in recipe:
                registry.build("autoencoder", "kl", **recipe["autoencoder"]["config"])
        return pipeline
    except DiffkitError:
        raise
    except (TypeError, ValueError, KeyError, IndexError, RuntimeError) as error:
        raise ConfigError(f"the recipe's pipeline or backbone settings cannot be built: {type(error).__name__}: {error}") from error


def _check_flow_pairing(parameterization: Any, schedule: Any) -> None:
    """pipeline.parameterization=flow and a flow pipeline.schedule come together, named as recipe keys."""
    flow_schedule = isinstance(schedule, FlowSchedule)
    if (parameterization == FLOW) == flow_schedule:
        return
    if flow_schedule:
        raise ConfigError(
            f"recipe key pipeline.schedule is the flow schedule but pipeline.parameterization is {_short(parameterization)}: "
            "a flow schedule trains a velocity network, set pipeline.parameterization=flow too"
        )
    raise ConfigError(
        f"recipe key pipeline.parameterization=flow needs the flow schedule, but pipeline.schedule is a "
        f"{type(schedule).__name__}: set pipeline.schedule=flow too (e.g. pipeline.schedule='[\"flow\", {{\"shift\": 3.0}}]'), "
        "or use a recipe's flow variant (digits-flow, shapes-flow)"
    )


def _build_schedule(spec: Any) -> Any:
    if isinstance(spec, str):
        return registry.build("schedule", spec)
    if isinstance(spec, tuple):
        return registry.build("schedule", spec[0], **spec[1])
    raise ConfigError(f'recipe key pipeline.schedule must be a name or ["name", {{config}}], got {_short(spec)}')


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
