"""Smoke tests of the CPU data-parallel benchmark (bench/ddp_cpu.py, bench/ddp_cpu_worker.py) at tiny sizes.

The worker's block lines must parse back to what was written; a one-process configuration
(in this process) and a two-process one (torchrun, gloo, DDP on both sides) must report a
positive, finite throughput for both libraries and a finite loss.
"""

from __future__ import annotations

import math

import pytest
import torch

from bench import ddp_cpu, ddp_cpu_worker

pytestmark = pytest.mark.slow

TINY = {"steps": 3, "repeats": 1, "warmup": 1, "batch_size": 8}


def _block_line(**values: object) -> str:
    fields = {
        "library": "diffkit", "repeat": 2, "processes": 2, "threads": 1, "steps": 150, "batch": 128,
        "seconds": 12.3456, "images_per_second": 1555.25, "loss": 0.2468, **values,
    }
    return ddp_cpu_worker.BLOCK_FORMAT.format(**fields)


def test_block_line_parses_back_to_what_the_worker_wrote() -> None:
    block = ddp_cpu.parse_block_line(_block_line(library="diffusers", repeat=0, processes=1, threads=2))
    assert block == ddp_cpu.Block(
        library="diffusers", repeat=0, processes=1, threads=2, steps=150, batch=128,
        seconds=12.3456, images_per_second=1555.25, loss=0.2468,
    )
    # the throughput is consistent with the other fields: steps × batch / seconds
    assert block.images_per_second == pytest.approx(block.steps * block.batch / block.seconds, rel=1e-3)


@pytest.mark.parametrize(
    "line",
    [
        "trained 150 steps in 12.3s (1555 images/s), final loss 0.2468; pipeline in runs/x/pipeline",
        "ddp_cpu worker: rank 0 of 2 (gloo, cpu), world size 2, 1 thread(s) per process, global batch 128",
        "",
    ],
)
def test_other_lines_are_not_blocks(line: str) -> None:
    assert ddp_cpu.parse_block_line(line) is None


def test_scaling_efficiency_and_configurations() -> None:
    assert ddp_cpu.scaling_efficiency(2000.0, 1000.0) == pytest.approx(1.0)  # 2 cores, 2× one core
    assert ddp_cpu.scaling_efficiency(1000.0, 1000.0) == pytest.approx(0.5)  # no gain from the second
    assert math.isnan(ddp_cpu.scaling_efficiency(1000.0, 0.0))
    names = [c.name for c in ddp_cpu.CONFIGURATIONS]
    assert names == ["1 process × 2 threads", "1 process × 1 thread", "2 processes × 1 thread each"]
    one = ddp_cpu.worker_command(ddp_cpu.BASELINE, seed=0, **TINY)
    two = ddp_cpu.worker_command(ddp_cpu.CONFIGURATIONS[2], seed=0, **TINY)
    assert "torch.distributed.run" not in one and "--nproc_per_node=2" in two
    assert ddp_cpu.worker_environment(ddp_cpu.CONFIGURATIONS[2])["OMP_NUM_THREADS"] == "1"
    with pytest.raises(ValueError, match="does not split"):
        ddp_cpu.run_configuration(ddp_cpu.CONFIGURATIONS[2], steps=1, repeats=1, warmup=0, batch_size=7)


def test_block_sizes_split_the_steps_evenly() -> None:
    for steps, repeats in [(150, 3), (20, 1), (10, 4), (7, 7)]:
        sizes = ddp_cpu_worker.block_sizes(steps, repeats)
        assert len(sizes) == repeats and sum(sizes) == steps and max(sizes) - min(sizes) <= 1
    with pytest.raises(ValueError, match="cannot split"):
        ddp_cpu_worker.block_sizes(2, 3)


def _check(blocks: list[ddp_cpu.Block], processes: int) -> None:
    assert len(blocks) == TINY["repeats"]
    for block in blocks:
        assert (block.processes, block.threads, block.steps, block.batch) == (processes, 1, 3, 8)
        assert math.isfinite(block.images_per_second) and block.images_per_second > 0
        assert math.isfinite(block.loss) and block.loss > 0


def test_one_process_worker_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    threads = torch.get_num_threads()
    try:
        assert ddp_cpu_worker.main(["--threads=1", *(f"--{k.replace('_', '-')}={v}" for k, v in TINY.items())]) == 0
    finally:
        torch.set_num_threads(threads)
    blocks = [b for b in map(ddp_cpu.parse_block_line, capsys.readouterr().out.splitlines()) if b is not None]
    for library in ddp_cpu.LIBRARIES:
        _check([b for b in blocks if b.library == library], processes=1)


def test_two_processes_under_torchrun() -> None:
    results = ddp_cpu.run_configuration(ddp_cpu.CONFIGURATIONS[2], timeout_s=120, **TINY)
    assert set(results) == set(ddp_cpu.LIBRARIES)
    for blocks in results.values():
        _check(blocks, processes=2)
