"""Training checkpoints: atomic, rotated, never half-read, loadable with weights_only=True."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from diffkit.errors import CheckpointError
from diffkit.training import checkpoints as ckpt
from diffkit.training.checkpoints import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint


def save(root, step, value=0.0, keep_last=None):
    return save_checkpoint(
        root, step,
        model={"w": torch.full((4,), float(value))},
        ema={"w": torch.full((4,), float(value) / 2)},
        state={"step": step, "rng": torch.arange(3, dtype=torch.uint8)},
        meta={"note": "test"},
        keep_last=keep_last,
    )


def test_a_checkpoint_round_trips_and_its_state_loads_with_weights_only(tmp_path):
    folder = save(tmp_path, 7, value=1.5)
    loaded = load_checkpoint(folder)
    assert torch.equal(loaded["model"]["w"], torch.full((4,), 1.5))
    assert torch.equal(loaded["ema"]["w"], torch.full((4,), 0.75))
    assert loaded["state"]["step"] == 7 and loaded["meta"]["step"] == 7
    torch.load(folder / ckpt.STATE_FILE, weights_only=True)  # no pickle of arbitrary objects


def test_rotation_keeps_the_last_k_and_only_after_the_new_one_is_complete(tmp_path):
    for step in range(1, 6):
        save(tmp_path, step, keep_last=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000004", "step-000000005"]


def test_a_failing_write_leaves_the_previous_checkpoint_intact(tmp_path, monkeypatch):
    save(tmp_path, 1, value=1.0, keep_last=1)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device.*previous checkpoints are intact"):
        save(tmp_path, 2, value=2.0, keep_last=1)
    assert [p.name for p in tmp_path.iterdir()] == ["step-000000001"]  # no temporary folder left
    assert torch.equal(load_checkpoint(latest_checkpoint(tmp_path))["model"]["w"], torch.full((4,), 1.0))


def test_a_leftover_temporary_folder_is_never_taken_for_a_checkpoint(tmp_path):
    save(tmp_path, 1)
    leftover = tmp_path / ".step-000000002.abcdef.tmp"
    leftover.mkdir()
    (leftover / ckpt.META_FILE).write_text("{}")
    assert latest_checkpoint(tmp_path).name == "step-000000001"
    save(tmp_path, 3)
    assert not leftover.exists()  # cleaned up by the next save


@pytest.mark.parametrize("damaged", [ckpt.MODEL_FILE, ckpt.EMA_FILE, ckpt.STATE_FILE, ckpt.META_FILE])
def test_a_truncated_file_is_a_clear_error_naming_it(tmp_path, damaged):
    folder = save(tmp_path, 1)
    path = folder / damaged
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CheckpointError, match=damaged):
        load_checkpoint(folder)


def test_no_checkpoint_is_an_error():
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        latest_checkpoint("/nonexistent/run/checkpoints")


KILLER = textwrap.dedent(
    """
    import sys, torch
    from diffkit.training.checkpoints import save_checkpoint
    root = sys.argv[1]
    big = torch.randn(2_000_000)
    step = 0
    print("ready", flush=True)
    while True:
        step += 1
        save_checkpoint(root, step, model={"w": big + step}, ema={"w": big}, state={"step": step},
                        meta={}, keep_last=2)
    """
)


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL")
def test_a_process_killed_while_saving_leaves_a_loadable_latest_checkpoint(tmp_path):
    """SIGKILL a process that saves 8 MB checkpoints in a loop, at several moments."""
    for attempt, delay in enumerate((0.3, 0.55, 0.8)):
        root = tmp_path / f"run{attempt}"
        process = subprocess.Popen([sys.executable, "-c", KILLER, str(root)], stdout=subprocess.PIPE)
        assert process.stdout.readline().strip() == b"ready"
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        found = list_checkpoints(root)
        if not found:
            continue  # killed before the first save completed: nothing to check
        loaded = load_checkpoint(found[-1])
        step = loaded["state"]["step"]
        assert loaded["meta"]["step"] == step
        assert torch.allclose(loaded["model"]["w"] - step, loaded["ema"]["w"], atol=1e-4)  # that very step
