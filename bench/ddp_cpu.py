"""CPU data-parallel scaling: diffkit's DDP training against a diffusers DDP loop, 1 and 2 processes.

What is measured: the training throughput (images per second over all processes) of the
``digits`` recipe's class-conditional UNet (8×8×1, widths 32/64, middle attention, 0.65 M
parameters; v-prediction, cosine schedule, 10 % CFG label drop, AdamW, warm-up + cosine LR,
clipping at 1.0, EMA 0.995; float32 on the CPU) at a global batch of ``--batch-size`` images per
optimizer step, for two training loops that start from the same weights
(:func:`bench.training.build_models`, whose agreement check is in :mod:`bench.training`):

* **diffkit**: the real :class:`~diffkit.training.Trainer` (``Trainer.train_step``) on the
  context of :func:`~diffkit.distributed.init_distributed` — the code ``diffkit train`` runs
  under ``torchrun``: with 2 processes, DDP over gloo, each rank training on its half of the
  global batch with its own noise stream (``Trainer.train()`` runs the same step and adds only
  one loss all-reduce per ``log_every`` = 25 steps for its log line);
* **diffusers**: the diffusers loop of :mod:`bench.training` (``UNet2DModel``, ``DDPMScheduler``
  ``add_noise``/``get_velocity``, AdamW, ``get_cosine_schedule_with_warmup``, ``EMAModel``)
  made data-parallel the way a diffusers user does it: ``DistributedSampler`` + ``DataLoader``
  of ``batch / N`` per rank, the model wrapped in ``DistributedDataParallel`` (gloo).

Three configurations, each one launch of :mod:`bench.ddp_cpu_worker` (``OMP_NUM_THREADS`` and
``torch.set_num_threads`` both set to the thread count):

* ``1 process × 2 threads`` — the single-process baseline using both cores through intra-op threads;
* ``1 process × 1 thread`` — the per-core baseline that scaling efficiency is measured against;
* ``2 processes × 1 thread each`` — ``python -m torch.distributed.run --standalone --nproc_per_node=2``.

Inside a launch both libraries are built in the same process(es); each first runs ``--warmup``
untimed optimizer steps (discarded: allocator, first-call and DDP bucket set-up costs), then
``--steps`` timed optimizer steps of each library, in ``--repeats`` blocks of about
``steps / repeats`` steps that alternate between the libraries (the order swapped every
repeat). A block is timed between two barriers (on every rank), so it covers only the
training loop — no start-up, data set or model building, checkpoints or sampling — and is as
slow as the slowest rank. Throughput of a block = its steps × global batch / seconds; the
table gives the median over the blocks (the fastest block is printed below it).

Columns: ratio = diffkit / diffusers throughput (> 1: diffkit faster); scaling efficiency =
throughput(configuration) / (2 × throughput(1 process × 1 thread)) of the same library — for
the 2-process row the data-parallel efficiency on 2 cores (1.0 = perfect), for the 2-thread row
the same figure for intra-op threading.

    python -m bench.ddp_cpu [--steps 150] [--repeats 3] [--batch-size 128] [--warmup 10]
    python -m bench.ddp_cpu --steps 20 --repeats 1                  # a smoke run
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

import attrs
import torch

from bench.ddp_cpu_worker import block_sizes, check_block_arguments

LIBRARIES = ("diffkit", "diffusers")
WORKER = "bench.ddp_cpu_worker"
# variables a surrounding torchrun job would have set; the workers must not inherit them
JOB_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                 "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT", "TORCHELASTIC_RUN_ID")
BLOCK_LINE = re.compile(
    r"^ddp_cpu block: library=(?P<library>\w+) repeat=(?P<repeat>\d+) processes=(?P<processes>\d+) "
    r"threads=(?P<threads>\d+) steps=(?P<steps>\d+) batch=(?P<batch>\d+) seconds=(?P<seconds>[0-9.eE+-]+) "
    r"images/s=(?P<images_per_second>[0-9.eE+-]+|nan|inf) loss=(?P<loss>\S+)\s*$"
)


@attrs.frozen(kw_only=True)
class Configuration:
    """How many processes, and how many intra-op threads each."""

    processes: int = attrs.field(validator=attrs.validators.ge(1))
    threads: int = attrs.field(validator=attrs.validators.ge(1))

    @property
    def name(self) -> str:
        if self.processes == 1:
            return f"1 process × {self.threads} thread{'s' if self.threads > 1 else ''}"
        each = f"{self.threads} thread{'s' if self.threads > 1 else ''} each"
        return f"{self.processes} processes × {each}"


BASELINE = Configuration(processes=1, threads=1)
CONFIGURATIONS = (Configuration(processes=1, threads=2), BASELINE, Configuration(processes=2, threads=1))


@attrs.frozen(kw_only=True)
class Block:
    """One timed block, as the worker's rank 0 reports it."""

    library: str
    repeat: int
    processes: int
    threads: int
    steps: int
    batch: int
    seconds: float
    images_per_second: float
    loss: float


def parse_block_line(line: str) -> Block | None:
    """The :class:`Block` a worker output line reports, or None for any other line."""
    match = BLOCK_LINE.match(line.strip())
    if match is None:
        return None
    fields = match.groupdict()
    ints = {name: int(fields[name]) for name in ("repeat", "processes", "threads", "steps", "batch")}
    floats = {name: float(fields[name]) for name in ("seconds", "images_per_second", "loss")}
    return Block(library=fields["library"], **ints, **floats)


def worker_command(
    configuration: Configuration, *, steps: int, repeats: int, warmup: int, batch_size: int, seed: int
) -> list[str]:
    """The command line of one configuration's launch (torchrun for more than one process)."""
    worker = [
        "-m", WORKER, f"--threads={configuration.threads}", f"--steps={steps}", f"--repeats={repeats}",
        f"--warmup={warmup}", f"--batch-size={batch_size}", f"--seed={seed}",
    ]
    if configuration.processes == 1:
        return [sys.executable, *worker]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={configuration.processes}"]
    return [*launcher, *worker]


def worker_environment(configuration: Configuration) -> dict[str, str]:
    """This environment with the thread count pinned and no inherited torchrun variables."""
    env = {key: value for key, value in os.environ.items() if key not in JOB_VARIABLES}
    env["OMP_NUM_THREADS"] = str(configuration.threads)
    env["MKL_NUM_THREADS"] = str(configuration.threads)
    return env


def run_configuration(
    configuration: Configuration,
    *,
    steps: int,
    repeats: int,
    warmup: int,
    batch_size: int,
    seed: int = 0,
    timeout_s: float = 900.0,
) -> dict[str, list[Block]]:
    """Launch the worker for one configuration; ``{library: [its timed blocks]}``.

    ``steps`` timed optimizer steps of each library in ``repeats`` blocks, after ``warmup``
    untimed ones; ``batch_size`` is the global batch.
    """
    block_sizes(steps, repeats)  # raises ValueError when the steps do not fill the blocks
    if batch_size % configuration.processes:
        raise ValueError(
            f"--batch-size {batch_size} does not split over {configuration.processes} processes; "
            f"use a multiple of {configuration.processes}"
        )
    command = worker_command(configuration, steps=steps, repeats=repeats, warmup=warmup,
                             batch_size=batch_size, seed=seed)
    result = subprocess.run(
        command, env=worker_environment(configuration), capture_output=True, text=True,
        timeout=timeout_s, check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"the {configuration.name} worker failed (exit {result.returncode}): {' '.join(command)}\n"
            f"{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        )
    blocks: dict[str, list[Block]] = {library: [] for library in LIBRARIES}
    for line in result.stdout.splitlines():
        block = parse_block_line(line)
        if block is not None:
            blocks[block.library].append(block)
    for library, found in blocks.items():
        if len(found) != repeats:
            raise RuntimeError(f"the {configuration.name} worker reported {len(found)} {library} blocks, "
                               f"expected {repeats}:\n{result.stdout[-2000:]}")
        wrong = [b for b in found if (b.processes, b.threads) != (configuration.processes, configuration.threads)]
        if wrong:
            raise RuntimeError(f"the {configuration.name} worker ran as {wrong[0].processes} process(es) × "
                               f"{wrong[0].threads} thread(s)")
    return blocks


def median_throughput(blocks: Sequence[Block]) -> float:
    """Median images/s over the blocks."""
    return statistics.median(block.images_per_second for block in blocks)


def scaling_efficiency(throughput: float, baseline: float, workers: int = 2) -> float:
    """``throughput / (workers × baseline)``: 1.0 when ``workers`` cores give ``workers``× one core."""
    if baseline <= 0 or not math.isfinite(baseline):
        return math.nan
    return throughput / (workers * baseline)


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> str:
    import diffusers

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"# machine: {cpu_model()} ({platform.machine()}), {os.cpu_count()} logical cores ({usable} usable), "
        f"torch {torch.__version__}, diffusers {diffusers.__version__}, Python {platform.python_version()}"
    )


def load_average() -> str:
    try:
        return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "load average unknown"


def print_table(results: dict[Configuration, dict[str, list[Block]]]) -> None:
    throughput = {
        configuration: {library: median_throughput(blocks[library]) for library in LIBRARIES}
        for configuration, blocks in results.items()
    }
    base = throughput.get(BASELINE)
    print("| configuration | diffkit images/s | diffusers images/s | ratio diffkit/diffusers | "
          "scaling efficiency diffkit | scaling efficiency diffusers |")
    print("|---|---|---|---|---|---|")
    for configuration, rates in throughput.items():
        ratio = rates["diffkit"] / rates["diffusers"]
        if base is None or configuration == BASELINE:
            efficiency = ["—", "—"]
        else:
            efficiency = [f"{scaling_efficiency(rates[lib], base[lib]):.3f}" for lib in LIBRARIES]
        print(f"| {configuration.name} | {rates['diffkit']:.0f} | {rates['diffusers']:.0f} | {ratio:.3f} | "
              f"{efficiency[0]} | {efficiency[1]} |")
    print()
    for configuration, blocks in results.items():
        for library in LIBRARIES:
            found = blocks[library]
            best = max(b.images_per_second for b in found)
            print(f"# {configuration.name}, {library}: best {best:.0f} images/s; block seconds "
                  + ", ".join(f"{b.seconds:.3f}" for b in found) + f"; loss (last block) {found[-1].loss:.4f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150,
                        help="timed optimizer steps of each library per configuration (split into the blocks)")
    parser.add_argument("--repeats", type=int, default=3, help="timed blocks of each library per configuration")
    parser.add_argument("--batch-size", type=int, default=128, help="global batch (split over the processes)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps of each library first")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    check_block_arguments(parser, args, ("steps", "repeats", "batch_size"))
    if args.batch_size % 2:
        parser.error(f"--batch-size must be even (it is split over 2 processes), got {args.batch_size}")

    start = time.perf_counter()
    print(machine_info())
    sizes = "/".join(str(n) for n in sorted(set(block_sizes(args.steps, args.repeats)), reverse=True))
    print(f"# recipe 'digits': global batch {args.batch_size}, float32 CPU, gloo; per configuration and library "
          f"{args.warmup} warm-up steps, then {args.steps} timed steps in {args.repeats} alternating blocks of "
          f"{sizes} steps; median images/s over the blocks")
    print(f"# at start: {load_average()}", flush=True)
    results: dict[Configuration, dict[str, list[Block]]] = {}
    for configuration in CONFIGURATIONS:
        launched = time.perf_counter()
        results[configuration] = run_configuration(
            configuration, steps=args.steps, repeats=args.repeats, warmup=args.warmup,
            batch_size=args.batch_size, seed=args.seed,
        )
        print(f"# {configuration.name}: launch took {time.perf_counter() - launched:.1f} s", flush=True)
    print(f"# at end: {load_average()}; total {time.perf_counter() - start:.0f} s")
    print()
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
