"""Training under ``torchrun`` on the CPU (gloo, 2 processes): DDP and FSDP2, resume, a killed worker.

Every run trains the digits recipe for 6 steps (global batch 32: micro-batches of 16, 8 per
rank, 2 accumulated per step) and is compared with the others through its weights:

* DDP equals data-parallel SGD written out by hand in this process (each rank's slice of the
  batch with its own noise stream, gradients averaged);
* a run whose rank 1 dies at step 4 and is resumed — by hand, or by ``torchrun --max-restarts``
  — ends with exactly the weights of the uninterrupted run;
* FSDP2 reaches the DDP weights (to float round-off), and its sharded checkpoint resumes on
  2 processes exactly and on 1 process (resharded by torch.distributed.checkpoint).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffkit.distributed.faults import FAULT_EXIT_CODE, FAULT_VARIABLE
from diffkit.io.pretrained import load_pretrained
from diffkit.recipes import build_pipeline, get_recipe
from diffkit.recipes.run import training_data
from diffkit.training import TrainConfig, Trainer
from diffkit.training.checkpoints import list_checkpoints
from diffkit.training.data import batch_indices, rank_slice
from diffkit.training.rng import step_seed

pytestmark = pytest.mark.slow

STEPS = 6
ACCUMULATION = 2  # so DDP's no_sync and FSDP's deferred reduce-scatter are exercised too
OVERRIDES = [
    "train.batch_size=16", f"train.accumulation={ACCUMULATION}", "train.save_every=2", "train.sample_every=0",
    "train.warmup_steps=1", "sample.n=10", "sample.steps=2",
]
TIMEOUT_S = 240


def _command(out: Path, processes: int, *extra: str, restarts: int = 0) -> list[str]:
    train = ["-m", "diffkit", "train", "--recipe", "digits", "--steps", str(STEPS), "--out", str(out),
             "--no-progress", *OVERRIDES, *extra]  # an override in `extra` wins
    if processes == 1:
        return [sys.executable, *train]
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    if restarts:
        launcher.append(f"--max-restarts={restarts}")
    return [*launcher, *train]


def _run(
    out: Path, processes: int, *extra: str, restarts: int = 0, fault: str | None = None
) -> subprocess.CompletedProcess:
    return _launch(_command(out, processes, *extra, restarts=restarts), fault=fault)


def _launch(command: list[str], *, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_VARIABLE, None)
    if fault is not None:
        env[FAULT_VARIABLE] = fault
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT"):
        env.pop(name, None)  # never inherit a surrounding job's variables
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)


def _ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def _weights(out: Path) -> dict[str, torch.Tensor]:
    """The trained pipeline's EMA weights."""
    return load_pretrained(out / "pipeline").state_dict()


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], *, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert worst <= atol, f"weights differ by up to {worst:.3g} (allowed {atol:g})"


def _interrupted(out: Path, *extra: str) -> None:
    """A 2-process run whose rank 1 dies right after step 4 (checkpoint step 4 complete)."""
    result = _run(out, 2, *extra, fault="1:4")
    assert result.returncode != 0
    assert f"exitcode  : {FAULT_EXIT_CODE}" in result.stderr
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-000000002", "step-000000004"]
    assert not (out / "pipeline").exists()


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    result = _ok(_run(out, 2))
    assert "global batch 32 = 8 per rank × 2 ranks × 2 accumulation" in result.stderr
    assert "trained 6 steps" in result.stdout and result.stdout.count("trained") == 1  # rank 0 reports
    return out


@pytest.fixture(scope="module")
def interrupted_ddp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp-interrupted")
    _interrupted(out)
    return out


@pytest.fixture(scope="module")
def ddp_resumed_on_one_process(interrupted_ddp_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp-on-1") / "run"
    shutil.copytree(interrupted_ddp_run, out)
    result = _ok(_run(out, 1, "--resume"))
    assert "written by 2 process(es), on 1" in result.stderr
    return out


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("fsdp")
    _ok(_run(out, 2, "--fsdp"))
    return out


def test_ddp_is_data_parallel_sgd_over_the_ranks_slices(ddp_run, tmp_path):
    """The same 6 steps done by hand in one process: each rank's slices, its own noise, mean gradient."""
    recipe = get_recipe("digits", [f"train.steps={STEPS}", *OVERRIDES])
    assert recipe["backbones"]["unet"]["dropout"] == 0  # no global-RNG draws to interleave below
    config = TrainConfig(**recipe["train"])
    data, _ = training_data(recipe, tmp_path)
    torch.manual_seed(config.seed)
    pipeline = build_pipeline(recipe, captions=data.cond)
    trainer = Trainer(pipeline, data, config, progress=False, device="cpu")  # its optimizer and EMA
    world = 2
    for step in range(STEPS):
        for group in trainer.optimizer.param_groups:
            group["lr"] = config.learning_rate(step)
        # each rank's noise stream is seeded once per step and read across its micro-batches
        streams = [torch.Generator().manual_seed(step_seed(config.seed, rank, step)) for rank in range(world)]
        for micro in range(ACCUMULATION):
            cursor = (step * ACCUMULATION + micro) * config.batch_size
            indices = batch_indices(len(data), config.seed, cursor, config.batch_size)
            for rank in range(world):
                images, cond = data.batch(rank_slice(indices, rank, world))
                loss, _ = pipeline.loss(images, cond, generator=streams[rank])
                (loss / (world * ACCUMULATION)).backward()  # DDP averages over ranks, the trainer over micro-batches
        torch.nn.utils.clip_grad_norm_(list(pipeline.parameters()), config.grad_clip)
        trainer.optimizer.step()
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.ema.update(pipeline)
    _assert_same(_weights(ddp_run), trainer.ema.module.state_dict(), atol=2e-5)


def test_a_run_resumed_after_a_worker_died_ends_with_the_uninterrupted_weights(
    ddp_run, interrupted_ddp_run, tmp_path
):
    out = tmp_path / "run"
    shutil.copytree(interrupted_ddp_run, out)
    _ok(_run(out, 2, "--resume"))
    _assert_same(_weights(out), _weights(ddp_run))


def test_torchrun_max_restarts_recovers_from_a_killed_worker(ddp_run, tmp_path):
    result = _ok(_run(tmp_path, 2, restarts=1, fault="1:3"))  # dies after step 3; checkpoint 2 is the latest
    assert result.stderr.count("training on rank 0 of 2") == 2  # the first attempt and the restart
    assert "resumed from" in result.stderr and "step-000000002 (step 2)" in result.stderr
    _assert_same(_weights(tmp_path), _weights(ddp_run))


def test_a_ddp_checkpoint_resumes_on_another_number_of_processes(ddp_resumed_on_one_process):
    assert [p.name for p in list_checkpoints(ddp_resumed_on_one_process / "checkpoints")][-1] == "step-000000006"
    assert (ddp_resumed_on_one_process / "samples.png").is_file()


def test_fsdp_reaches_the_ddp_weights(fsdp_run, ddp_run):
    checkpoint = list_checkpoints(fsdp_run / "checkpoints")[-1]
    assert (checkpoint / "sharded" / ".metadata").is_file() and not (checkpoint / "model.safetensors").exists()
    _assert_same(_weights(fsdp_run), _weights(ddp_run), atol=2e-5)


def test_fsdp_resume_is_exact_on_two_processes_and_reshards_onto_one(
    fsdp_run, ddp_resumed_on_one_process, tmp_path
):
    interrupted = tmp_path / "interrupted"
    _interrupted(interrupted, "--fsdp")
    on_two, on_one = tmp_path / "two", tmp_path / "one"
    shutil.copytree(interrupted, on_two)
    shutil.move(interrupted, on_one)
    _ok(_run(on_two, 2, "--fsdp", "--resume"))
    _assert_same(_weights(on_two), _weights(fsdp_run))
    result = _ok(_run(on_one, 1, "--fsdp", "--resume"))  # 2 shards → 1 (DCP reshards)
    assert "written by 2 process(es), on 1" in result.stderr
    # the same continuation as the DDP checkpoint resumed on one process, to float round-off
    _assert_same(_weights(on_one), _weights(ddp_resumed_on_one_process), atol=2e-5)


def test_a_replicated_checkpoint_is_not_resumed_as_sharded(interrupted_ddp_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(interrupted_ddp_run, out)
    result = _run(out, 1, "--fsdp", "--resume")
    assert result.returncode == 2
    assert "written by a run without --fsdp" in result.stderr


def test_a_batch_the_world_size_does_not_divide_is_refused_before_training(tmp_path):
    result = _run(tmp_path, 2, "train.batch_size=33")
    assert result.returncode != 0
    assert "does not split evenly over 2 processes; use a multiple of 2 (e.g. 32 or 34)" in result.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_a_latent_text_recipe_trains_sharded_on_two_processes(tmp_path):
    """shapes: rank 0 trains the autoencoder, rank 1 waits and reuses it; the cross-attention
    UNet and the text encoder are trained with FSDP over the two ranks."""
    from tests.demos.shapes.test_recipe import TINY

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "diffkit", "train", "--recipe", "shapes", "--backbone", "latent_unet", "--steps", "2",
               "--out", str(tmp_path), "--no-progress", "--fsdp", *TINY]
    result = _ok(_launch(command))
    assert "global batch 8 = 4 per rank × 2 ranks" in result.stderr
    pipeline = load_pretrained(tmp_path / "pipeline")
    assert type(pipeline.backbone).__name__ == "LatentUNet" and pipeline.autoencoder is not None
    assert (tmp_path / "autoencoder.json").is_file() and (tmp_path / "samples.png").is_file()
