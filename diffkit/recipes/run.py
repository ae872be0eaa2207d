"""Turn a recipe into a pipeline, data and a training run with its pictures on disk.

A run folder (``diffkit train --out DIR``) holds::

    recipe.json          the recipe as run (overrides applied)
    checkpoints/         resumable training state (diffkit.training.checkpoints)
    samples/step-*.png   a sample grid from the EMA weights every ``train.sample_every`` steps
    progress.gif         those grids in order: training progress
    samples.png          the final grid
    trajectory.gif       the final grid's denoising trajectory (x_t at each step, then the sample)
    pipeline/            the trained pipeline (EMA weights): diffkit.load_pretrained(DIR/pipeline)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from diffkit.distributed.collectives import barrier
from diffkit.distributed.context import DistributedContext, check_divisible
from diffkit.errors import CheckpointError, ConfigError, UnknownNameError
from diffkit.imaging import read_picture, save_gif, save_png
from diffkit.pipeline import Pipeline
from diffkit.recipes.base import RecipeDict, backbone_spec
from diffkit.training import InMemoryData, TrainConfig, Trainer, TrainResult, as_training_data
from diffkit.training.checkpoints import CHECKPOINT_DIR, list_checkpoints

RECIPE_FILE = "recipe.json"
DATA_SOURCES = ("digits", "folder", "shapes")


def build_pipeline(recipe: RecipeDict, *, autoencoder: Any = None, captions: Any = None) -> Pipeline:
    """The untrained :class:`~diffkit.Pipeline` a recipe describes (with a trained autoencoder).

    A conditioner option ``"vocabulary": "captions"`` becomes the word vocabulary of the
    training ``captions`` (:func:`~diffkit.conditioners.tokenizer.build_vocabulary`).
    """
    spec = dict(recipe["pipeline"])
    spec["backbone"] = backbone_spec(recipe)
    if autoencoder is not None:
        spec["autoencoder"] = autoencoder
    for key in ("schedule", "conditioner", "autoencoder"):
        value = spec.get(key)
        if isinstance(value, list):  # JSON has no tuples: ["name", {config}]
            spec[key] = (value[0], dict(value[1]))
    conditioner = spec.get("conditioner")
    if isinstance(conditioner, tuple) and conditioner[1].get("vocabulary") == "captions":
        if captions is None or isinstance(captions, torch.Tensor) or not all(isinstance(c, str) for c in captions):
            raise ConfigError('conditioner vocabulary "captions" needs training data with text captions')
        from diffkit.conditioners.tokenizer import build_vocabulary

        conditioner[1]["vocabulary"] = list(build_vocabulary(captions))
    return Pipeline(**spec)


def build_data(recipe: RecipeDict) -> Any:
    """The training data set a recipe names (``digits`` or an image ``folder``)."""
    data = dict(recipe["data"])
    name = data.pop("name")
    if name == "digits":
        from diffkit.data import DigitsDataset

        return DigitsDataset(size=data.get("size", 8))
    if name == "folder":
        from diffkit.data import ImageFolder

        root = data.get("root")
        if not root:
            raise ConfigError("data.name=folder needs data.root=PATH (a folder of images)")
        return ImageFolder(root, data["size"], flip=bool(data.get("flip", False)), channels=data.get("channels", 3))
    if name == "shapes":
        from diffkit.data.shapes import ShapesConfig, ShapesDataset

        return ShapesDataset(ShapesConfig(**data), split="train")  # held-out combinations excluded
    raise UnknownNameError("data source", name, DATA_SOURCES)


def preview_conditions(pipeline: Pipeline, n: int, recipe: RecipeDict) -> Any:
    """Conditioning inputs for a preview grid of ``n``: each class in turn, or the recipe's prompts."""
    conditioner = pipeline.conditioner
    if conditioner is None:
        return None
    num_classes = getattr(conditioner.config, "num_classes", None)
    if num_classes is not None:
        return torch.arange(n) % num_classes
    prompts = recipe["sample"].get("prompts")
    if not prompts and recipe["data"]["name"] == "shapes":  # the held-out combinations
        from diffkit.data.shapes import ShapesConfig, heldout_prompts

        config = ShapesConfig(**{k: v for k, v in recipe["data"].items() if k != "name"})
        prompts = [text for text, _ in heldout_prompts(config, n_per_combination=1)]
    if prompts:
        return [prompts[i % len(prompts)] for i in range(n)]
    raise ConfigError("this recipe's conditioner needs sample.prompts for its preview grids")


def grid_rows(pipeline: Pipeline, n: int) -> int:
    """Images per grid row: one row per cycle of the classes, else a square."""
    num_classes = getattr(getattr(pipeline.conditioner, "config", None), "num_classes", None)
    return num_classes or max(1, round(n**0.5))


def _grid_scale(pipeline: Pipeline) -> int:
    """Enlarge small images so a grid can be seen (8×8 digits ×4)."""
    return max(1, 32 // pipeline.sample_shape[-1])


def training_data(
    recipe: RecipeDict, out: Path, *, progress: bool = True, context: DistributedContext | None = None
) -> tuple[InMemoryData, Any]:
    """(training data, autoencoder or None): for a latent recipe, the trained autoencoder and the
    training images encoded once into its scaled latents.

    Under torchrun rank 0 trains the autoencoder first and the other ranks then reuse it from
    the run folder.
    """
    data = as_training_data(build_data(recipe))
    if "autoencoder" not in recipe:
        return data, None
    from diffkit.recipes.latent import prepare_autoencoder
    from diffkit.training.autoencoder import encode_dataset

    main = context is None or context.is_main
    heldout = _heldout_images(recipe)
    if main:
        autoencoder, _ = prepare_autoencoder(recipe, data.images, out, heldout=heldout, progress=progress)
    barrier()
    if not main:
        autoencoder, _ = prepare_autoencoder(recipe, data.images, out, heldout=heldout, progress=False)
    return InMemoryData(encode_dataset(autoencoder, data.images), data.cond), autoencoder


def _heldout_images(recipe: RecipeDict) -> torch.Tensor | None:
    """Images the autoencoder's reconstruction PSNR is reported on (the shapes held-out split)."""
    data = dict(recipe["data"])
    if data.pop("name") != "shapes":
        return None
    from diffkit.data.shapes import ShapesConfig, ShapesDataset

    return ShapesDataset(ShapesConfig(**data), split="heldout").images


def train_recipe(
    recipe: RecipeDict,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool | str = False,
    progress: bool = True,
    device: torch.device | str | None = None,
    distributed: DistributedContext | None = None,
    fsdp: bool = False,
    compile: bool = False,
) -> tuple[Pipeline | None, TrainResult]:
    """Train the recipe into ``out_dir``; returns the EMA pipeline and the run's figures.

    ``resume``: True continues from the latest checkpoint (an error when there is none);
    ``"auto"`` continues when there is one and starts afresh otherwise (what a torchrun
    restart does). ``distributed``, ``fsdp``, ``compile``: see :class:`~diffkit.training.Trainer`.
    Every rank of a torchrun job calls this; rank 0 writes the pictures and the pipeline, and
    under FSDP the other ranks get None instead of the pipeline.
    """
    out = Path(out_dir)
    recipe_path = out / RECIPE_FILE
    if resume == "auto":
        resume = bool(list_checkpoints(out / CHECKPOINT_DIR)) and recipe_path.is_file()
    elif not isinstance(resume, bool):
        raise ConfigError(f"resume must be True, False or 'auto', got {resume!r}")
    if resume:
        if not recipe_path.is_file():
            raise CheckpointError(f"--resume: {out} holds no run to resume ({RECIPE_FILE} is missing)")
        saved = json.loads(recipe_path.read_text(encoding="utf-8"))
        if saved != recipe:
            changed = sorted(k for k in set(saved) | set(recipe) if saved.get(k) != recipe.get(k))
            raise CheckpointError(
                f"--resume: the recipe differs from the one {out} was trained with (sections {changed}); "
                "resume with the same recipe and overrides, or train into a new --out"
            )
    main = distributed is None or distributed.is_main
    config = TrainConfig(**recipe["train"])
    if distributed is not None:
        check_divisible(config.batch_size, distributed.world_size)  # before any expensive stage
    out.mkdir(parents=True, exist_ok=True)
    data, autoencoder = training_data(recipe, out, progress=progress and main, context=distributed)
    encoded = autoencoder is not None
    torch.manual_seed(config.seed)  # the initial weights, identical on every rank
    pipeline = build_pipeline(recipe, autoencoder=autoencoder, captions=data.cond)
    sample = recipe["sample"]
    n = int(sample["n"])
    cond = preview_conditions(pipeline, n, recipe)
    nrow = grid_rows(pipeline, n)
    scale = _grid_scale(pipeline)
    samples_dir = out / "samples"

    def preview(step: int, ema_pipeline: Pipeline) -> None:
        images = ema_pipeline.sample(n, cond=cond, steps=sample["steps"], guidance=sample["guidance"], generator=0)
        save_png(samples_dir / f"step-{step:09d}.png", images, nrow=nrow, scale=scale)

    if not resume and main:
        from diffkit.atomic import write_atomic

        text = json.dumps(recipe, indent=2, sort_keys=True) + "\n"
        write_atomic([(recipe_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))])
    trainer = Trainer(
        pipeline, data, config, out_dir=out, meta={"recipe": recipe}, progress=progress, preview=preview,
        device=device, encoded=encoded, distributed=distributed, fsdp=fsdp, compile=compile,
    )
    result = trainer.train(resume=resume)
    final = trainer.ema_pipeline()
    if main:
        final.eval()
        final.save(out / "pipeline")
        write_pictures(final, out, cond=cond, recipe=recipe)
    barrier()
    return final, result


def write_pictures(pipeline: Pipeline, out: Path, *, cond: Any, recipe: RecipeDict) -> None:
    """``samples.png``, ``trajectory.gif`` and ``progress.gif`` (from ``samples/``) in ``out``."""
    sample = recipe["sample"]
    n = int(sample["n"])
    nrow, scale = grid_rows(pipeline, n), _grid_scale(pipeline)
    frames: list[torch.Tensor] = []

    def keep(info: dict[str, Any]) -> None:
        # the state entering step i in VP scale, x_t = x/√(1+σ²): noise first, then ever cleaner
        frames.append(info["x"] / (1 + float(info["sigma"]) ** 2) ** 0.5)

    images = pipeline.sample(
        n, cond=cond, steps=sample["steps"], guidance=sample["guidance"], generator=0, callback=keep
    )
    save_png(out / "samples.png", images, nrow=nrow, scale=scale)
    decode = pipeline.autoencoder.decode_latents if pipeline.autoencoder is not None else (lambda z: z)
    with torch.no_grad():
        trajectory = [decode(frame) for frame in frames] + [images]
    save_gif(out / "trajectory.gif", trajectory, duration_ms=150, nrow=nrow, scale=scale)
    grids = sorted((out / "samples").glob("step-*.png"))
    if grids:
        save_gif(out / "progress.gif", [read_picture(path) for path in grids], duration_ms=300)
