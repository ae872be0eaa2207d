"""Judging a trained ``digits`` pipeline: class accuracy and Fréchet distance in the classifier's features."""

from __future__ import annotations

import numpy as np
import torch

from diffkit.demos.digits.data import NUM_IMAGES, load_digits
from diffkit.demos.digits.judge import class_accuracy, digits_fid, load_or_train_digits_classifier, real_baseline_fid
from diffkit.pipeline import Pipeline


def evaluate_digits(
    pipeline: Pipeline,
    *,
    n: int = 1000,
    steps: int = 20,
    guidance: float = 2.0,
    seed: int = 0,
    batch_size: int = 500,
    sampler: str | None = None,
    sigmas: torch.Tensor | None = None,
) -> dict[str, float]:
    """Judge class-conditional digit samples with a classifier trained on the real digits.

    ``n`` samples, an equal share of each class (labels i mod 10), are drawn with CFG scale
    ``guidance`` and classified (``class_accuracy``: the fraction classified as the class they
    were asked for). ``fid_features`` is the Fréchet distance in the classifier's feature space
    between m = min(n, 898) samples and m real digits; ``fid_real_baseline`` is the same distance
    between those real digits and m others — the value real data itself scores at that size.
    ``sampler`` and ``sigmas`` override the pipeline's sampler and its ``steps``-step grid.
    """
    classifier = load_or_train_digits_classifier()
    labels = torch.arange(n) % 10
    chunks = []
    for start in range(0, n, batch_size):
        part = labels[start : start + batch_size]
        chunks.append(pipeline.sample(
            len(part), cond=part, steps=None if sigmas is not None else steps, sigmas=sigmas, sampler=sampler,
            guidance=guidance, generator=seed + start,
        ))
    samples = torch.cat(chunks).clamp(-1, 1).cpu()
    half = min(n, NUM_IMAGES // 2)  # real_baseline_fid needs two disjoint real sets of this size
    size = pipeline.sample_shape[-1]
    real, _ = load_digits(size)
    order = torch.from_numpy(np.random.default_rng(seed).permutation(NUM_IMAGES)[: 2 * half])
    reference = real[order[:half]]  # the half real_baseline_fid compares with the other half
    return {
        "class_accuracy": class_accuracy(classifier, samples, labels),
        "fid_features": digits_fid(classifier, samples[:half], reference),
        "fid_real_baseline": real_baseline_fid(classifier, half, seed, size=size),
    }
