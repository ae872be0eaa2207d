"""A run killed by SIGKILL at random moments and resumed each time ends byte-identical to an
uninterrupted run.

``diffkit train`` saves a checkpoint after every step (so many kills land inside a save or a
rotation) and is killed at ≥ 20 moments drawn from a seeded generator, each some time after
the process reports that it is training; it is then resumed with ``--resume``. The last
checkpoint's weights, EMA weights and the saved pipeline must equal those of a run that was
never interrupted, bit for bit.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffkit.training.checkpoints import list_checkpoints

pytestmark = [pytest.mark.slow, pytest.mark.skipif(os.name != "posix", reason="SIGKILL")]

STEPS = 60
KILLS = 20
ARGS = [
    "train", "--recipe", "digits", "--steps", str(STEPS), "--no-progress",
    "train.batch_size=8", "train.save_every=1", "train.keep_last=2", "train.sample_every=0",
    "train.log_every=5", "train.warmup_steps=2", "sample.n=2", "sample.steps=2",
]


def _command(out: Path, *, resume: bool) -> list[str]:
    return [sys.executable, "-m", "diffkit", *ARGS, "--out", str(out), *(["--resume"] if resume else [])]


def _environment() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("DIFFKIT_FAULT_AT", None)
    return env


def _run_until_killed(out: Path, delay: float) -> bool:
    """Start (or resume) the run, SIGKILL it ``delay`` s after it starts training; True if killed."""
    process = subprocess.Popen(
        _command(out, resume=(out / "run.json").exists()), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        env=_environment(), text=True,
    )
    assert process.stderr is not None
    lines = []
    for line in process.stderr:  # wait until the claim is done and the loop starts
        lines.append(line)
        if line.startswith("training on"):
            break
    else:
        process.wait()
        raise AssertionError("the run ended before training:\n" + "".join(lines))
    try:
        process.wait(timeout=delay)
        return False  # it finished first
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
        return True


def _final_weights(out: Path) -> dict[str, dict[str, torch.Tensor]]:
    last = list_checkpoints(out / "checkpoints")[-1]
    assert last.name == f"step-{STEPS:09d}"
    return {
        "model": load_file(last / "model.safetensors"),
        "ema": load_file(last / "ema.safetensors"),
        "pipeline": load_file(out / "pipeline" / "backbone" / "model.safetensors"),
    }


def test_twenty_random_kills_and_resumes_end_byte_identical(tmp_path):
    reference = tmp_path / "uninterrupted"
    subprocess.run(_command(reference, resume=False), check=True, env=_environment(), capture_output=True)

    out = tmp_path / "killed"
    draw = random.Random(1234)
    kills = temporaries_seen = 0
    while kills < KILLS:
        if _run_until_killed(out, delay=draw.uniform(0.0, 0.35)):
            kills += 1
            temporaries_seen += any(p.name.endswith(".tmp") for p in (out / "checkpoints").glob(".step-*"))
        else:
            break  # the run completed between two kills (the delays are short, so rarely)
    finished = subprocess.run(_command(out, resume=True), env=_environment(), capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr
    assert kills >= KILLS, f"only {kills} kills landed before the run completed"
    assert temporaries_seen >= 1, "no kill landed inside a checkpoint save"

    expected, got = _final_weights(reference), _final_weights(out)
    for part in expected:
        assert expected[part].keys() == got[part].keys()
        for key in expected[part]:
            assert torch.equal(expected[part][key], got[part][key]), f"{part} {key} differs"
    for name in ("model.safetensors", "ema.safetensors"):
        step = f"step-{STEPS:09d}"
        assert (reference / "checkpoints" / step / name).read_bytes() == (out / "checkpoints" / step / name).read_bytes()
