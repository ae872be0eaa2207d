"""The autoencoder stage of latent-diffusion recipes (Rombach et al. 2022, §3).

A recipe with an ``"autoencoder"`` section trains (or reuses) a KL autoencoder first:

    "autoencoder": {"config": {...KLConfig...}, "train": {...AutoencoderTrainConfig...}}

then scales its latents to unit variance (the stored ``scaling_factor``, LDM §4.3.2),
encodes the training images once with the posterior mode, and the diffusion model trains on
those latents (``Trainer(encoded=True)``). The trained autoencoder is saved in
``<run>/autoencoder`` with its reconstruction PSNR in ``<run>/autoencoder.json``; a later run
or ``--resume`` in the same folder reuses it instead of training again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from diffkit import registry
from diffkit.errors import RunFolderError
from diffkit.io.atomic import write_atomic
from diffkit.io.components import save_pretrained
from diffkit.io.files import read_json_object
from diffkit.io.pretrained import load_pretrained
from diffkit.recipes.base import RecipeDict
from diffkit.training.autoencoder import (
    AutoencoderTrainConfig,
    latent_scaling_factor,
    reconstruction_psnr,
    train_autoencoder,
    with_scaling_factor,
)

AUTOENCODER_DIR = "autoencoder"
AUTOENCODER_REPORT = "autoencoder.json"


def prepare_autoencoder(
    recipe: RecipeDict, images: torch.Tensor, out: Path, *, heldout: torch.Tensor | None = None, progress: bool = True
) -> tuple[Any, dict[str, Any]]:
    """The recipe's trained, latent-scaled autoencoder and its report (PSNR, seconds, scale)."""

    folder, report_path = out / AUTOENCODER_DIR, out / AUTOENCODER_REPORT
    if (folder / "diffkit.json").is_file() and report_path.exists():
        # the run's own autoencoder: a damaged report is an error, not a silent retraining that
        # would give the resumed diffusion model other latents
        report = read_json_object(report_path, what="autoencoder report", error=RunFolderError)
        if report.get("recipe") == recipe["autoencoder"]:
            return load_pretrained(folder), report
    section = recipe["autoencoder"]
    config = AutoencoderTrainConfig(**section["train"])
    torch.manual_seed(config.seed)  # the initial weights
    autoencoder = registry.build("autoencoder", "kl", **section["config"])
    result = train_autoencoder(autoencoder, images, config, progress=progress)
    autoencoder.eval()
    scale = latent_scaling_factor(autoencoder, images)
    autoencoder = with_scaling_factor(autoencoder, scale).eval()
    report = {
        "recipe": section,
        "seconds": result.seconds,
        "steps": result.steps,
        "psnr_train": reconstruction_psnr(autoencoder, images[:1000]),
        "psnr_heldout": None if heldout is None else reconstruction_psnr(autoencoder, heldout),
        "scaling_factor": scale,
    }
    save_pretrained(autoencoder, folder)
    text = json.dumps(report, indent=2, sort_keys=True) + "\n"
    write_atomic([(report_path, lambda tmp: tmp.write_text(text, encoding="utf-8"))])
    return autoencoder, report

