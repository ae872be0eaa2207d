"""Fine-tuning a pretrained pipeline: the ``finetune`` recipe and recipes with ``pipeline.pretrained``.

A recipe whose pipeline section names a folder instead of components trains the pipeline stored
there, starting from its weights::

    "pipeline": {"pretrained": "/path/to/folder", "sampler": null}

The folder is a diffusers pipeline folder (``model_index.json``: DDPMPipeline, DDIMPipeline,
DiTPipeline, StableDiffusionPipeline, …), a pipeline folder saved by diffkit (``pipeline.json``,
e.g. the ``pipeline/`` of an earlier run), or a run folder (its ``pipeline/``); it is read with
:func:`diffkit.load_pretrained`. Beside ``pretrained`` only ``sampler`` may be set (null: the
folder's): the components, schedule and parameterization come from the folder, and naming
any of them is refused by name. The ``backbones`` section is empty and there is no
``autoencoder`` section.

What trains: the backbone. The autoencoder is frozen by the :class:`~diffkit.Pipeline` itself,
the text encoders of the ``transformers`` conditioners by the conditioners, and the trainer
optimises and averages (EMA) only parameters that require gradients. The EMA starts from the
loaded weights. A pipeline with an autoencoder trains on latents encoded once before training
(the posterior mode, on the training device, as the latent recipes do). The run saves the EMA
pipeline in diffkit's format (``RUN/pipeline``, :meth:`~diffkit.Pipeline.save`), which
:func:`diffkit.load_pretrained` reads and which can itself be fine-tuned again.

Checking before any work (:func:`~diffkit.recipes.validate.validate_recipe`): a recipe's pipeline
is otherwise built on the meta device; a pretrained one is **loaded for real, once**: only that
proves the folder is a readable pipeline (its weights present, finite and fitting), and the
sample shape, conditioner and autoencoder it reports are what the data settings are checked
against. The run then trains that same loaded pipeline (:func:`~diffkit.recipes.run.train_recipe`
passes it on), so the weights are read once per process. On ``--resume`` the folder is loaded
again and the checkpoint's weights replace its weights: the folder must still be there.

The data: an image ``folder``. ``data.size`` and ``data.channels`` null take the pipeline's image
size and channels (the sample shape, times the autoencoder's downsampling factor). Conditioning
comes from the folder as the pipeline's conditioner needs it: ``data.labels=true`` for class
labels (the sorted sub-folder names are labels 0, 1, …), ``data.captions=txt`` for text (a
caption file beside each image, :mod:`diffkit.io.image_folder`); an unconditional pipeline takes
neither. Preview grids use ``sample.prompts``, else the first distinct captions; ``sample.steps``
and ``sample.guidance`` null take the pipeline's ``default_steps`` and ``default_guidance``.

The built-in recipe ``finetune`` holds every key with null placeholders that validation refuses
until they are set::

    diffkit train --recipe finetune pipeline.pretrained=FOLDER data.root=IMAGES train.steps=100 --out RUN
    diffkit train --recipe finetune pipeline.pretrained=SD_FOLDER data.root=IMAGES data.captions=txt --out RUN
    diffkit train --recipe finetune pipeline.pretrained=DIT_FOLDER data.root=IMAGES data.labels=true --out RUN
    diffkit train --resume --out RUN --steps 200
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from diffkit import registry
from diffkit.errors import ConfigError, DiffkitError, UnknownNameError
from diffkit.pipeline import PIPELINE_FILE, Pipeline
from diffkit.recipes.base import RecipeDict

PRETRAINED = "pretrained"
"""The pipeline-section key naming the folder to fine-tune."""
PRETRAINED_OPTIONS = ("sampler",)
"""The other pipeline-section keys a pretrained recipe may set."""
INDEX_FILE = "model_index.json"  # a diffusers pipeline folder


def finetune() -> RecipeDict:
    """Fine-tune a pretrained pipeline (a diffusers or diffkit folder) on a folder of images."""
    return {
        "data": {
            "name": "folder", "root": None, "size": None, "channels": None, "flip": False, "labels": False,
            "captions": None,
        },
        "pipeline": {PRETRAINED: None, "sampler": None},
        "backbones": {},
        "train": {
            "steps": 1000, "batch_size": 4, "lr": 1e-5, "lr_schedule": "constant", "warmup_steps": 50,
            "weight_decay": 0.01, "ema_decay": 0.999, "save_every": 250, "sample_every": 250, "log_every": 10,
        },
        "sample": {"n": 4, "steps": None, "guidance": None, "prompts": None},
    }


def is_pretrained(recipe: Mapping[str, Any]) -> bool:
    """Whether the recipe fine-tunes a pretrained pipeline (its pipeline section has ``pretrained``)."""
    section = recipe.get("pipeline")
    return isinstance(section, Mapping) and PRETRAINED in section


def _pipeline_keys() -> list[str]:
    """The :class:`~diffkit.Pipeline` settings a recipe's pipeline section can otherwise name."""
    return [name for name in inspect.signature(Pipeline.__init__).parameters if name != "self"]


def check_pretrained_section(recipe: Mapping[str, Any]) -> Path:
    """The pretrained recipe's sections checked without reading weights; returns the pipeline folder."""
    section = recipe["pipeline"]
    for key in section:
        if key == PRETRAINED or key in PRETRAINED_OPTIONS:
            continue
        if key in _pipeline_keys():
            raise ConfigError(
                f"recipe key pipeline.{key} cannot be set beside pipeline.pretrained: the pretrained folder gives the "
                f"pipeline's {key}; remove it (a pretrained pipeline is fine-tuned as it is, only "
                f"{', '.join(f'pipeline.{k}' for k in PRETRAINED_OPTIONS)} may be chosen)"
            )
        raise UnknownNameError("key in pipeline (beside pretrained)", key, [PRETRAINED, *PRETRAINED_OPTIONS])
    if recipe.get("backbones"):
        raise ConfigError(
            f"recipe section backbones is unused with pipeline.pretrained (the folder gives the backbone); leave it "
            f"empty ({{}}), got backbones {sorted(recipe['backbones'])}"
        )
    if "autoencoder" in recipe:
        raise ConfigError(
            "recipe section autoencoder trains an autoencoder first; a pretrained pipeline brings its own (frozen): "
            "remove the section"
        )
    sampler = section.get("sampler")
    if sampler is not None:
        if not isinstance(sampler, str):
            raise ConfigError(f"recipe key pipeline.sampler must be a sampler name or null (the folder's), got {sampler!r}")
        registry.get_entry("sampler", sampler)  # unknown names get close matches
    return pipeline_folder(section[PRETRAINED])


def pipeline_folder(value: Any) -> Path:
    """The folder ``pipeline.pretrained`` names, checked to hold a pipeline (no weights read)."""
    if value is None:
        raise ConfigError(
            "recipe key pipeline.pretrained is not set: pass pipeline.pretrained=FOLDER, a diffusers pipeline folder "
            "(model_index.json) or a pipeline saved by diffkit (pipeline.json, e.g. RUN/pipeline)"
        )
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"recipe key pipeline.pretrained must be the path of a pipeline folder, got {value!r}")
    folder = Path(value).expanduser()
    if not folder.exists():
        raise ConfigError(f"recipe key pipeline.pretrained: {value!r} does not exist")
    if not folder.is_dir():
        raise ConfigError(f"recipe key pipeline.pretrained: {value!r} is a file; pass the pipeline folder")
    if not (folder / PIPELINE_FILE).is_file() and not (folder / INDEX_FILE).is_file():
        if (folder / "pipeline" / PIPELINE_FILE).is_file():  # a run folder: its trained pipeline
            return folder / "pipeline"
        present = sorted(p.name for p in folder.iterdir())[:12]
        raise ConfigError(
            f"recipe key pipeline.pretrained: {value!r} is not a pipeline folder: it has neither {INDEX_FILE} "
            f"(diffusers) nor {PIPELINE_FILE} (diffkit); found {', '.join(present) or 'nothing'}"
        )
    return folder


def load_pretrained_pipeline(recipe: Mapping[str, Any]) -> Pipeline:
    """The recipe's pretrained pipeline, loaded (on the CPU, float32) with ``pipeline.sampler`` applied."""
    from diffkit.io.pretrained import load_pretrained

    folder = check_pretrained_section(recipe)
    try:
        pipeline = load_pretrained(folder)
    except DiffkitError as error:
        raise ConfigError(f"recipe key pipeline.pretrained: {folder} cannot be loaded as a pipeline: {error}") from error
    if not isinstance(pipeline, Pipeline):
        raise ConfigError(
            f"recipe key pipeline.pretrained: {folder} holds a single {type(pipeline).__name__}, not a pipeline"
        )
    sampler = recipe["pipeline"].get("sampler")
    if sampler is not None:
        pipeline.sampler, pipeline.sampler_options = sampler, {}
    return pipeline


def image_shape(pipeline: Pipeline) -> tuple[int, int] | None:
    """(channels, side) of the square images the pipeline trains on; None when it cannot be told."""
    if len(pipeline.sample_shape) != 3:
        return None
    channels, height, width = pipeline.sample_shape
    if height != width:
        return None
    autoencoder = pipeline.autoencoder
    if autoencoder is None:
        return channels, height
    factor = getattr(autoencoder, "downsampling_factor", None)
    image_channels = getattr(getattr(autoencoder, "config", None), "in_channels", None)
    if not isinstance(factor, int) or not isinstance(image_channels, int):
        return None
    return image_channels, height * factor
