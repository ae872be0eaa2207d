"""A cache of small judge networks (the digits and shape classifiers): trained once, then read.

An entry is ``<stem>-<key>.safetensors`` + ``<stem>-<key>.json`` in the cache folder
(``$DIFFKIT_CACHE``, else ``~/.cache/diffkit``). The key hashes everything the weights depend
on, so a change to the training config, the network or the data trains anew. Both files are
written atomically and carry one random save id, so a pair from two different saves is
detected; any damaged entry is retrained with a warning, and a folder that cannot be written
only warns.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from diffkit.io.atomic import write_atomic

CACHE_ENV = "DIFFKIT_CACHE"
_SAVE_ID_KEY = "diffkit_save_id"
Module = TypeVar("Module", bound=nn.Module)


def default_cache_dir() -> Path:
    """``$DIFFKIT_CACHE`` when set, else ``~/.cache/diffkit``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "diffkit")


@contextmanager
def one_cpu_thread(device: torch.device | str) -> Iterator[None]:
    """Train a judge network on one intra-op thread when ``device`` is the CPU.

    Its tensors are tiny: splitting them over threads costs more than it saves (ten times
    slower on two busy cores), and one thread makes the weights independent of the machine's
    thread count. The global setting is restored afterwards.
    """
    if torch.device(device).type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def cache_key(record: Mapping[str, Any]) -> str:
    """A short hash of a JSON-ready record of everything the weights depend on."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def load_or_train(
    *,
    stem: str,
    record: Mapping[str, Any],
    make: Callable[[], Module],
    train: Callable[[], Module],
    cache_dir: str | os.PathLike[str] | None = None,
    what: str,
) -> Module:
    """The cached module for ``record`` (built by ``make``), or ``train()``'s, then cached."""
    key = cache_key(record)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    weights = folder / f"{stem}-{key}.safetensors"
    meta = folder / f"{stem}-{key}.json"
    model = _read(weights, meta, key, make, stem)
    if model is None:
        model = train()
        try:
            _write(model, weights, meta, {"key": key, **record})
        except OSError as exc:
            warnings.warn(f"could not cache the {what} in {folder} ({exc})", stacklevel=3)
    return model


def _read(weights: Path, meta: Path, key: str, make: Callable[[], Module], stem: str) -> Module | None:
    """The cached module, or None when absent; an unreadable entry warns and gives None."""
    if not weights.exists() and not meta.exists():
        return None
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        saved = json.loads(meta.read_text(encoding="utf-8"))
        with safe_open(str(weights), framework="pt") as handle:
            save_id = (handle.metadata() or {}).get(_SAVE_ID_KEY)
        if saved.get("key") != key or saved.get("save_id") != save_id:
            raise ValueError("the JSON and the weights belong to different saves")
        model = make()
        model.load_state_dict(load_file(str(weights)), strict=True)
    except Exception as exc:  # noqa: BLE001 - any damage to a cache entry means "train again"
        warnings.warn(f"ignoring the damaged {stem} cache entry {weights} ({exc}); retraining", stacklevel=4)
        return None
    return model.eval()


def _write(model: nn.Module, weights: Path, meta: Path, record: Mapping[str, Any]) -> None:
    from safetensors.torch import save_file

    save_id = uuid.uuid4().hex
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    text = json.dumps({**record, "save_id": save_id}, indent=2, sort_keys=True) + "\n"
    weights.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(  # temp file, fsync, os.replace, fsync the folder
        [
            (weights, lambda tmp: save_file(tensors, str(tmp), metadata={"format": "pt", _SAVE_ID_KEY: save_id})),
            (meta, lambda tmp: tmp.write_text(text, encoding="utf-8")),
        ]
    )
