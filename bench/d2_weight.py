"""DPM-Solver++(3M)'s second-difference weight on trained models: ``d2_weight`` "dpm_solver" against "taylor".

``dpmpp_3m`` and ``dpmpp_3m_sde`` weight the second difference Δ2 ≈ h²D'' by c·φ_3: c = ½ by
default (``d2_weight="dpm_solver"``: DPM-Solver's reference code, diffusers and k-diffusion; a
second-order method) or c = 1 (``d2_weight="taylor"``: the Taylor term, third order;
docs/samplers.md). This bench measures the choice where it is used, on the two demo models:

* ``digits`` (class-conditional pixel UNet, v-prediction): class accuracy of ``--n`` samples
  (labels i mod 10) under the digits classifier and the Fréchet distance in its features to real
  digits, with the real-against-real distance at that size as the floor
  (:func:`diffkit.demos.digits.evaluate.evaluate_digits`);
* ``shapes`` (text-to-image DiT on KL latents): colour, shape, position and joint adherence on the
  held-out prompts (the samples and the judge of :func:`diffkit.demos.shapes.evaluate.evaluate_shapes`,
  drawn once here for both scores), and a Fréchet
  distance in the shape classifier's 32 penultimate features (the foreground map: shape, size
  and position, not colour) to images the data generator renders for the same prompts, with
  the distance between two such rendered sets as the floor.

Each model is trained into ``OUT/digits`` and ``OUT/shapes`` (a finished run there is reused), or
taken from a finished run folder given with ``--digits-run`` / ``--shapes-run`` (its recorded
recipe). Every cell samples the same noise (seed 0 per batch, as the evaluators do), so the two
weights are compared on identical starts and, for the SDE, identical noise; the two weights
coincide on the first two steps and differ from the third on.

    python -m bench.d2_weight [--out /tmp/d2-weight] [--digits-run RUN] [--shapes-run RUN] [--models digits shapes]
        [--steps 10 20 50] [--n 1000] [--per-combination 32] [--guidance 2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from bench.flow_vs_vp import machine_line
from diffkit.demos.digits.evaluate import evaluate_digits
from diffkit.demos.frechet import frechet_distance
from diffkit.demos.judge_cache import batched
from diffkit.demos.shapes.data import ShapesConfig, heldout_prompts, render
from diffkit.demos.shapes.judge import ShapeClassifier, ShapesEvaluator, load_or_train_shape_classifier
from diffkit.pipeline import Pipeline
from diffkit.recipes import get_recipe
from diffkit.recipes.run import train_recipe
from diffkit.recipes.run_folder import read_run

SAMPLERS = ("dpmpp_3m", "dpmpp_3m_sde")
WEIGHTS = ("dpm_solver", "taylor")
SHAPES_KEYS = ("color_accuracy", "shape_accuracy", "position_accuracy", "joint_accuracy")
RENDER_SEEDS = (101, 102)  # the two rendered reference sets of the shapes Fréchet distance


def trained(name: str, out: Path, run: str | None) -> tuple[Pipeline, dict[str, Any], float, str]:
    """(EMA pipeline, recipe, seconds, where) of recipe ``name``: the finished run ``run`` if given
    (its recorded recipe, resumed if unfinished), else trained into (or reused from) ``out/name``."""
    start = time.perf_counter()
    if run is not None:
        folder = Path(run)
        _, recipe = read_run(folder)
        if recipe.get("name") != name:
            raise SystemExit(f"{folder} holds a {recipe.get('name')!r} run, not {name!r}")
        pipeline, _ = train_recipe(recipe, folder, resume=True, progress=False)
    else:
        folder = out / name
        recipe = get_recipe(name)
        pipeline, _ = train_recipe(recipe, folder, resume="auto", progress=False)
    assert pipeline is not None
    return pipeline.eval(), recipe, time.perf_counter() - start, str(folder)


def use(pipeline: Pipeline, sampler: str, weight: str) -> None:
    """Make ``sampler`` with ``d2_weight=weight`` the pipeline's sampler (the evaluators sample with it)."""
    pipeline.sampler, pipeline.sampler_options = sampler, {"d2_weight": weight}


class ShapeFeatures:
    """The shape classifier's penultimate activations relu(fc(pooled)) [N, 32] of RGB images in [−1, 1]."""

    def __init__(self, classifier: ShapeClassifier) -> None:
        self.classifier = classifier.eval()
        self._seen: list[torch.Tensor] = []
        classifier.fc.register_forward_hook(lambda module, args, output: self._seen.append(F.relu(output)))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        def one(batch: torch.Tensor) -> torch.Tensor:
            self._seen.clear()
            self.classifier(batch)
            return self._seen[-1]

        return batched(one, images.float(), 256)


def rendered_heldout(recipe: dict[str, Any], per_combination: int, seed: int) -> torch.Tensor:
    """The data generator's own images [N, 3, S, S] in [−1, 1] of the held-out prompts, in their order."""
    config = ShapesConfig(**{k: v for k, v in recipe["data"].items() if k != "name"})
    rng = np.random.default_rng(seed)
    images = [render(spec, config.image_size, rng, texture=config.texture, jitter=config.jitter)
              for _, spec in heldout_prompts(config, n_per_combination=per_combination)]
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def shapes_samples(
    pipeline: Pipeline, recipe: dict[str, Any], *, steps: int, guidance: float, per_combination: int
) -> tuple[torch.Tensor, list[Any]]:
    """(samples [N, 3, S, S], the specs they were asked for) of the held-out prompts, drawn as
    :func:`~diffkit.demos.shapes.evaluate.evaluate_shapes` draws them (batches of 200, seed = offset)."""
    config = ShapesConfig(**{k: v for k, v in recipe["data"].items() if k != "name"})
    prompts = heldout_prompts(config, n_per_combination=per_combination)
    texts, specs = [text for text, _ in prompts], [spec for _, spec in prompts]
    chunks = [pipeline.sample(len(texts[i : i + 200]), cond=texts[i : i + 200], steps=steps, guidance=guidance,
                              generator=i) for i in range(0, len(texts), 200)]
    return torch.cat(chunks).clamp(-1, 1).cpu(), specs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/d2-weight", help="where the two recipes are trained (or reused)")
    parser.add_argument("--digits-run", default=None, help="a finished digits run folder to use instead")
    parser.add_argument("--shapes-run", default=None, help="a finished shapes run folder to use instead")
    parser.add_argument("--models", nargs="+", choices=("digits", "shapes"), default=["digits", "shapes"])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--n", type=int, default=1000, help="digits samples judged per cell")
    parser.add_argument("--per-combination", type=int, default=32, help="shapes samples per held-out combination")
    parser.add_argument("--guidance", type=float, default=2.0, help="CFG scale of both models (their recipes' w)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    print(machine_line(), flush=True)

    if "digits" in args.models:
        digits(args, out)
    if "shapes" in args.models:
        shapes(args, out)
    return 0


def digits(args: argparse.Namespace, out: Path) -> None:
    """The digits table: class accuracy and Fréchet distance per sampler, step count and weight."""
    pipeline, _, seconds, where = trained("digits", out, args.digits_run)
    print(f"# digits: {where}, trained/loaded in {seconds:.0f} s, guidance {args.guidance:g}, n = {args.n}", flush=True)
    print("model | sampler | d2_weight | steps | class accuracy | Fréchet distance | real-data Fréchet | seconds")
    for sampler in SAMPLERS:
        for steps in args.steps:
            for weight in WEIGHTS:
                use(pipeline, sampler, weight)
                start = time.perf_counter()
                scores = evaluate_digits(pipeline, n=args.n, steps=steps, guidance=args.guidance)
                print(f"digits | {sampler} | {weight} | {steps} | {scores['class_accuracy']:.3f} | "
                      f"{scores['fid_features']:.3f} | {scores['fid_real_baseline']:.3f} | "
                      f"{time.perf_counter() - start:.0f}", flush=True)


def shapes(args: argparse.Namespace, out: Path) -> None:
    """The shapes table: held-out adherence and Fréchet distance per sampler, step count and weight."""
    pipeline, recipe, seconds, where = trained("shapes", out, args.shapes_run)
    features = ShapeFeatures(load_or_train_shape_classifier())  # its own copy: the hook stays out of the judge
    judge = ShapesEvaluator()
    reference = features(rendered_heldout(recipe, args.per_combination, RENDER_SEEDS[0]))
    floor = frechet_distance(reference, features(rendered_heldout(recipe, args.per_combination, RENDER_SEEDS[1])))
    count = len(reference)
    print(f"# shapes: {where}, trained/loaded in {seconds:.0f} s, guidance {args.guidance:g}, {count} held-out "
          f"prompts; Fréchet distance between two rendered sets: {floor:.3f}", flush=True)
    print("model | sampler | d2_weight | steps | " + " | ".join(SHAPES_KEYS) + " | Fréchet distance | seconds")
    for sampler in SAMPLERS:
        for steps in args.steps:
            for weight in WEIGHTS:
                use(pipeline, sampler, weight)
                start = time.perf_counter()
                samples, specs = shapes_samples(pipeline, recipe, steps=steps, guidance=args.guidance,
                                                per_combination=args.per_combination)
                scores = judge.score(samples, specs)
                distance = frechet_distance(features(samples), reference)
                cells = " | ".join(f"{scores[key]:.3f}" for key in SHAPES_KEYS)
                print(f"shapes | {sampler} | {weight} | {steps} | {cells} | {distance:.3f} | "
                      f"{time.perf_counter() - start:.0f}", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
