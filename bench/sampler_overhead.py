"""Sampler overhead per step: diffkit's sampling loop against diffusers' ``scheduler.step()`` loop.

The network is replaced by a trivial one (it returns its input), so what is timed is the solver's own
work per step: coefficient arithmetic, tensor updates, bookkeeping. Both loops run the same
number of steps on the same tensors, CPU, same process, alternating diffkit and diffusers runs;
the figure is the fastest of several repeats (the least disturbed by the rest of the machine),
per sampler step, and the ratio diffkit/diffusers (goal ≤ 0.5).

Stochastic samplers draw one N(0, I) tensor per step in both libraries, and for large tensors
that draw (torch's CPU normal generator) is most of the step. The last column gives the ratio
with one draw per step, timed on its own, taken off both sides: the solver's own overhead.

    python -m bench.sampler_overhead [--steps 50] [--repeats 7]
"""

from __future__ import annotations

import argparse
import inspect
import platform
import time

import torch

import diffkit
from bench.peers import DIFFUSERS_PEERS, make_scheduler
from diffkit.testing.subject import resolve_sampler

SCHEDULE = diffkit.build("schedule", "linear")
SHAPES = [(1, 3, 32, 32), (16, 4, 64, 64)]


def time_diffkit(name: str, x: torch.Tensor, sigmas: torch.Tensor) -> float:
    def denoiser(y: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        return y  # trivial network: no work, so only the solver is timed

    sampler = diffkit.get("sampler", name)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    sampler(denoiser, x, sigmas, generator=generator)
    return time.perf_counter() - start


def time_diffusers(name: str, steps: int, x: torch.Tensor) -> float:
    scheduler = make_scheduler(name, SCHEDULE, "trailing")  # schedulers are stateful: fresh per run
    scheduler.set_timesteps(steps)  # outside the timing, like diffkit's sigmas_for
    stochastic = "generator" in inspect.signature(scheduler.step).parameters
    extra = {"generator": torch.Generator().manual_seed(0)} if stochastic else {}
    start = time.perf_counter()
    sample = x
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, t)
        eps = model_input  # the same trivial network
        sample = scheduler.step(eps, t, sample, **extra).prev_sample
    return time.perf_counter() - start


def noise_draw_time(shape: tuple[int, ...], repeats: int) -> float:
    """Seconds for one standard-normal draw of ``shape`` from a torch.Generator (fastest repeat)."""
    generator = torch.Generator().manual_seed(0)

    def draw() -> float:
        start = time.perf_counter()
        for _ in range(10):
            torch.randn(shape, generator=generator)
        return (time.perf_counter() - start) / 10

    return min(draw() for _ in range(repeats))


def fastest_pair(ours, theirs, repeats: int) -> tuple[float, float]:
    """The fastest of ``repeats`` runs of each, run alternately after one warm-up of each."""
    ours(), theirs()
    times = [(ours(), theirs()) for _ in range(repeats)]
    return min(t[0] for t in times), min(t[1] for t in times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    print(f"# machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"# {args.steps} steps, fastest of {args.repeats} alternating repeats; times are per step (μs)")
    noise_us = {shape: noise_draw_time(shape, args.repeats) * 1e6 for shape in SHAPES}
    print("# one N(0, I) draw: " + ", ".join(f"{'×'.join(map(str, k))}: {v:.0f} μs" for k, v in noise_us.items()))
    print("| sampler | diffusers scheduler | shape | diffkit μs/step | diffusers μs/step | ratio | ratio without the noise draw |")
    print("|---|---|---|---|---|---|---|")
    for name in [n for n in DIFFUSERS_PEERS if n in diffkit.names("sampler")]:
        for shape in SHAPES:
            x = torch.randn(shape, generator=torch.Generator().manual_seed(1))
            sigmas = SCHEDULE.sigmas_for(args.steps, "trailing")
            ours, theirs = fastest_pair(
                lambda: time_diffkit(name, x, sigmas), lambda: time_diffusers(name, args.steps, x.clone()), args.repeats
            )
            # per sampler step for both (a Heun step is two diffusers step() calls)
            ours_step, theirs_step = ours / args.steps * 1e6, theirs / args.steps * 1e6
            if resolve_sampler(name).stochastic:
                noise = noise_us[shape]
                solver_only = f"{max(ours_step - noise, 0) / max(theirs_step - noise, 1e-9):.2f}"
            else:
                solver_only = "(no noise)"
            print(
                f"| {name} | {DIFFUSERS_PEERS[name][0]} | {'×'.join(map(str, shape))} | {ours_step:.0f} | "
                f"{theirs_step:.0f} | {ours_step / theirs_step:.2f} | {solver_only} |"
            )


if __name__ == "__main__":
    main()
