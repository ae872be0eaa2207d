"""Judging a trained ``shapes`` pipeline: prompt adherence on held-out combinations."""

from __future__ import annotations

import torch

from diffkit.demos.shapes.data import ShapesConfig, heldout_prompts
from diffkit.demos.shapes.judge import ShapesEvaluator
from diffkit.pipeline import Pipeline


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

    Prompts come from :func:`~diffkit.demos.shapes.data.heldout_prompts` — combinations the model never
    saw in training — and the decoded samples are judged by
    :class:`~diffkit.demos.shapes.judge.ShapesEvaluator` (colour and position measured, shape by a
    classifier trained on the generator's own images).
    """
    config = ShapesConfig(**{k: v for k, v in recipe["data"].items() if k != "name"})
    prompts = heldout_prompts(config, n_per_combination=per_combination)
    texts, specs = [text for text, _ in prompts], [spec for _, spec in prompts]
    chunks = []
    for start in range(0, len(texts), batch_size):
        part = texts[start : start + batch_size]
        chunks.append(pipeline.sample(len(part), cond=part, steps=steps, guidance=guidance, generator=seed + start))
    images = torch.cat(chunks).clamp(-1, 1).cpu()
    return ShapesEvaluator().score(images, specs)
