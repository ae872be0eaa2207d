"""Flow matching against v-prediction: the same network, data and budget, judged at 4, 8 and 20 NFE.

Trains the ``digits`` recipe (v-prediction on the cosine VP schedule) and ``digits-flow`` (the
same UNet, data, batch, optimizer, LR schedule, EMA and step count, trained by flow matching:
velocity target, logit-normal t, flow schedule) into ``OUT/digits`` and ``OUT/digits-flow`` (an
existing finished run there is reused), then samples each EMA pipeline with every sampler at
every NFE on the schedule's own default grid (``trailing`` on VP, diffusers' uniform flow grid)
and, for each sampler and NFE, on an ``optimize_sigmas`` grid calibrated on that model (its own
noises and labels, not the ones scored). Each sample set is judged by the digits classifier:
class accuracy of ``--n`` samples (labels i mod 10) and the Fréchet distance in the classifier's
features (``diffkit.demos.digits.evaluate``), with classifier-free guidance ``--guidance``.

NFE counts network evaluations per sample at one CFG batch each: euler, dpmpp_2m and unipc take
one per step, so NFE = steps.

    python -m bench.flow_vs_vp [--out /tmp/flow-vs-vp] [--n 1000] [--nfe 4 8 20]
        [--samplers euler dpmpp_2m unipc] [--calibration 64] [--optimize-nfe 4 8]
        [--reference-steps 64] [--sweeps 2] [--train-steps N]

The ``optimize_sigmas`` settings are below the library's defaults (256 noises' worth of
reference, 4 sweeps) because every one of its denoiser calls is a CFG UNet call here: on
2 CPU cores one 8-NFE grid costs about two minutes at these settings.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

import diffkit
from diffkit.demos.digits.evaluate import evaluate_digits
from diffkit.pipeline import Pipeline
from diffkit.recipes import get_recipe
from diffkit.recipes.run import train_recipe
from diffkit.sampling import CFGDenoiser, optimize_sigmas

RECIPES = ("digits", "digits-flow")
CALIBRATION_SEED = 12345  # the calibration noises and labels are drawn apart from the scored ones (seed 0)


def machine_line() -> str:
    """The ``# machine: …`` line a bench prints first: architecture, cores, threads, torch and diffkit."""
    return (
        f"# machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, diffkit {diffkit.__version__}"
    )


def train(name: str, out: Path, train_steps: int | None) -> tuple[Pipeline, float]:
    """The EMA pipeline of recipe ``name`` trained into ``out/name`` (resumed or reused when there)."""
    overrides = [f"train.steps={train_steps}"] if train_steps else []
    start = time.perf_counter()
    pipeline, _ = train_recipe(get_recipe(name, overrides), out / name, resume="auto", progress=False)
    assert pipeline is not None
    return pipeline.eval(), time.perf_counter() - start


def optimized_grid(
    pipeline: Pipeline, sampler: str, steps: int, guidance: float, calibration: int, reference_steps: int, sweeps: int
) -> torch.Tensor:
    """``optimize_sigmas`` for this model under CFG, calibrated on its own noises and labels."""
    g = torch.Generator().manual_seed(CALIBRATION_SEED)
    labels = torch.randint(0, 10, (calibration,), generator=g)
    z = torch.randn((calibration, *pipeline.sample_shape), generator=g)
    cond = pipeline.condition(labels)
    denoiser = CFGDenoiser(pipeline.denoiser(), guidance, uncond=pipeline.condition(labels, force_drop=True))
    return optimize_sigmas(
        denoiser, sampler=sampler, steps=steps, schedule=pipeline.schedule, calibration=z, cond=cond,
        reference_steps=reference_steps, sweeps=sweeps,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="/tmp/flow-vs-vp", help="run folders of the two trainings")
    parser.add_argument("--n", type=int, default=1000, help="samples judged per cell")
    parser.add_argument("--nfe", type=int, nargs="+", default=[4, 8, 20])
    parser.add_argument("--samplers", nargs="+", default=["euler", "dpmpp_2m", "unipc"])
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--calibration", type=int, default=64, help="noises for optimize_sigmas (0: skip)")
    parser.add_argument("--optimize-nfe", type=int, nargs="+", default=[4, 8],
                        help="the NFEs that also get an optimize_sigmas grid (its cost grows as NFE²)")
    parser.add_argument("--reference-steps", type=int, default=64, help="optimize_sigmas' RK4 reference steps")
    parser.add_argument("--sweeps", type=int, default=2, help="optimize_sigmas' coordinate sweeps")
    parser.add_argument("--train-steps", type=int, default=None, help="override both recipes' train.steps")
    args = parser.parse_args(argv)
    out = Path(args.out)
    print(machine_line())
    print("recipe | sampler | grid | NFE | class accuracy | Fréchet distance | real-data Fréchet")
    for name in RECIPES:
        pipeline, seconds = train(name, out, args.train_steps)
        print(f"# {name}: parameterization {pipeline.parameterization}, schedule {pipeline.schedule!r}, "
              f"trained/loaded in {seconds:.0f} s")
        for sampler in args.samplers:
            for nfe in args.nfe:
                grids: list[tuple[str, torch.Tensor | None]] = [("default", None)]
                if args.calibration and nfe in args.optimize_nfe:
                    grid = optimized_grid(
                        pipeline, sampler, nfe, args.guidance, args.calibration, args.reference_steps, args.sweeps
                    )
                    grids.append(("optimized", grid))
                for grid_name, sigmas in grids:
                    scores = evaluate_digits(
                        pipeline, n=args.n, steps=nfe, guidance=args.guidance, sampler=sampler, sigmas=sigmas
                    )
                    print(
                        f"{name} | {sampler} | {grid_name} | {nfe} | {scores['class_accuracy']:.3f} | "
                        f"{scores['fid_features']:.3f} | {scores['fid_real_baseline']:.3f}",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
