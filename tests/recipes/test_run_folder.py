"""A run folder belongs to one run: the reproductions of issue 11's "data loss and mixed runs".

Each test is one reproduction that lost or mixed work before run folders had an identity, a
lock and checked checkpoints; they all pass now.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffkit.cli.commands import main
from diffkit.errors import CheckpointError, NonFiniteError, RunFolderError, RunInUseError
from diffkit.recipes import get_recipe, train_recipe
from diffkit.recipes.run_folder import recipe_sha256
from diffkit.training.checkpoints import list_checkpoints, verify_checkpoint
from diffkit.training.run_lock import run_lock

pytestmark = pytest.mark.usefixtures("one_thread")

O = ["train.save_every=5", "train.batch_size=8", "sample.n=4", "sample.steps=2", "train.warmup_steps=1"]


def train(out: Path, *extra: str, steps: int | None = 20) -> int:
    """``diffkit train --recipe digits`` (but on a bare ``--resume``) into ``out``; returns the exit status."""
    flags = [e for e in extra if e.startswith("--")]
    overrides = [e for e in extra if not e.startswith("--")]
    args = ["train", "--out", str(out), "--no-progress", *flags]
    if flags != ["--resume"] or overrides or steps is not None:
        args += ["--recipe", "digits"]
    if steps is not None:
        args += ["--steps", str(steps)]
    return main([*args, *O, *overrides])


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes but the lock file's (its holder record is rewritten by each attempt)."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "run.lock"
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 20-step run (checkpoints at 15 and 20 kept)."""
    out = tmp_path_factory.mktemp("finished") / "R"
    assert train(out) == 0
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    out = tmp_path / "R"
    shutil.copytree(finished_run, out)
    return out


# -- 1. a second run never takes over a run folder ------------------------------------------


def test_a_second_run_without_resume_is_refused_and_changes_nothing(run_copy, capsys):
    before = snapshot(run_copy)
    assert train(run_copy, steps=10) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert snapshot(run_copy) == before


def test_overwrite_discards_the_earlier_run_and_starts_a_new_one(run_copy):
    old_id = json.loads((run_copy / "run.json").read_text())["run_id"]
    assert train(run_copy, "--overwrite", steps=10) == 0
    record = json.loads((run_copy / "run.json").read_text())
    assert record["run_id"] != old_id and record["steps"] == 10 and record["finished_step"] == 10
    assert [p.name for p in list_checkpoints(run_copy / "checkpoints")] == ["step-000000005", "step-000000010"]
    assert json.loads((run_copy / "recipe.json").read_text())["train"]["steps"] == 10


def test_resume_never_adopts_another_runs_checkpoint_and_rotation_keeps_it(run_copy, tmp_path, capsys):
    """A newer checkpoint of another run dropped into the folder is skipped, never deleted."""
    other = tmp_path / "other"
    assert train(other, steps=25) == 0
    shutil.copytree(other / "checkpoints" / "step-000000025", run_copy / "checkpoints" / "step-000000025")
    assert train(run_copy, "--resume", steps=30) == 0
    err = capsys.readouterr().err
    assert "skipping checkpoint" in err and "step-000000025" in err and "another run" in err
    assert "resumed from" in err and "step-000000020" in err
    names = [p.name for p in list_checkpoints(run_copy / "checkpoints")]
    assert names == ["step-000000025", "step-000000030"]  # ours rotated (20 removed), theirs kept
    ours = json.loads((run_copy / "run.json").read_text())["run_id"]
    assert verify_checkpoint(run_copy / "checkpoints" / "step-000000030")["run"]["run_id"] == ours


# -- 2. the user's files are never touched ----------------------------------------------------


@pytest.mark.parametrize("flag", [[], ["--overwrite"]])
def test_a_folder_of_the_users_files_is_refused_byte_identical(tmp_path, capsys, flag):
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("samples.png", "progress.gif", "trajectory.gif", "recipe.json", "notes.txt"):
        (out / name).write_bytes(b"the user's own " + name.encode())
    (out / "pipeline").mkdir()
    (out / "pipeline" / "weights.bin").write_bytes(b"precious")
    before = snapshot(out)
    assert train(out, *flag, steps=5) == 2
    err = capsys.readouterr().err
    assert "no diffkit run recorded writing" in err and "notes.txt" in err and "samples.png" in err
    assert snapshot(out) == before and sorted(os.listdir(out)) == sorted(
        ["samples.png", "progress.gif", "trajectory.gif", "recipe.json", "notes.txt", "pipeline"]
    )


def test_overwrite_leaves_files_it_did_not_write(run_copy):
    (run_copy / "notes.txt").write_text("mine")
    assert train(run_copy, "--overwrite", steps=5) == 0
    assert (run_copy / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("where", ["file", "under_a_file", "proc"])
def test_an_unusable_out_is_a_named_error_before_any_work(tmp_path, capsys, where):
    target = {"file": tmp_path / "f", "under_a_file": tmp_path / "f" / "run", "proc": Path("/proc/diffkit-run")}[where]
    (tmp_path / "f").write_text("a file")
    assert train(target, steps=5) == 2
    assert "diffkit: error:" in capsys.readouterr().err
    assert (tmp_path / "f").read_text() == "a file"


# -- 3. one process per run folder ------------------------------------------------------------

HOLDER = """
import sys, time
from diffkit.training.run_lock import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(60)
"""


def test_a_locked_run_folder_is_refused_naming_the_holder(run_copy, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_copy)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run_copy)
        assert train(run_copy, "--resume", steps=30) == 2
        err = capsys.readouterr().err
        assert "in use by process" in err and str(holder.pid) in err
        assert snapshot(run_copy) == before
        with pytest.raises(RunInUseError):
            train_recipe(json.loads((run_copy / "recipe.json").read_text()), run_copy, resume=True, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert train(run_copy, "--resume", steps=25) == 0  # the OS dropped the dead holder's lock


def test_two_concurrent_trainings_one_is_refused(tmp_path):
    out = tmp_path / "R"
    command = [sys.executable, "-m", "diffkit", "train", "--recipe", "digits", "--steps", "400", "--out", str(out),
               "--no-progress", "train.batch_size=8", "train.save_every=1", "sample.n=2", "sample.steps=1"]
    first = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in first.stderr:
            if line.startswith("training on"):
                break
        second = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2
        assert "in use by process" in second.stderr and str(first.pid) in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        first.kill()
        first.wait()


# -- 4. a bad value costs no training ---------------------------------------------------------


@pytest.mark.parametrize(
    "override, message",
    [
        ("sample.guidance=NaN", "sample.guidance"),
        ("sample.steps=0", "sample.steps"),
        ("sample.n=x", "sample.n"),
        ("sample.eval_n=-1", "sample.eval_n"),
        ("train.adam_betas=ab", "adam_betas"),
        ("train.adam_betas=5", "adam_betas"),
        ("backbones.unet.norm_groups=7", "norm_groups"),
        ("pipeline.conditioner=5", "pipeline.conditioner"),
    ],
)
def test_a_bad_recipe_value_is_refused_before_the_first_step(tmp_path, capsys, override, message):
    out = tmp_path / "R"
    assert train(out, override, steps=200) == 2
    assert message in capsys.readouterr().err
    assert not (out / "checkpoints").exists() and not (out / "run.json").exists()


def test_resume_with_another_recipe_names_the_key_and_only_steps_may_grow(run_copy, capsys):
    assert train(run_copy, "train.lr=0.01", "--resume", steps=None) == 2
    assert "train.lr: 0.002 → 0.01" in capsys.readouterr().err
    assert train(run_copy, "--resume", steps=10) == 2
    assert "not shortened" in capsys.readouterr().err
    assert json.loads((run_copy / "run.json").read_text())["steps"] == 20  # the record is untouched


def test_resume_without_recipe_uses_the_recorded_one_and_steps_extend_it(run_copy, capsys):
    assert main(["train", "--out", str(run_copy), "--resume", "--no-progress"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(["train", "--out", str(run_copy), "--resume", "--steps", "25", "--no-progress"]) == 0
    assert "trained 25 steps" in capsys.readouterr().out
    assert json.loads((run_copy / "recipe.json").read_text())["train"]["steps"] == 25
    record = json.loads((run_copy / "run.json").read_text())
    assert record["steps"] == 25 and record["finished_step"] == 25
    assert record["recipe_sha256"] == recipe_sha256(json.loads((run_copy / "recipe.json").read_text()))


def test_an_extended_run_equals_a_run_planned_long_when_the_schedule_is_constant(tmp_path):
    """Extending changes only the LR schedule's horizon; with a constant LR it is bit-exact."""
    constant = ["train.lr_schedule=constant"]
    assert train(tmp_path / "long", *constant, steps=25) == 0
    assert train(tmp_path / "short", *constant, steps=20) == 0
    assert train(tmp_path / "short", *constant, "--resume", steps=25) == 0
    last = "checkpoints/step-000000025/model.safetensors"
    assert (tmp_path / "long" / last).read_bytes() == (tmp_path / "short" / last).read_bytes()


# -- 5. a damaged newest checkpoint: resume from the newest intact one ---------------------


def _unfinished_run(tmp_path: Path) -> Path:
    """A run killed right after step 10 (checkpoints 5 and 10), as a crash leaves it."""
    out = tmp_path / "R"
    env = dict(os.environ, DIFFKIT_FAULT_AT="0:10")
    command = [sys.executable, "-m", "diffkit", "train", "--recipe", "digits", "--steps", "15", "--out", str(out),
               "--no-progress", *O]
    assert subprocess.run(command, env=env, capture_output=True).returncode != 0
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-000000005", "step-000000010"]
    return out


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


DAMAGES = {
    "truncated model": lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:100]),
    "missing meta": lambda c: (c / "meta.json").unlink(),
    "meta a list": lambda c: (c / "meta.json").write_text("[1, 2]"),
    "meta a FIFO": lambda c: ((c / "meta.json").unlink(), os.mkfifo(c / "meta.json")),
    "missing state": lambda c: (c / "state.pt").unlink(),
    "pickle payload state": lambda c: torch.save({"step": 10, "x": _Payload()}, c / "state.pt"),
    "NaN weights": lambda c: save_file(
        {k: torch.full_like(v, float("nan")) for k, v in load_file(c / "model.safetensors").items()},
        str(c / "model.safetensors"),
    ),
    "state a FIFO": lambda c: ((c / "state.pt").unlink(), os.mkfifo(c / "state.pt")),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_a_damaged_newest_checkpoint_is_skipped_for_the_newest_intact_one(tmp_path, capsys, monkeypatch, damage):
    out = _unfinished_run(tmp_path)
    monkeypatch.chdir(tmp_path)
    DAMAGES[damage](out / "checkpoints" / "step-000000010")
    assert train(out, "--resume", steps=None) == 0
    err = capsys.readouterr().err
    assert "skipping checkpoint" in err and "step-000000010" in err
    assert "resumed from" in err and "step-000000005" in err
    assert "weights_only=False" not in err
    assert not (tmp_path / "PWNED").exists()
    assert json.loads((out / "run.json").read_text())["finished_step"] == 15


def test_every_checkpoint_damaged_is_a_named_error_listing_each(tmp_path, capsys):
    out = _unfinished_run(tmp_path)
    for folder in list_checkpoints(out / "checkpoints"):
        (folder / "state.pt").write_bytes(b"not a zip")
    assert train(out, "--resume", steps=None) == 2
    err = capsys.readouterr().err
    assert "no intact checkpoint" in err and "step-000000005" in err and "step-000000010" in err


def test_a_pickle_payload_state_is_refused_without_the_unsafe_advice(tmp_path):
    from diffkit.training.checkpoints import load_checkpoint

    out = _unfinished_run(tmp_path)
    folder = out / "checkpoints" / "step-000000010"
    torch.save({"step": 10, "x": _Payload()}, folder / "state.pt")
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(folder)
    assert "posix.system" in str(error.value) or "Unsupported" in str(error.value)
    assert "weights_only=False" not in str(error.value)


# -- 7. training that diverges stops, keeping the last good checkpoint -----------------------


def test_a_diverging_run_stops_naming_the_step_and_saves_nothing_non_finite(tmp_path, monkeypatch):
    from diffkit.pipeline import Pipeline

    out = tmp_path / "R"
    original = Pipeline.loss

    def poisoned(self, x0, *args, **kwargs):  # the loss turns NaN from step 8 on
        loss, parts = original(self, x0, *args, **kwargs)
        step = poisoned.calls = getattr(poisoned, "calls", 0) + 1
        return (loss * float("nan") if step > 7 else loss), parts

    monkeypatch.setattr(Pipeline, "loss", poisoned)
    recipe = get_recipe("digits", [*O, "train.steps=20", "train.log_every=100"])
    with pytest.raises(NonFiniteError, match=r"between step 5 and step \d+"):
        train_recipe(recipe, out, progress=False)
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-000000005"]
    weights = load_file(out / "checkpoints" / "step-000000005" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
    assert not (out / "pipeline").exists()


def test_a_run_killed_before_its_record_leaves_a_folder_a_new_run_takes(tmp_path):
    out = tmp_path / "R"
    out.mkdir()
    (out / "run.lock").write_text("{}")
    (out / ".run.json.0123456789ab.tmp").write_text("half")
    assert train(out, steps=5) == 0
    assert not (out / ".run.json.0123456789ab.tmp").exists()


def test_a_damaged_run_record_is_a_named_error(run_copy, capsys):
    (run_copy / "run.json").write_text("[]")
    assert train(run_copy, "--resume", steps=25) == 2
    assert "run record" in capsys.readouterr().err
    (run_copy / "run.json").write_text('{"run_id": "x", "recipe_sha256": "y", "steps": 20}')
    assert train(run_copy, "--resume", steps=25) == 2
    assert "hash differs" in capsys.readouterr().err


def test_the_lock_is_reentrant_within_a_process_and_released_after(tmp_path):
    with run_lock(tmp_path), run_lock(tmp_path):
        pass
    probe = subprocess.run(
        [sys.executable, "-c", "import sys\nfrom diffkit.training.run_lock import run_lock\n"
         "with run_lock(sys.argv[1]): print('ok')", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert probe.stdout.strip() == "ok"


def test_run_folder_errors_are_diffkit_errors():
    from diffkit.errors import DiffkitError

    assert issubclass(RunInUseError, RunFolderError) and issubclass(RunFolderError, DiffkitError)
