"""Training checkpoints that survive a kill at any moment.

A run's checkpoints live in ``<out>/checkpoints/``, one folder per saved step::

    step-000001000/
      model.safetensors     the trained modules' weights (backbone, conditioner)
      ema.safetensors       their exponential moving average (used for sampling)
      state.pt              optimizer state, step, data position and RNG states: tensors,
                            numbers and strings only, so ``torch.load(weights_only=True)`` reads it
      meta.json             step, the run's config, and the names of the files above

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

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(root)
    final = root / checkpoint_name(step)
    staging = root / f".{final.name}.{uuid.uuid4().hex[:12]}{TMP_SUFFIX}"
    try:
        staging.mkdir()
        save_file(_plain(model), str(staging / MODEL_FILE))
        save_file(_plain(ema), str(staging / EMA_FILE))
        torch.save(dict(state), staging / STATE_FILE)
        record = {"step": step, "files": [MODEL_FILE, EMA_FILE, STATE_FILE], **meta}
        (staging / META_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for name in (MODEL_FILE, EMA_FILE, STATE_FILE, META_FILE):
            _fsync_file(staging / name)
        fsync_dir(staging)
        if final.exists():  # a re-run of the same step: replace it
            shutil.rmtree(final)
        os.replace(staging, final)  # atomic: the step folder appears complete or not at all
        fsync_dir(root)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise CheckpointError(
            f"could not write checkpoint {final} ({exc.strerror or exc}); the previous checkpoints are intact"
        ) from exc
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if keep_last is not None:
        for old in list_checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    return final


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

    A missing, truncated or corrupted file raises :class:`CheckpointError` naming it.
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
    for key, name in (("model", MODEL_FILE), ("ema", EMA_FILE)):
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
