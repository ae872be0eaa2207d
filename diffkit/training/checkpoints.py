"""Training checkpoints that survive a kill at any moment.

A run's checkpoints live in ``<out>/checkpoints/``, one folder per saved step::

    step-000001000/
      model.safetensors     the trained modules' weights (backbone, conditioner)
      ema.safetensors       their exponential moving average (used for sampling)
      state.pt              optimizer state, step, data position and RNG states: tensors,
                            numbers and strings only, so ``torch.load(weights_only=True)`` reads it
      meta.json             step, the run's identity and config, and the size and SHA-256 of
                            every file above (the checkpoint's manifest)

A run sharded with FSDP writes ``sharded/`` (a ``torch.distributed.checkpoint`` folder: each
rank's slice of the model, EMA and optimizer state, plus the global layout) instead of the two
safetensors files, written by every rank in parallel; ``state.pt`` then holds no optimizer.
DCP re-slices it on load, so it resumes on any number of ranks.

Writing: everything goes into ``.step-000001000.<random>.tmp/``; each file is fsynced, then the
folder is renamed to ``step-000001000`` (atomic) and the parent fsynced. A folder named
``step-*`` is therefore always complete; temporary folders are ignored and cleaned up by the
next save. Rotation (keep the last k) runs only after the new checkpoint is in place, so there
is never a moment without a complete one. A write that fails (a full disk) removes its
temporary folder and raises :class:`~diffkit.errors.CheckpointError`; the previous
checkpoints are untouched.

Reading: a checkpoint is *intact* when its ``meta.json`` is a JSON object naming its own step
and every file of its manifest is a regular file of the recorded size and SHA-256
(:func:`verify_checkpoint`). Resuming takes the newest intact checkpoint of the run
(:func:`newest_intact_checkpoint`), skipping damaged ones and other runs' with a warning that
names each and why. Rotation removes only older checkpoints of the same run (the ``run_id``
recorded in ``meta.json``), so a checkpoint another run left in the folder is never deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from diffkit.errors import CheckpointError, DiffkitError
from diffkit.io.atomic import TMP_SUFFIX, fsync_dir
from diffkit.io.files import read_json_object, require_regular_file, unpickling_error_detail
from diffkit.validators import is_integer

CHECKPOINT_DIR = "checkpoints"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
STATE_FILE = "state.pt"
META_FILE = "meta.json"
SHARDED_DIR = "sharded"
_STEP_NAME = re.compile(r"^step-(\d{9})$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:09d}"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _plain(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies (safetensors refuses shared or non-contiguous storage)."""
    return {key: value.detach().cpu().contiguous().clone() for key, value in state_dict.items()}


def save_checkpoint(
    root: str | os.PathLike[str],
    step: int,
    *,
    model: Mapping[str, torch.Tensor],
    ema: Mapping[str, torch.Tensor],
    state: Mapping[str, Any],
    meta: Mapping[str, Any],
    keep_last: int | None = None,
) -> Path:
    """Write checkpoint ``step`` under ``root`` (the run's checkpoint folder) and rotate.

    ``state`` must hold only what ``torch.load(weights_only=True)`` accepts (tensors, numbers,
    strings, lists and dicts of them). Returns the checkpoint folder.
    """
    from safetensors.torch import save_file

    staging = stage_checkpoint(root, step)
    try:
        save_file(_plain(model), str(staging / MODEL_FILE))
        save_file(_plain(ema), str(staging / EMA_FILE))
    except OSError as exc:
        abandon_checkpoint(staging)
        raise _write_error(Path(root) / checkpoint_name(step), exc) from exc
    except BaseException:
        abandon_checkpoint(staging)
        raise
    return commit_checkpoint(staging, step, state=state, meta=meta, keep_last=keep_last)


def stage_checkpoint(root: str | os.PathLike[str], step: int) -> Path:
    """A fresh temporary folder for checkpoint ``step`` under ``root`` (stale ones are removed).

    Weights are written into it (by :func:`save_checkpoint`, or by every rank of a sharded
    save), then :func:`commit_checkpoint` completes it.
    """
    root = Path(root)
    staging = root / f".{checkpoint_name(step)}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(root)
        staging.mkdir()
    except OSError as exc:
        raise _write_error(root / checkpoint_name(step), exc) from exc
    return staging


def abandon_checkpoint(staging: Path) -> None:
    """Remove a staged checkpoint that will not be completed."""
    shutil.rmtree(staging, ignore_errors=True)


def _write_error(final: Path, exc: OSError) -> CheckpointError:
    return CheckpointError(
        f"could not write checkpoint {final} ({exc.strerror or exc}); the previous checkpoints are intact"
    )


def commit_checkpoint(
    staging: Path,
    step: int,
    *,
    state: Mapping[str, Any],
    meta: Mapping[str, Any],
    keep_last: int | None = None,
) -> Path:
    """Add ``state.pt`` and ``meta.json`` to a staged folder, fsync it all and rename it into place.

    ``meta.json`` records the size and SHA-256 of every file already in ``staging`` (the
    weights, or a sharded folder's files) and of ``state.pt``. After the rename the run's
    older checkpoints beyond ``keep_last`` go (the run being ``meta["run"]["run_id"]``).
    """
    root = staging.parent
    final = root / checkpoint_name(step)
    try:
        torch.save(dict(state), staging / STATE_FILE)
        record = {**meta, "step": step, "files": _manifest(staging)}
        text = json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n"
        (staging / META_FILE).write_text(text, encoding="utf-8")
        _fsync_tree(staging)
        previous = _move_aside(final, run_id_of(meta)) if final.exists() else None
        os.replace(staging, final)  # atomic: the step folder appears complete or not at all
        fsync_dir(root)
        if previous is not None and previous.name.endswith(TMP_SUFFIX):
            shutil.rmtree(previous, ignore_errors=True)
    except OSError as exc:
        abandon_checkpoint(staging)
        raise _write_error(final, exc) from exc
    except BaseException:
        abandon_checkpoint(staging)
        raise
    if keep_last is not None:
        rotate_checkpoints(root, keep_last, run_id=run_id_of(meta))
    return final


def _move_aside(final: Path, run_id: str | None) -> Path:
    """Rename the existing checkpoint of this step out of the way before the new one takes its name.

    This run's own intact checkpoint (a re-run of the step after a resume) becomes a temporary
    that is removed once the new one is in place. Anything else at that name — damaged, or
    another run's — is kept, renamed ``step-….set-aside-<random>``, and a warning says so.
    """
    try:
        ours = run_id_of(verify_checkpoint(final)) == run_id
    except DiffkitError:
        ours = False
    if ours:
        aside = final.with_name(f".{final.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}")
    else:
        aside = final.with_name(f"{final.name}.set-aside-{uuid.uuid4().hex[:12]}")
        print(
            f"diffkit: warning: {final} is damaged or another run's; kept as {aside.name} while this run writes "
            "its own checkpoint of that step",
            file=sys.stderr, flush=True,
        )
    os.replace(final, aside)
    return aside


def run_id_of(meta: Mapping[str, Any]) -> str | None:
    """The run id a checkpoint's meta records (None for a checkpoint written without one)."""
    run = meta.get("run")
    return run.get("run_id") if isinstance(run, Mapping) else None


def rotate_checkpoints(root: Path, keep_last: int, *, run_id: str | None) -> None:
    """Remove this run's checkpoints older than its newest ``keep_last``; never another run's.

    A checkpoint whose ``meta.json`` cannot be read is left alone: whose it is cannot be told.
    """
    ours = []
    for folder in list_checkpoints(root):
        try:
            meta = read_json_object(folder / META_FILE, what="checkpoint record")
        except DiffkitError:
            continue
        if run_id_of(meta) == run_id:
            ours.append(folder)
    for old in ours[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _manifest(folder: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"size", "sha256"}}`` of every file below ``folder`` but ``meta.json``."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != META_FILE:
            out[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    return out


def _fsync_tree(folder: Path) -> None:
    """fsync every file below ``folder``, then every folder (deepest first)."""
    folders = [folder]
    for path in sorted(folder.rglob("*")):
        if path.is_dir():
            folders.append(path)
        else:
            _fsync_file(path)
    for path in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(path)


def _remove_stale_temporaries(root: Path) -> None:
    """Temporary folders left by a killed save (never a complete checkpoint)."""
    for path in root.iterdir():
        if path.name.startswith(".step-") and path.name.endswith(TMP_SUFFIX):
            shutil.rmtree(path, ignore_errors=True)


def list_checkpoints(root: str | os.PathLike[str]) -> list[Path]:
    """The complete checkpoint folders under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_NAME.match(p.name).group(1)))


def checkpoint_step(folder: Path) -> int:
    """The step a checkpoint folder's name says (``step-000001000`` → 1000)."""
    match = _STEP_NAME.match(folder.name)
    if match is None:
        raise CheckpointError(f"{folder} is not a checkpoint folder (expected a name like step-000001000)")
    return int(match.group(1))


def verify_checkpoint(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``meta.json`` record of an intact checkpoint; :class:`CheckpointError` saying what is damaged.

    Intact: ``meta.json`` is a JSON object whose ``step`` is the folder's, and every file of its
    manifest is a regular file with the recorded size and SHA-256. (A checkpoint written before
    manifests existed lists bare file names; those are only checked to be regular files.)
    """
    folder = Path(folder)
    meta = read_json_object(folder / META_FILE, what="checkpoint record")
    step = meta.get("step")
    if not is_integer(step) or step != checkpoint_step(folder):
        raise CheckpointError(f"{folder / META_FILE} records step {step!r}, but the folder is {folder.name}")
    files = meta.get("files")
    if isinstance(files, list) and all(isinstance(name, str) for name in files):  # written before manifests
        files = {name: None for name in files}
    if not isinstance(files, dict) or not files:
        raise CheckpointError(f"{folder / META_FILE} has no manifest of the checkpoint's files ('files')")
    has_weights = SHARDED_DIR in files or any(name.startswith(SHARDED_DIR + "/") for name in files)
    needed = [STATE_FILE] + ([] if has_weights else [MODEL_FILE, EMA_FILE])
    absent = [name for name in needed if name not in files]
    if absent:
        raise CheckpointError(f"{folder / META_FILE}: the manifest lacks {', '.join(absent)}")
    for name, record in files.items():
        _verify_file(folder, name, record)
    return meta


def _verify_file(folder: Path, name: str, record: Any) -> None:
    path = folder / name
    if name.startswith("/") or ".." in Path(name).parts:
        raise CheckpointError(f"{folder / META_FILE} names a file outside the checkpoint: {name!r}")
    if record is None:  # an old bare name: a folder (sharded) or a file
        if not path.is_dir():
            require_regular_file(path, what="checkpoint file")
        return
    if not isinstance(record, dict) or not isinstance(record.get("size"), int) or not isinstance(record.get("sha256"), str):
        raise CheckpointError(f"{folder / META_FILE}: the manifest entry of {name} is not {{size, sha256}}: {record!r}")
    size = require_regular_file(path, what="checkpoint file").stat().st_size
    if size != record["size"]:
        raise CheckpointError(f"checkpoint file {path} has {size} bytes, {record['size']} were written (truncated or replaced)")
    if _sha256(path) != record["sha256"]:
        raise CheckpointError(f"checkpoint file {path} does not match the SHA-256 recorded when it was written (corrupted or edited)")


def newest_intact_checkpoint(
    root: str | os.PathLike[str],
    *,
    run_id: str | None = None,
    any_run: bool = False,
    warn: Callable[[str], None] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """(folder, meta) of the newest intact checkpoint of run ``run_id`` under ``root``.

    Damaged checkpoints and those another run wrote are skipped, each with a ``warn`` message
    (default: printed to stderr) naming it and why; ``any_run`` accepts every run's (for a
    trainer that was given no run id). :class:`CheckpointError` when none is left, listing
    every checkpoint and why it was refused.
    """
    warn = warn or (lambda message: print(f"diffkit: warning: {message}", file=sys.stderr, flush=True))
    refused = []
    for folder in reversed(list_checkpoints(root)):
        try:
            meta = verify_checkpoint(folder)
            recorded = run_id_of(meta)
            if not any_run and recorded != run_id:
                raise CheckpointError(
                    f"it was written by another run (run id {recorded!r}; this run is {run_id!r})"
                )
        except CheckpointError as reason:
            refused.append(f"{folder.name}: {reason}")
            warn(f"skipping checkpoint {folder}: {reason}")
            continue
        return folder, meta
    if refused:
        raise CheckpointError(
            f"no intact checkpoint of this run in {root} to resume from:\n  " + "\n  ".join(refused)
        )
    return latest_checkpoint(root), {}  # raises: there is none


def latest_checkpoint(root: str | os.PathLike[str]) -> Path:
    """The newest checkpoint under ``root``; :class:`CheckpointError` when there is none."""
    found = list_checkpoints(root)
    if not found:
        raise CheckpointError(
            f"no checkpoint to resume from in {root} (expected folders named step-NNNNNNNNN); "
            "start without --resume to train from scratch"
        )
    return found[-1]


def load_checkpoint(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """``{"model", "ema", "state", "meta"}`` of one checkpoint folder.

    A sharded checkpoint gives ``{"sharded", "state", "meta"}`` instead, ``sharded`` being the
    path of its DCP folder (read by :mod:`diffkit.distributed.sharded_state`). A missing,
    truncated or corrupted file raises :class:`CheckpointError` naming it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_json_object(folder / META_FILE, what="checkpoint record")
    out: dict[str, Any] = {"meta": meta}
    files = meta.get("files")
    sharded = isinstance(files, (list, dict)) and any(
        isinstance(name, str) and (name == SHARDED_DIR or name.startswith(SHARDED_DIR + "/")) for name in files
    )
    if sharded:
        if not (folder / SHARDED_DIR).is_dir():
            raise CheckpointError(f"checkpoint folder {folder / SHARDED_DIR} is missing")
        out["sharded"] = folder / SHARDED_DIR
    for key, name in () if sharded else (("model", MODEL_FILE), ("ema", EMA_FILE)):
        path = require_regular_file(folder / name, what="checkpoint file")
        try:
            out[key] = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint file {path} is truncated or corrupted: {exc}") from exc
    path = require_regular_file(folder / STATE_FILE, what="checkpoint file")
    try:
        out["state"] = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises several types for a damaged zip/pickle
        raise CheckpointError(
            f"checkpoint file {path} is truncated, corrupted or holds objects other than tensors, numbers "
            f"and strings ({unpickling_error_detail(exc)}); it is never unpickled any other way"
        ) from exc
    if not isinstance(out["state"], dict):
        raise CheckpointError(f"checkpoint file {path} holds a {type(out['state']).__name__}, not the training state")
    return out
