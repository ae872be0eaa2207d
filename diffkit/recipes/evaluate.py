"""Evaluation of trained recipes: class accuracy and Fréchet distance for ``digits``."""

from __future__ import annotations

import numpy as np
import torch

from diffkit.data.digits import NUM_IMAGES, load_digits
from diffkit.metrics import class_accuracy, digits_fid, load_or_train_digits_classifier, real_baseline_fid
from diffkit.pipeline import Pipeline


def evaluate_digits(
    pipeline: Pipeline,
    *,
    n: int = 1000,
    steps: int = 20,
    guidance: float = 2.0,
    seed: int = 0,
    batch_size: int = 500,
) -> dict[str, float]:
    """Judge class-conditional digit samples with a classifier trained on the real digits.

    ``n`` samples, an equal share of each class (labels i mod 10), are drawn with CFG scale
    ``guidance`` and classified (``class_accuracy``: the fraction classified as the class they
    were asked for). ``fid_features`` is the Fréchet distance in the classifier's feature space
    between m = min(n, 898) samples and m real digits; ``fid_real_baseline`` is the same distance
    between those real digits and m others — the value real data itself scores at that size.
    """
    classifier = load_or_train_digits_classifier()
    labels = torch.arange(n) % 10
    chunks = []
    for start in range(0, n, batch_size):
        part = labels[start : start + batch_size]
        chunks.append(pipeline.sample(len(part), cond=part, steps=steps, guidance=guidance, generator=seed + start))
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


def evaluate_shapes(
    pipeline: Pipeline,
    recipe: dict,
    *,
    guidance: float,
    steps: int = 20,
    per_combination: int = 8,
    seed: int = 0,
    batch_size: int = 200,
) -> dict[str, float]:
    """Prompt adherence on the held-out (colour, shape, position) combinations of a shapes recipe.

    Prompts come from :func:`~diffkit.data.shapes.heldout_prompts` — combinations the model never
    saw in training — and the decoded samples are judged by
    :class:`~diffkit.metrics.shapes.ShapesEvaluator` (colour and position measured, shape by a
    classifier trained on the generator's own images).
    """
    from diffkit.data.shapes import ShapesConfig, heldout_prompts
    from diffkit.metrics.shapes import ShapesEvaluator

    config = ShapesConfig(**{k: v for k, v in recipe["data"].items() if k != "name"})
    prompts = heldout_prompts(config, n_per_combination=per_combination)
    texts, specs = [text for text, _ in prompts], [spec for _, spec in prompts]
    chunks = []
    for start in range(0, len(texts), batch_size):
        part = texts[start : start + batch_size]
        chunks.append(pipeline.sample(len(part), cond=part, steps=steps, guidance=guidance, generator=seed + start))
    images = torch.cat(chunks).clamp(-1, 1).cpu()
    return ShapesEvaluator().score(images, specs)
