"""The ``diffkit train``, ``diffkit sample`` and ``diffkit demo`` commands."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from diffkit import registry
from diffkit.demos.digits.evaluate import evaluate_digits
from diffkit.demos.shapes.evaluate import evaluate_shapes
from diffkit.distributed import init_distributed, shutdown_distributed
from diffkit.errors import ConfigError, RunFolderError
from diffkit.io.files import read_json_object
from diffkit.io.image_folder import as_tensor, open_upright
from diffkit.io.imaging import check_output, save_png
from diffkit.io.pretrained import load_pretrained
from diffkit.recipes import apply_overrides, get_recipe, train_recipe
from diffkit.recipes.build import grid_rows
from diffkit.recipes.latent import AUTOENCODER_REPORT
from diffkit.recipes.run_folder import RECIPE_FILE
from diffkit.runtime.accel import enable_tf32
from diffkit.runtime.precision import PRECISIONS

DEMO_OUT = "diffkit-demo"
DEMOS = ("digits", "shapes")


def add_commands(commands: Any) -> None:
    """Add ``train``, ``sample`` and ``demo`` to the ``diffkit`` sub-command parser."""
    train = commands.add_parser(
        "train", help="train a recipe into a run folder (resumable); writes checkpoints, grids, GIFs",
        description=(
            "Train a recipe into a run folder. A new run needs a new or empty --out; a folder that holds a run "
            "is continued with --resume or discarded with --overwrite; a folder holding anything else is "
            "refused. The folder is locked while the run trains."
        ),
    )
    train.add_argument(
        "--recipe", help="a recipe name (diffkit train --recipe NAME); with --resume, default: the run's recorded recipe"
    )
    train.add_argument(
        "--steps", type=int,
        help="optimizer steps in all (the recipe's train.steps); with --resume, a larger number extends the run",
    )
    train.add_argument("--out", default=None, help="the run folder (default: ./runs/RECIPE)")
    group = train.add_mutually_exclusive_group()
    group.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its newest intact checkpoint"
    )
    group.add_argument(
        "--overwrite", action="store_true",
        help="discard the run in --out (only what it wrote) and start a new one",
    )
    train.add_argument("--backbone", help="one of the recipe's backbones (e.g. unet, dit)")
    train.add_argument("--sampler", help="the sampler for previews and the saved pipeline")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument(
        "--fsdp", action="store_true", help="under torchrun: shard weights and optimizer state (FSDP2) instead of DDP"
    )
    train.add_argument("--compile", action="store_true", help="torch.compile the backbone (eager if unavailable)")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, e.g. train.lr=0.001")
    train.set_defaults(run=_train)

    sample = commands.add_parser("sample", help="sample a grid from a trained pipeline folder")
    sample.add_argument("--from", dest="source", required=True, help="a run folder or a saved pipeline folder")
    sample.add_argument("--out", required=True, help="the PNG grid to write")
    sample.add_argument("--n", type=int, default=16, help="number of samples")
    sample.add_argument("--class", dest="label", type=int, action="append", help="class label(s), cycled over the grid")
    sample.add_argument("--prompt", action="append", help="text prompt(s), cycled over the grid")
    sample.add_argument("--negative", help="negative prompt (the unconditional branch of CFG)")
    sample.add_argument(
        "--steps", type=int, help="sampler steps (default: the pipeline's recommended number, saved at training time)"
    )
    sample.add_argument("--sampler", help="sampler name (default: the pipeline's)")
    sample.add_argument(
        "--guidance", type=float, default=None,
        help="CFG scale w ≥ 0, 1 = none (default: the pipeline's recommended scale, saved at training time)",
    )
    sample.add_argument("--seed", type=int, default=0, help="the random seed (default: 0); same seed, same samples")
    sample.add_argument("--height", type=int, default=None, help="image height in pixels (default: the pipeline's)")
    sample.add_argument("--width", type=int, default=None, help="image width in pixels (default: the pipeline's)")
    sample.add_argument(
        "--image", default=None,
        help="image-to-image: a picture to start from (sampled at its own size; every sample starts from it)",
    )
    sample.add_argument(
        "--strength", type=float, default=None,
        help="with --image: the share of the steps that run, in (0, 1] (default 0.8; 1 = from pure noise level)",
    )
    sample.add_argument(
        "--precision", default="auto", choices=PRECISIONS,
        help="the network's precision (auto: bf16 autocast on CUDA, fp32 on the CPU)",
    )
    sample.set_defaults(run=_sample)

    demo = commands.add_parser("demo", help="train a demo recipe (digits, shapes), sample, report metrics")
    demo.add_argument("recipe", nargs="?", default="digits", choices=DEMOS, help="which demo (default: digits)")
    demo.add_argument("--out", default=None, help=f"output folder (default: ./{DEMO_OUT} or ./{DEMO_OUT}-shapes)")
    demo.add_argument("--steps", type=int, help="diffusion training steps (default: the recipe's)")
    demo.add_argument(
        "--eval-n", type=int,
        help="digits: samples judged (default 1000); shapes: samples per held-out combination (default 8)",
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(run=_demo)


def _positive(name: str, value: int | None) -> int | None:
    if value is not None and value < 1:
        raise ConfigError(f"{name} must be ≥ 1, got {value}")
    return value


def _recipe_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The recipe to train: ``--recipe`` with the overrides, or on ``--resume`` the run's own.

    On ``--resume`` without ``--steps`` (or a ``train.steps=`` override) the run keeps the number
    of steps it recorded, so resuming never changes the plan by accident.
    """

    overrides = list(args.overrides or [])
    explicit_steps = _positive("--steps", args.steps) is not None or any(
        item.partition("=")[0] == "train.steps" for item in overrides
    )
    if args.steps is not None:
        overrides.append(f"train.steps={args.steps}")
    if args.sampler is not None:

        registry.get_entry("sampler", args.sampler)
        overrides.append(f"pipeline.sampler={args.sampler}")
    recorded = _recorded_recipe(_run_folder(args)) if args.resume else None
    if args.recipe is None:
        if recorded is None:
            raise ConfigError("pass --recipe NAME (or --resume --out DIR to continue the run in DIR)")
        recipe = apply_overrides(recorded, overrides)
        if args.backbone is not None:
            recipe = apply_overrides(recipe, [f"pipeline.backbone={args.backbone}"])
        return recipe
    recipe = get_recipe(args.recipe, overrides, backbone=args.backbone)
    steps = recorded.get("train", {}).get("steps") if isinstance(recorded, dict) else None
    if recorded is not None and not explicit_steps and isinstance(steps, int):
        recipe["train"]["steps"] = steps
    return recipe


def _run_folder(args: argparse.Namespace, recipe: dict[str, Any] | None = None) -> Path:
    """``--out``, or ``runs/RECIPE`` by default."""
    if args.out is not None:
        return Path(args.out)
    name = recipe["name"] if recipe is not None else args.recipe
    if name is None:
        raise ConfigError("--resume without --recipe needs --out DIR: the run folder to continue")
    return Path("runs") / name


def _recorded_recipe(out: Path) -> dict[str, Any] | None:
    """The recipe the run in ``out`` recorded (None when there is none to read: the claim names why)."""

    path = out / RECIPE_FILE
    if not path.exists():
        return None

    return read_json_object(path, what="the run's recipe record", error=RunFolderError)


def _train(args: argparse.Namespace) -> int:
    """Train a recipe; under ``torchrun`` every rank runs this (DDP, or FSDP2 with --fsdp)."""

    recipe = _recipe_from_args(args)
    out = _run_folder(args, recipe)
    context = init_distributed()
    try:
        if context.device.type == "cuda":

            enable_tf32()
        # a job restarted by torchrun (--max-restarts) continues from its newest complete checkpoint
        resume: bool | str = True if args.resume else ("auto" if context.restart_count > 0 else False)
        _, result = train_recipe(
            recipe, out, resume=resume, overwrite=args.overwrite, progress=not args.no_progress,
            distributed=context, fsdp=args.fsdp, compile=args.compile,
        )
    finally:
        shutdown_distributed()
    if context.is_main and result.already_complete:
        print(f"nothing to do: the run is complete at step {result.steps}; pipeline in {out / 'pipeline'}")
    elif context.is_main:
        print(
            f"trained {result.steps} steps in {result.seconds:.1f}s ({result.images_per_second:.0f} images/s), "
            f"final loss {result.final_loss:.4f}; pipeline in {out / 'pipeline'}, grid in {out / 'samples.png'}"
        )
    return 0


def _load_pipeline(source: str) -> Any:

    folder = Path(source)
    if (folder / "pipeline").is_dir() and not (folder / "pipeline.json").is_file():
        folder = folder / "pipeline"  # a run folder
    pipeline = load_pretrained(folder)
    if not hasattr(pipeline, "sample"):
        raise ConfigError(f"{source} holds a single component, not a pipeline; pass a run or pipeline folder")
    return pipeline


def _sample(args: argparse.Namespace) -> int:

    _positive("--n", args.n)
    _positive("--steps", args.steps)
    if args.label and args.prompt:
        raise ConfigError("pass --class or --prompt, not both")
    check_output(args.out)  # a file that cannot be written is refused before sampling
    if args.strength is not None and args.image is None:
        raise ConfigError("--strength goes with --image (image-to-image): pass the picture to start from")
    image = None if args.image is None else _read_start_image(args.image)
    pipeline = _load_pipeline(args.source)
    cond = _conditions(pipeline, args)
    guidance = args.guidance if args.guidance is not None else getattr(pipeline, "default_guidance", 1.0)
    steps = args.steps if args.steps is not None else getattr(pipeline, "default_steps", None)
    negative = None if args.negative is None else [args.negative] * args.n
    images = pipeline.sample(
        args.n, cond=cond, negative=negative, steps=steps, guidance=guidance,
        sampler=args.sampler, generator=args.seed, progress=True, precision=args.precision,
        height=args.height, width=args.width, image=image, strength=args.strength,
    )
    scale = max(1, 32 // pipeline.sample_shape[-1])
    nrow = grid_rows(pipeline, args.n) if args.label is None and args.prompt is None else None
    save_png(args.out, images, nrow=min(nrow or round(args.n**0.5), args.n), scale=scale)
    print(f"wrote {args.n} samples to {args.out} (guidance {guidance:g}, {steps} steps, seed {args.seed})")
    return 0


def _read_start_image(path: str) -> torch.Tensor:
    """``--image``: the picture as ImageFolder reads one (upright, RGB, over white), [3, H, W] in [−1, 1]."""
    try:
        return as_tensor(open_upright(path))
    except (OSError, ValueError) as exc:  # missing, unreadable, or not a picture (PIL's UnidentifiedImageError)
        raise ConfigError(f"--image {path}: cannot read it as a picture ({exc})") from exc


def _conditions(pipeline: Any, args: argparse.Namespace) -> Any:
    """What to condition the ``--n`` samples on: ``--class`` labels or ``--prompt`` texts (both
    cycled over the grid), by default every class in turn; each refused, before any sampling,
    when the pipeline's conditioner declares other inputs (:attr:`Conditioner.inputs`)."""
    conditioner = pipeline.conditioner
    takes = "nothing" if conditioner is None else getattr(conditioner, "inputs", None)
    for flag, given, needs in (("--class", args.label, "class labels"), ("--prompt", args.prompt, "text"),
                               ("--negative", args.negative, "text")):
        if given and takes is not None and takes != needs:
            raise ConfigError(f"{flag} needs a pipeline conditioned on {needs}; this one is conditioned on {takes}")
    if args.label:
        return torch.tensor([args.label[i % len(args.label)] for i in range(args.n)])
    if args.prompt:
        return [args.prompt[i % len(args.prompt)] for i in range(args.n)]
    if conditioner is None:
        return None
    num_classes = getattr(conditioner.config, "num_classes", None)
    if num_classes is None:
        hint = "--prompt TEXT" if takes == "text" else "--class N or --prompt TEXT"
        raise ConfigError(f"this pipeline is conditioned on {takes or 'inputs it does not name'}: pass {hint}")
    return torch.arange(args.n) % num_classes


def _demo(args: argparse.Namespace) -> int:
    """The main job: train a demo recipe, sample, print the metrics last."""

    start = time.perf_counter()
    overrides = [] if _positive("--steps", args.steps) is None else [f"train.steps={args.steps}"]
    if _positive("--eval-n", args.eval_n) is not None:
        key = "sample.eval_n" if args.recipe == "digits" else "sample.eval_per_combination"
        overrides.append(f"{key}={args.eval_n}")
    recipe = get_recipe(args.recipe, overrides)
    out = Path(args.out or (DEMO_OUT if args.recipe == "digits" else f"{DEMO_OUT}-{args.recipe}"))
    # the demo's folder is the demo's own: a new demo discards an earlier demo run (never other files)
    pipeline, result = train_recipe(recipe, out, overwrite=True, progress=not args.no_progress)
    print(
        f"trained {result.steps} steps in {result.seconds:.1f}s ({result.images_per_second:.0f} images/s); "
        f"wrote {out / 'samples.png'}, {out / 'progress.gif'}, {out / 'trajectory.gif'}",
        flush=True,
    )
    metrics_line = _digits_metrics(pipeline, recipe) if args.recipe == "digits" else _shapes_metrics(pipeline, recipe, out)
    print(f"{metrics_line} seconds={time.perf_counter() - start:.1f}")
    return 0


def _digits_metrics(pipeline: Any, recipe: dict[str, Any]) -> str:

    sample = recipe["sample"]
    metrics = evaluate_digits(pipeline, n=sample["eval_n"], steps=sample["steps"], guidance=sample["guidance"])
    print(
        f"{sample['eval_n']} guided samples (w={sample['guidance']}, {sample['steps']} steps): "
        f"real-vs-real Fréchet baseline {metrics['fid_real_baseline']:.3f}"
    )
    return f"class_accuracy={metrics['class_accuracy']:.4f} fid_features={metrics['fid_features']:.4f}"


def _shapes_metrics(pipeline: Any, recipe: dict[str, Any], out: Path) -> str:
    import json

    sample = recipe["sample"]
    report = json.loads((out / AUTOENCODER_REPORT).read_text(encoding="utf-8"))
    print(
        f"autoencoder: PSNR {report['psnr_heldout']:.2f} dB on held-out images "
        f"({report['psnr_train']:.2f} dB on training images), scaling factor {report['scaling_factor']:.4f}"
    )
    scores = {}
    for guidance in (1.0, sample["guidance"]):
        scores[guidance] = evaluate_shapes(
            pipeline, recipe, guidance=guidance, steps=sample["steps"], per_combination=sample["eval_per_combination"]
        )
        print(
            f"held-out prompts, w={guidance}: "
            + " ".join(f"{key}={value:.4f}" for key, value in sorted(scores[guidance].items()))
        )
    best = scores[sample["guidance"]]
    return " ".join(f"{key}={best[key]:.4f}" for key in ("color_accuracy", "shape_accuracy", "position_accuracy"))
