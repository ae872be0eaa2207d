"""Training checkpoints that survive a kill at any moment.

A run's checkpoints live in ``<out>/checkpoints/``, one folder per saved step::

    step-000001000/
      model.safetensors     the trained modules' weights (backbone, conditioner)
      ema.safetensors       their exponential moving average (used for sampling)
      state.pt              optimizer state, step, data position and RNG states: tensors,
                            numbers and strings only, so ``torch.load(weights_only=True)`` reads it
      meta.json             step, the run's config, and the names of the files above

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
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from diffkit.atomic import TMP_SUFFIX, fsync_dir
from diffkit.errors import CheckpointError

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
    return commit_checkpoint(staging, step, state=state, meta=meta, keep_last=keep_last, files=[MODEL_FILE, EMA_FILE])


def stage_checkpoint(root: str | os.PathLike[str], step: int) -> Path:
    """A fresh temporary folder for checkpoint ``step`` under ``root`` (stale ones are removed).

    Weights are written into it (by :func:`save_checkpoint`, or by every rank of a sharded
    save), then :func:`commit_checkpoint` completes it.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root)
    staging = root / f".{checkpoint_name(step)}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}"
    staging.mkdir()
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
    files: list[str],
    keep_last: int | None = None,
) -> Path:
    """Add ``state.pt`` and ``meta.json`` to a staged folder, fsync it all and rename it into place.

    ``files`` names what was already written into ``staging`` (files or folders); they are
    listed in ``meta.json``. After the rename the older checkpoints beyond ``keep_last`` go.
    """
    root = staging.parent
    final = root / checkpoint_name(step)
    try:
        torch.save(dict(state), staging / STATE_FILE)
        record = {"step": step, "files": [*files, STATE_FILE], **meta}
        (staging / META_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _fsync_tree(staging)
        if final.exists():  # a re-run of the same step: replace it
            shutil.rmtree(final)
        os.replace(staging, final)  # atomic: the step folder appears complete or not at all
        fsync_dir(root)
    except OSError as exc:
        abandon_checkpoint(staging)
        raise _write_error(final, exc) from exc
    except BaseException:
        abandon_checkpoint(staging)
        raise
    if keep_last is not None:
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


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
    meta_path = folder / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{folder} is not a checkpoint: {META_FILE} is missing") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{meta_path} is unreadable or truncated: {exc}") from exc
    out: dict[str, Any] = {"meta": meta}
    sharded = SHARDED_DIR in meta.get("files", [])
    if sharded:
        if not (folder / SHARDED_DIR).is_dir():
            raise CheckpointError(f"checkpoint folder {folder / SHARDED_DIR} is missing")
        out["sharded"] = folder / SHARDED_DIR
    for key, name in () if sharded else (("model", MODEL_FILE), ("ema", EMA_FILE)):
        path = folder / name
        try:
            out[key] = load_file(str(path))
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint file {path} is missing") from None
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"checkpoint file {path} is truncated or corrupted: {exc}") from exc
    path = folder / STATE_FILE
    try:
        out["state"] = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file {path} is missing") from None
    except Exception as exc:  # torch raises several types for a damaged zip/pickle
        raise CheckpointError(f"checkpoint file {path} is truncated or corrupted: {exc}") from exc
    return out
