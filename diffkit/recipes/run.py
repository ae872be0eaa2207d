"""Turn a recipe into a pipeline, data and a training run with its pictures on disk.

A run folder (``diffkit train --out DIR``) belongs to one run (:mod:`diffkit.recipes.run_folder`)
and holds::

    run.json             the run's identity: run id, recipe hash, diffkit version, steps
    run.lock             held (locked) while a process trains into the folder
    recipe.json          the recipe as run (overrides applied)
    checkpoints/         resumable training state (diffkit.training.checkpoints)
    samples/step-*.png   a sample grid from the EMA weights every ``train.sample_every`` steps
    progress.gif         those grids in order: training progress
    samples.png          the final grid
    trajectory.gif       the final grid's denoising trajectory (x_t at each step, then the sample)
    pipeline/            the trained pipeline (EMA weights): diffkit.load_pretrained(DIR/pipeline)

A recipe with ``pipeline.pretrained`` fine-tunes the pipeline loaded from that folder
(:mod:`diffkit.recipes.finetune`): the same run folder, checkpoints, resume and outputs.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import torch

from diffkit.demos.shapes.data import ShapesConfig, ShapesDataset
from diffkit.distributed.collectives import barrier, broadcast_from_main
from diffkit.distributed.context import DistributedContext, check_divisible
from diffkit.errors import ConfigError, DiffkitError, RunFolderError
from diffkit.io.imaging import read_picture, save_gif, save_png
from diffkit.io.pretrained import load_pretrained
from diffkit.pipeline import Pipeline
from diffkit.recipes.base import RecipeDict
from diffkit.recipes.build import build_data, build_pipeline, grid_rows, preview_conditions, sample_settings
from diffkit.recipes.finetune import is_pretrained
from diffkit.recipes.latent import prepare_autoencoder
from diffkit.recipes.run_folder import (
    RECIPE_FILE,
    RunRecord,
    claim_run_folder,
    prepare_folder,
    refuse_unknown_files,
    write_run,
)
from diffkit.recipes.validate import validate_recipe
from diffkit.training import InMemoryData, TrainConfig, Trainer, TrainResult, as_training_data
from diffkit.training.autoencoder import encode_dataset
from diffkit.training.checkpoints import CHECKPOINT_DIR, list_checkpoints
from diffkit.training.run_lock import run_lock
from diffkit.training.trainer import check_batch_memory, default_device

__all__ = ["RECIPE_FILE", "build_data", "build_pipeline", "grid_rows", "preview_conditions", "train_recipe", "write_pictures"]


def _grid_scale(pipeline: Pipeline) -> int:
    """Enlarge small images so a grid can be seen (8×8 digits ×4)."""
    return max(1, 32 // pipeline.sample_shape[-1])


def training_data(
    recipe: RecipeDict,
    out: Path,
    *,
    progress: bool = True,
    context: DistributedContext | None = None,
    pipeline: Pipeline | None = None,
    device: torch.device | str | None = None,
) -> tuple[InMemoryData, Any]:
    """(training data, autoencoder or None): for a latent recipe, the trained autoencoder and the
    training images encoded once into its scaled latents.

    Under torchrun rank 0 trains the autoencoder first and the other ranks then reuse it from
    the run folder. For a pretrained ``pipeline`` (``pipeline.pretrained``) with a (KL)
    autoencoder, that frozen autoencoder and the images encoded once, with its posterior mode,
    on ``device`` (where the autoencoder is left).
    """
    data = as_training_data(build_data(recipe, pipeline=pipeline))
    conditioner = pipeline.conditioner if pipeline is not None else recipe["pipeline"].get("conditioner")
    if conditioner is None and data.cond is not None:
        data = InMemoryData(data.images)  # an unconditional recipe trains on the images alone
    if pipeline is not None and is_pretrained(recipe):
        return _encoded_for(pipeline, data, device)
    if "autoencoder" not in recipe:
        return data, None
    main = context is None or context.is_main
    heldout = _heldout_images(recipe)
    if main:
        autoencoder, _ = prepare_autoencoder(recipe, data.images, out, heldout=heldout, progress=progress)
    barrier()
    if not main:
        autoencoder, _ = prepare_autoencoder(recipe, data.images, out, heldout=heldout, progress=False)
    return InMemoryData(encode_dataset(autoencoder, data.images), data.cond), autoencoder


def _encoded_for(pipeline: Pipeline, data: InMemoryData, device: torch.device | str | None) -> tuple[InMemoryData, Any]:
    """The data in the pretrained pipeline's space: latents of its KL autoencoder, once (else as they are)."""
    from diffkit.models.autoencoders.kl import KLAutoencoder

    autoencoder = pipeline.autoencoder
    if not isinstance(autoencoder, KLAutoencoder):  # pixels, or an autoencoder that encodes every step
        return data, None
    autoencoder.to(device if device is not None else default_device())
    pixels = max(1, math.prod(data.images.shape[2:]))
    batch = min(256, max(1, (1 << 22) // pixels))  # 16 images of 512×512 at once: the encoder's activations fit
    return InMemoryData(encode_dataset(autoencoder, data.images, batch_size=batch), data.cond), autoencoder


def _heldout_images(recipe: RecipeDict) -> torch.Tensor | None:
    """Images the autoencoder's reconstruction PSNR is reported on (the shapes held-out split)."""
    data = dict(recipe["data"])
    if data.pop("name") != "shapes":
        return None
    return ShapesDataset(ShapesConfig(**data), split="heldout").images


def train_recipe(
    recipe: RecipeDict,
    out_dir: str | os.PathLike[str],
    *,
    resume: bool | str = False,
    overwrite: bool = False,
    progress: bool = True,
    device: torch.device | str | None = None,
    distributed: DistributedContext | None = None,
    fsdp: bool = False,
    compile: bool = False,
) -> tuple[Pipeline | None, TrainResult]:
    """Train the recipe into the run folder ``out_dir``; returns the EMA pipeline and the run's figures.

    The whole recipe is validated first (:func:`~diffkit.recipes.validate.validate_recipe`), so
    a bad value costs no training. The folder is then locked for the run's lifetime and claimed
    (:mod:`diffkit.recipes.run_folder`): a new run needs a new or empty folder; ``resume=True``
    continues the run the folder holds from its newest intact checkpoint (a larger
    ``train.steps`` extends it; a run already complete returns at once); ``overwrite=True``
    discards the run the folder holds and starts afresh; ``resume="auto"`` continues this
    recipe's run when there is one and starts one otherwise (what a torchrun restart does).

    ``distributed``, ``fsdp``, ``compile``: see :class:`~diffkit.training.Trainer`. Every rank
    of a torchrun job calls this; rank 0 claims the folder and writes the pictures and the
    pipeline, and under FSDP the other ranks get None instead of the pipeline.
    """
    out = Path(out_dir)
    mode = _claim_mode(resume, overwrite)
    probe = validate_recipe(recipe)
    config = TrainConfig(**recipe["train"])
    world = 1 if distributed is None else distributed.world_size
    rank_batch = check_divisible(config.batch_size, world)  # before any expensive stage
    where = distributed.device if distributed is not None else torch.device(device) if device else default_device()
    check_batch_memory(probe.sample_shape, rank_batch, where)
    main = distributed is None or distributed.is_main
    with contextlib.ExitStack() as held:
        record = _claim(out, recipe, mode, main=main, held=held)
        if record.finished_step == config.steps and record.resume:
            return _completed_run(out, record, main=main)
        return _train_claimed(
            recipe, out, record, config, progress=progress, device=device, distributed=distributed,
            fsdp=fsdp, compile=compile, pretrained=probe if is_pretrained(recipe) else None,
        )


def _claim_mode(resume: bool | str, overwrite: bool) -> str:
    if resume not in (True, False, "auto"):
        raise ConfigError(f"resume must be True, False or 'auto', got {resume!r}")
    if not isinstance(overwrite, bool):
        raise ConfigError(f"overwrite must be True or False, got {overwrite!r}")
    if resume and overwrite:
        raise ConfigError("--resume continues the run in the folder and --overwrite discards it: pass one of them")
    return "auto" if resume == "auto" else "resume" if resume else "overwrite" if overwrite else "new"


def _claim(out: Path, recipe: RecipeDict, mode: str, *, main: bool, held: contextlib.ExitStack) -> RunRecord:
    """Rank 0 locks and claims the folder (the lock stays held by ``held``); every rank gets the record."""
    record, failure = None, None
    if main:
        try:
            prepare_folder(out)
            if mode != "resume":
                refuse_unknown_files(out)  # before the lock file is created: a refused folder stays as it was
            held.enter_context(run_lock(out))
            record = claim_run_folder(out, recipe, mode)
        except DiffkitError as error:
            failure = error
    record, message = broadcast_from_main((record, None if failure is None else str(failure)))
    if failure is not None:
        raise failure
    if message is not None:
        raise RunFolderError(message)
    assert record is not None
    if record.resume and mode == "auto" and not list_checkpoints(out / CHECKPOINT_DIR):
        record = attrs.evolve(record, resume=False)  # restarted before the first checkpoint
    return record


def _completed_run(out: Path, record: RunRecord, *, main: bool) -> tuple[Pipeline | None, TrainResult]:
    """A resumed run that is already complete: nothing is trained or rewritten."""
    if main:
        print(
            f"the run in {out} is already complete at step {record.finished_step} (train.steps={record.steps}); "
            "nothing to do. Pass --steps N with a larger N to train longer",
            file=sys.stderr, flush=True,
        )
    pipeline = load_pretrained(out / "pipeline") if main else None
    found = list_checkpoints(out / CHECKPOINT_DIR)
    result = TrainResult(
        steps=record.steps, final_loss=math.nan, seconds=0.0, images_per_second=math.nan,
        checkpoint=found[-1] if found else None, already_complete=True,
    )
    return pipeline, result


def _train_claimed(
    recipe: RecipeDict,
    out: Path,
    record: RunRecord,
    config: TrainConfig,
    *,
    progress: bool,
    device: torch.device | str | None,
    distributed: DistributedContext | None,
    fsdp: bool,
    compile: bool,
    pretrained: Pipeline | None = None,
) -> tuple[Pipeline | None, TrainResult]:
    """``pretrained``: the pipeline of a ``pipeline.pretrained`` recipe, as validation loaded it."""
    main = distributed is None or distributed.is_main
    where = distributed.device if distributed is not None else device
    data, autoencoder = training_data(
        recipe, out, progress=progress and main, context=distributed, pipeline=pretrained, device=where
    )
    encoded = autoencoder is not None
    if pretrained is not None:
        pipeline = pretrained  # its loaded weights are the start; the EMA is initialised from them
    else:
        torch.manual_seed(config.seed)  # the initial weights, identical on every rank
        pipeline = build_pipeline(recipe, autoencoder=autoencoder, captions=data.cond)
    sample = recipe["sample"]
    n = int(sample["n"])
    cond = preview_conditions(pipeline, n, recipe, data.cond)
    nrow = grid_rows(pipeline, n, cond)
    scale = _grid_scale(pipeline)
    samples_dir = out / "samples"
    steps, guidance = sample_settings(pipeline, recipe)

    def preview(step: int, ema_pipeline: Pipeline) -> None:
        images = ema_pipeline.sample(n, cond=cond, steps=steps, guidance=guidance, generator=0)
        with _writing(out):
            save_png(samples_dir / f"step-{step:09d}.png", images, nrow=nrow, scale=scale)

    trainer = Trainer(
        pipeline, data, config, out_dir=out, meta={"recipe": recipe}, progress=progress, preview=preview,
        device=device, encoded=encoded, distributed=distributed, fsdp=fsdp, compile=compile, run=record.identity(),
    )
    if record.resume:  # all ranks: the newest intact checkpoint of this run (warnings on rank 0)
        folder = trainer.restore()
        if main:
            print(f"resumed from {folder} (step {trainer.step})", file=sys.stderr, flush=True)
            if record.extended:  # only now that a checkpoint was restored: a failed resume changes nothing
                write_run(out, record, recipe)
    result = trainer.train()
    final = trainer.ema_pipeline()
    if main:
        final.eval()
        if progress:
            print(f"writing {out / 'pipeline'} and the final pictures ({n} samples)", file=sys.stderr, flush=True)
        with _writing(out):
            final.save(out / "pipeline")
            write_pictures(final, out, cond=cond, recipe=recipe, progress=progress)
        write_run(out, attrs.evolve(record, finished_step=result.steps))
    barrier()
    return final, result


@contextlib.contextmanager
def _writing(out: Path) -> Iterator[None]:
    """An OS error while writing the run's outputs (a full disk, permissions) as a named error."""
    try:
        yield
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        raise RunFolderError(
            f"cannot write the run's outputs in {out}{where}: {exc.strerror or exc}; the checkpoints are intact, "
            "so --resume finishes the run once the problem is fixed"
        ) from exc


def write_pictures(pipeline: Pipeline, out: Path, *, cond: Any, recipe: RecipeDict, progress: bool = False) -> None:
    """``samples.png``, ``trajectory.gif`` and ``progress.gif`` (from ``samples/``) in ``out``."""
    n = int(recipe["sample"]["n"])
    nrow, scale = grid_rows(pipeline, n, cond), _grid_scale(pipeline)
    steps, guidance = sample_settings(pipeline, recipe)
    frames: list[torch.Tensor] = []

    def keep(info: dict[str, Any]) -> None:
        # the state entering step i in VP scale, x_t = x/√(1+σ²): noise first, then ever cleaner
        frames.append(info["x"] / (1 + float(info["sigma"]) ** 2) ** 0.5)

    images = pipeline.sample(n, cond=cond, steps=steps, guidance=guidance, generator=0, callback=keep, progress=progress)
    save_png(out / "samples.png", images, nrow=nrow, scale=scale)
    decode = pipeline.autoencoder.decode_latents if pipeline.autoencoder is not None else (lambda z: z)
    with torch.no_grad():
        trajectory = [decode(frame) for frame in frames] + [images]
    save_gif(out / "trajectory.gif", trajectory, duration_ms=150, nrow=nrow, scale=scale)
    grids = sorted((out / "samples").glob("step-*.png"))
    if grids:
        save_gif(out / "progress.gif", [read_picture(path) for path in grids], duration_ms=300)
