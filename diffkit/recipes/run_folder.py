"""A run folder belongs to one run: claiming it, proving whose it is, never touching the user's files.

``diffkit train --out DIR`` writes only the names in :data:`RUN_OUTPUTS`, and records the
run's identity in ``DIR/run.json``::

    {"format_version": 1, "run_id": "…", "recipe": "digits", "recipe_sha256": "…",
     "diffkit_version": "0.1.0", "created": "2026-12-02T17:00:00+00:00", "steps": 2000,
     "finished_step": 2000}

(``finished_step``: the step whose pipeline and pictures are complete, once they are.) The
same identity goes into every checkpoint's ``meta.json``; resume takes only checkpoints with
this ``run_id``, and rotation removes only those.

How a folder is claimed (:func:`claim_run_folder`, under the run folder's lock):

=====================  ==================================================================
the folder             what happens
=====================  ==================================================================
missing or empty       a new run
holds a run, no flag   refused: name the run; ``--resume`` continues it, ``--overwrite``
                       discards it, or choose another ``--out``
``--resume``           the recorded recipe must match the requested one in everything but
                       ``train.steps``; a larger ``train.steps`` extends the run
``--overwrite``        removes what the earlier run wrote (:data:`RUN_OUTPUTS` only) and
                       starts a new run; any other file is left as it is
anything else          refused, naming what is there: diffkit never writes into a folder
(no ``run.json``)      holding files it did not write, whatever the flags
=====================  ==================================================================
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from diffkit import __version__
from diffkit.errors import RunFolderError
from diffkit.io.atomic import write_atomic
from diffkit.io.files import read_json_object
from diffkit.training.checkpoints import CHECKPOINT_DIR
from diffkit.training.run_lock import LOCK_FILE

RUN_FILE = "run.json"
RECIPE_FILE = "recipe.json"
RUN_FORMAT_VERSION = 1
RUN_OUTPUTS = frozenset(
    {
        RUN_FILE, LOCK_FILE, RECIPE_FILE, CHECKPOINT_DIR, "samples", "samples.png", "progress.gif",
        "trajectory.gif", "pipeline", "autoencoder", "autoencoder.json",
    }
)
"""Every name a recipe run writes at the top of its folder."""

# temporaries of atomic writes and folder swaps: .<output name>.<12 hex>.tmp / .old
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.[0-9a-f]{12}\.(tmp|old)$")

MODES = ("new", "resume", "overwrite", "auto")


@attrs.frozen
class RunRecord:
    """The identity of a run (``run.json``) and what claiming the folder decided."""

    run_id: str
    recipe: str
    recipe_sha256: str
    diffkit_version: str
    created: str
    steps: int
    finished_step: int | None = None
    resume: bool = False
    """True when the run continues from its checkpoints."""
    extended: bool = False
    """True when ``steps`` grew: the records are rewritten once a checkpoint has been restored."""

    def identity(self) -> dict[str, str]:
        """What every checkpoint's ``meta.json`` records under ``"run"``."""
        return {"run_id": self.run_id, "recipe_sha256": self.recipe_sha256, "diffkit_version": self.diffkit_version}


def recipe_sha256(recipe: Mapping[str, Any]) -> str:
    """SHA-256 of the recipe as canonical JSON, ``train.steps`` left out (a run may be extended)."""
    train = {k: v for k, v in recipe.get("train", {}).items() if k != "steps"}
    text = json.dumps({**recipe, "train": train}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def recipe_differences(recorded: Mapping[str, Any], requested: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``"key: recorded → requested"`` for every dotted key whose value differs."""
    out = []
    for key in sorted(set(recorded) | set(requested), key=str):
        dotted = f"{prefix}{key}"
        mine, theirs = recorded.get(key, "<absent>"), requested.get(key, "<absent>")
        if isinstance(mine, Mapping) and isinstance(theirs, Mapping):
            out += recipe_differences(mine, theirs, dotted + ".")
        elif mine != theirs:
            out.append(f"{dotted}: {json.dumps(mine)} → {json.dumps(theirs)}")
    return out


def prepare_folder(out: Path) -> None:
    """Create ``out`` (and its parents) or check it is a folder; a named error otherwise."""
    try:
        if out.exists() and not out.is_dir():
            raise RunFolderError(f"--out {out} is a file, not a folder; pass a new or empty folder")
        out.mkdir(parents=True, exist_ok=True)
    except (OSError, ValueError) as exc:  # ValueError: a NUL byte in the path
        reason = getattr(exc, "strerror", None) or exc
        raise RunFolderError(f"cannot create the run folder {str(out)[:200]!r}: {reason}") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise RunFolderError(f"the run folder {out} is not writable")


def read_run(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(``run.json``, ``recipe.json``) of the run in ``out``, both checked to be JSON objects."""
    run = read_json_object(out / RUN_FILE, what="run record", error=RunFolderError)
    for key, kind in (("run_id", str), ("recipe_sha256", str), ("steps", int)):
        if not isinstance(run.get(key), kind) or isinstance(run.get(key), bool):
            raise RunFolderError(f"the run record {out / RUN_FILE} is damaged: {key!r} is missing or not a {kind.__name__}")
    recipe = read_json_object(out / RECIPE_FILE, what="recipe record", error=RunFolderError)
    if recipe_sha256(recipe) != run["recipe_sha256"]:
        raise RunFolderError(
            f"{out / RECIPE_FILE} is not the recipe {out / RUN_FILE} records (its hash differs): it was edited "
            "or replaced; restore it, or start a new run with --overwrite or another --out"
        )
    return run, recipe


def claim_run_folder(out: Path, recipe: Mapping[str, Any], mode: str) -> RunRecord:
    """Decide how the run uses ``out`` (see the module's table) and write its records.

    Call it while holding the folder's lock (:func:`~diffkit.training.run_lock.run_lock`).
    ``mode``: ``"new"``, ``"resume"``, ``"overwrite"``, or ``"auto"`` (continue this recipe's
    run when the folder holds one, else start one: what a torchrun restart does).
    """
    if mode not in MODES:
        raise RunFolderError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    has_run = (out / RUN_FILE).exists()
    if not has_run and mode != "resume":
        refuse_unknown_files(out)
        _discard_outputs(out)  # temporaries of a run killed before it wrote run.json
    if mode == "auto":
        mode = "resume" if has_run and _same_recipe(out, recipe) else "new"
    if mode == "resume":
        _discard_temporaries(out)  # of a process killed while writing (this run's: the lock is ours)
        return _resume(out, recipe)
    if has_run and mode == "new":
        raise RunFolderError(
            f"{out} already holds a run ({_describe_run(out)}); pass --resume to continue it, --overwrite "
            "to discard it and start afresh, or train into another --out"
        )
    if mode == "overwrite":
        _discard_outputs(out)
    return _start(out, recipe)


def refuse_unknown_files(out: Path) -> None:
    """Refuse a folder without ``run.json`` that holds anything but diffkit's temporaries.

    Called once before the lock file is created (so a refused folder is left exactly as it
    was) and again under the lock.
    """
    if not out.is_dir() or (out / RUN_FILE).exists():
        return
    present = [name for name in _entries(out) if not _TEMPORARY.match(name.rstrip("/"))]
    if present:
        raise RunFolderError(
            f"{out} holds files that no diffkit run recorded writing ({_listing(present)}); diffkit trains only "
            "into a new folder, an empty one, or a run folder of its own (with run.json), and never touches "
            "other files, even with --overwrite. Choose another --out, or move those files (nothing was changed)"
        )


def _entries(out: Path) -> list[str]:
    return sorted(name + ("/" if (out / name).is_dir() else "") for name in os.listdir(out) if name != LOCK_FILE)


def _same_recipe(out: Path, recipe: Mapping[str, Any]) -> bool:
    try:
        run, _ = read_run(out)
    except RunFolderError:
        return False
    return run["recipe_sha256"] == recipe_sha256(recipe)


def _resume(out: Path, recipe: Mapping[str, Any]) -> RunRecord:
    if not (out / RUN_FILE).exists():
        raise RunFolderError(f"--resume: {out} holds no run to resume ({RUN_FILE} is missing)")
    run, recorded = read_run(out)
    changed = [line for line in recipe_differences(recorded, recipe) if not line.startswith("train.steps:")]
    if changed:
        raise RunFolderError(
            f"--resume: the recipe differs from the one {out} was trained with: {'; '.join(changed)}. Resume with "
            "the same recipe and overrides (only --steps may grow), or train into another --out"
        )
    steps = int(recipe["train"]["steps"])
    if steps < run["steps"]:
        raise RunFolderError(
            f"--resume: the run in {out} plans {run['steps']} steps; a run can be extended (--steps above "
            f"{run['steps']}) but not shortened (--steps {steps})"
        )
    record = RunRecord(
        run_id=run["run_id"], recipe=str(run.get("recipe", "?")), recipe_sha256=run["recipe_sha256"],
        diffkit_version=str(run.get("diffkit_version", "?")), created=str(run.get("created", "?")),
        steps=steps, finished_step=run.get("finished_step") if steps == run["steps"] else None, resume=True,
        extended=steps != run["steps"],
    )
    return record


def _start(out: Path, recipe: Mapping[str, Any]) -> RunRecord:

    record = RunRecord(
        run_id=uuid.uuid4().hex, recipe=str(recipe.get("name", "?")), recipe_sha256=recipe_sha256(recipe),
        diffkit_version=__version__,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        steps=int(recipe["train"]["steps"]),
    )
    write_run(out, record, recipe)
    return record


def write_run(out: Path, record: RunRecord, recipe: Mapping[str, Any] | None = None) -> None:
    """Write ``run.json`` (and ``recipe.json``) atomically.

    The run record goes first: a kill between the two renames leaves a folder that says it is
    a run (so ``--overwrite`` may discard it), never a bare recipe that looks like a user's file.
    """
    data = {"format_version": RUN_FORMAT_VERSION, **attrs.asdict(record)}
    del data["resume"], data["extended"]
    run_text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    files = [(out / RUN_FILE, lambda tmp: tmp.write_text(run_text, encoding="utf-8"))]
    if recipe is not None:
        text = json.dumps(recipe, indent=2, sort_keys=True, allow_nan=False) + "\n"
        files.append((out / RECIPE_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8")))
    try:
        write_atomic(files)
    except OSError as exc:
        raise RunFolderError(f"cannot write the run record in {out}: {exc.strerror or exc}") from exc


def _discard_outputs(out: Path) -> None:
    """Remove what an earlier run wrote (the names of :data:`RUN_OUTPUTS` and their temporaries)."""
    for path in out.iterdir():
        temporary = _TEMPORARY.match(path.name)
        ours = path.name in RUN_OUTPUTS or (temporary and temporary.group("name") in RUN_OUTPUTS)
        if not ours or path.name == LOCK_FILE:
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as exc:
            raise RunFolderError(f"cannot remove {path} of the earlier run: {exc.strerror or exc}") from exc


def _discard_temporaries(out: Path) -> None:
    for path in out.iterdir():
        temporary = _TEMPORARY.match(path.name)
        if not temporary or temporary.group("name") not in RUN_OUTPUTS:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _describe_run(out: Path) -> str:
    try:
        run, _ = read_run(out)
    except RunFolderError as error:
        return f"its record is damaged: {error}"
    done = run.get("finished_step")
    state = f"finished at step {done}" if done is not None else f"{run['steps']} steps planned"
    return f"recipe {run.get('recipe', '?')!r}, run id {run['run_id'][:12]}, {state}"


def _listing(names: list[str], limit: int = 10) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
