"""Accuracy against NFE: diffkit's deterministic samplers and their diffusers peers, same run.

Data: the conformance kit's Gaussian mixture (d = 4; one broad anisotropic component and two
tight ones), whose exact denoiser is closed-form. Linear β schedule, T = 1000. Every run starts
from the same VP noise z (x_T = z, i.e. y = z·√(1+σ_start²) in σ form) and is scored against
the exact probability-flow ODE endpoint from its own σ_start (RK4, float64):

    error = √(mean_n ‖x0_n − x0_exact,n‖²) / √tr Cov[x0]

Part 1 — each sampler with its diffusers peer on the peer's own σ grid (diffkit fed that grid),
for diffusers' default spacing ("linspace") and "trailing": ratio diffkit/diffusers (goal ≤ 1.05).
Part 2 — the best diffkit sampler × spacing at 10 NFE (including grids placed by
``diffkit.schedules.optimize_sigmas``, calibrated on other noises than the ones scored) against
the best diffusers scheduler × spacing × σ-grid option × solver order at 10 NFE (goal ≤ 0.5×).
Every Part 2 run starts at the table's σ_max.

    python -m bench.sampler_accuracy [--points 2048] [--nfe 5 10 20 50] [--calibration 1024]
"""

from __future__ import annotations

import argparse
import functools
import math
import platform
import time

import numpy as np
import torch

import diffkit
from bench.peers import DIFFUSERS_PEERS, ExactEpsModel, diffusers_sigma_grid, make_scheduler, run_diffusers
from diffkit.schedules import optimize_sigmas
from diffkit.testing import problems
from diffkit.testing.subject import resolve_sampler

SCHEDULE = diffkit.build("schedule", "linear")
DATA = problems.data("mixture")
SCALE = problems.scale("mixture")
SPACINGS = tuple(getattr(diffkit.schedules, "SPACINGS", ("leading", "linspace", "trailing")))


class CountingDenoiser:
    """diffkit's denoiser for the data (σ form), counting calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, y: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        self.calls += 1
        return torch.from_numpy(DATA.denoise(y.double().numpy(), sigma.double().numpy()))


@functools.lru_cache(maxsize=None)
def exact_endpoints(z_key: bytes, sigma_start: float) -> np.ndarray:
    """The exact ODE endpoints from y = z·√(1+σ_start²) at σ_start (RK4, float64), cached."""
    z = np.frombuffer(z_key, dtype=np.float64).reshape(-1, problems.DIM)
    return DATA.ode_solution(z * math.sqrt(1 + sigma_start**2), sigma_start)


def error(x0: torch.Tensor, z: torch.Tensor, sigma_start: float) -> float:
    """RMS distance to the exact endpoints, relative to the data's spread."""
    exact = exact_endpoints(z.double().numpy().tobytes(), sigma_start)
    return float(np.sqrt(np.mean(np.sum((x0.double().numpy() - exact) ** 2, axis=-1)))) / SCALE


def run_diffkit(sampler: str, sigmas: torch.Tensor, z: torch.Tensor, options: dict | None = None) -> tuple[float, int]:
    """(error, NFE) of a diffkit sampler (with ``options``) on the σ grid ``sigmas`` from VP noise z."""
    denoiser = CountingDenoiser()
    y = z.double() * math.sqrt(1 + float(sigmas[0]) ** 2)
    out = diffkit.build("sampler", sampler, **(options or {}))(denoiser, y, sigmas)
    return error(out, z, float(sigmas[0])), denoiser.calls


def steps_for_nfe(run_calls, nfe: int) -> int | None:
    """The largest step count whose run makes at most ``nfe`` denoiser calls."""
    best = None
    for steps in range(1, nfe + 1):
        if run_calls(steps) <= nfe:
            best = steps
    return best


def peer_calls(name: str, spacing: str, steps: int, **extra) -> int:
    scheduler = make_scheduler(name, SCHEDULE, spacing, **extra)
    scheduler.set_timesteps(steps)
    model = ExactEpsModel(DATA.denoise, SCHEDULE)
    run_diffusers(scheduler, model, torch.zeros(1, problems.DIM))
    return model.calls


def side_by_side(name: str, spacing: str, nfe: int, z: torch.Tensor, **extra) -> dict | None:
    steps = steps_for_nfe(lambda s: peer_calls(name, spacing, s, **extra), nfe)
    if steps is None:
        return None
    scheduler = make_scheduler(name, SCHEDULE, spacing, **extra)
    scheduler.set_timesteps(steps)
    sigmas = diffusers_sigma_grid(scheduler, SCHEDULE)
    model = ExactEpsModel(DATA.denoise, SCHEDULE)
    theirs = run_diffusers(scheduler, model, z)
    their_error = error(theirs, z, float(sigmas[0]))
    our_error, our_calls = run_diffkit(name, sigmas, z)
    return {
        "steps": steps, "nfe": model.calls, "our_nfe": our_calls, "ours": our_error, "theirs": their_error,
        "sigma_start": float(sigmas[0]),
    }


def _has_option(name: str, option: str) -> bool:
    import inspect

    import diffusers

    return option in inspect.signature(getattr(diffusers, DIFFUSERS_PEERS[name][0]).__init__).parameters


def _peer_variants(name: str) -> list[dict]:
    """Every σ-grid option the diffusers peer offers (default, Karras, exponential, λ-uniform),
    and solver order 3 for UniPC, so the best diffusers configuration is found."""
    grids = [{}] + [{flag: True} for flag in ("use_karras_sigmas", "use_exponential_sigmas", "use_lu_lambdas")
                    if _has_option(name, flag)]
    orders = [{}, {"solver_order": 3}] if name == "unipc" else [{}]
    return [{**grid, **order} for grid in grids for order in orders]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", type=int, default=2048)
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--calibration", type=int, default=1024, help="noises for optimize_sigmas")
    args = parser.parse_args()
    z = torch.randn(args.points, problems.DIM, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    start = time.perf_counter()
    print(f"# machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, points {args.points}")
    deterministic = [n for n in diffkit.names("sampler") if not resolve_sampler(n).stochastic]
    available = [n for n in DIFFUSERS_PEERS if n in deterministic]  # error to the ODE: deterministic only

    print("\n## Part 1: each sampler against its diffusers peer on the peer's σ grid")
    print("| sampler | spacing | NFE | diffkit error | diffusers error | ratio |")
    print("|---|---|---|---|---|---|")
    for name in available:
        for spacing in ("linspace", "trailing"):
            for nfe in args.nfe:
                row = side_by_side(name, spacing, nfe, z)
                if row is None:
                    continue
                ratio = row["ours"] / row["theirs"] if row["theirs"] > 0 else float("nan")
                nfe_note = row["nfe"] if row["our_nfe"] == row["nfe"] else f"{row['nfe']} (diffkit {row['our_nfe']})"
                print(f"| {name} | {spacing} | {nfe_note} | {row['ours']:.3e} | {row['theirs']:.3e} | {ratio:.3f} |")

    print("\n## Part 2: best at 10 NFE, every run starting at the table's σ_max (t = T−1)")
    sigma_max = SCHEDULE.sigma_max
    best_theirs = (math.inf, "")
    for name in available:
        for extra in _peer_variants(name):
            for spacing in ("leading", "linspace", "trailing"):
                row = side_by_side(name, spacing, 10, z, **extra)
                if row is None or abs(row["sigma_start"] / sigma_max - 1) > 1e-6:
                    continue
                label = f"{name} ({DIFFUSERS_PEERS[name][0]}), {spacing}, {extra or 'defaults'}, {row['nfe']} NFE"
                print(f"  diffusers {label}: {row['theirs']:.3e}")
                if row["theirs"] < best_theirs[0]:
                    best_theirs = (row["theirs"], label)
    print(f"best diffusers: {best_theirs[0]:.3e} — {best_theirs[1]}")
    best_ours = (math.inf, "")
    variants = [(name, {}) for name in deterministic] + [("unipc", {"order": 3})]
    for name, options in variants:
        for spacing in SPACINGS:
            steps = steps_for_nfe(lambda s: run_diffkit(name, SCHEDULE.sigmas_for(s, spacing), z[:1], options)[1], 10)
            if steps is None:
                continue
            sigmas = SCHEDULE.sigmas_for(steps, spacing)
            if abs(float(sigmas[0]) / sigma_max - 1) > 1e-6:
                continue
            err, nfe = run_diffkit(name, sigmas, z, options)
            label = f"{name} {options or ''}, {spacing}, {nfe} NFE"
            print(f"  diffkit {label}: {err:.3e}")
            if err < best_ours[0]:
                best_ours = (err, label)
    # optimized step placement (diffkit.schedules.optimize_sigmas), calibrated on noises
    # drawn from another seed than the evaluation batch
    calibration = torch.randn(args.calibration, problems.DIM, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for name, options in [("unipc", {"order": 3}), ("unipc", {}), ("dpmpp_2m", {}), ("dpmpp_3m", {})]:
        sampler = diffkit.build("sampler", name, **options)
        sigmas = optimize_sigmas(CountingDenoiser(), sampler=sampler, steps=10, schedule=SCHEDULE, calibration=calibration)
        err, nfe = run_diffkit(name, sigmas, z, options)
        label = f"{name} {options or ''}, optimize_sigmas (calibrated on {args.calibration} other noises), {nfe} NFE"
        print(f"  diffkit {label}: {err:.3e}")
        if err < best_ours[0]:
            best_ours = (err, label)
    print(f"best diffkit:   {best_ours[0]:.3e} — {best_ours[1]}")
    print(f"ratio best diffkit / best diffusers at 10 NFE: {best_ours[0] / best_theirs[0]:.3f} (goal ≤ 0.5)")
    print(f"\n# {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
