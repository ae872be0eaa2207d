"""Small judge networks (the digits and shape classifiers): how they train, how they run over
many images, and their cache — trained once, then read.

A cache entry is ``<stem>-<key>.safetensors`` + ``<stem>-<key>.json`` in the cache folder
(``$DIFFKIT_CACHE``, else ``~/.cache/diffkit``). The key hashes everything the weights depend
on, so a change to the training config, the network or the data trains anew. Both files are
written atomically and carry one random save id, so a pair from two different saves is
detected; any damaged entry is retrained with a warning, and a folder that cannot be written
only warns.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from diffkit.errors import ConfigError
from diffkit.io.atomic import write_atomic
from diffkit.validators import is_integer

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


def train_judge(
    make: Callable[[], Module], batch: Callable[[], tuple[torch.Tensor, torch.Tensor]], *,
    seed: int, steps: int, lr: float, device: torch.device | str,
) -> Module:
    """``make()``'s network trained as a classifier, returned in eval mode.

    Its initial weights come from ``torch.manual_seed(seed)`` (the global RNG is left as it was);
    each of the ``steps`` steps takes ``batch()`` = (images, labels int64 [B]), and Adam at ``lr``
    with a cosine decay to 0 minimises the cross-entropy, on one CPU thread (:func:`one_cpu_thread`).
    """
    with one_cpu_thread(device):
        with torch.random.fork_rng(devices=[]):  # initial weights from the seed, global RNG untouched
            torch.manual_seed(seed)
            model = make()
        model.to(device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        for step in range(steps):
            for group in optimizer.param_groups:  # cosine decay lr·½(1 + cos(π·step/steps))
                group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))
            images, labels = batch()
            loss = F.cross_entropy(model(images.to(device)), labels.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return model.eval()


@torch.no_grad()
def batched(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, batch_size: int,
            device: torch.device | str | None = None) -> torch.Tensor:
    """``fn`` over ``images`` in slices of ``batch_size`` (each moved to ``device`` if given), concatenated; no grad."""
    if not is_integer(batch_size) or batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    return torch.cat([fn(images[i : i + batch_size].to(device)) for i in range(0, images.shape[0], batch_size)])


def cache_key(record: Mapping[str, Any]) -> str:
    """A short hash of a JSON-ready record of everything the weights depend on."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def load_or_train(
    *, stem: str, record: Mapping[str, Any], make: Callable[[], Module], train: Callable[[], Module],
    cache_dir: str | os.PathLike[str] | None = None, what: str, device: torch.device | str = "cpu",
) -> Module:
    """The cached module for ``record`` (built by ``make``), or ``train()``'s, then cached; returned
    on ``device`` in eval mode."""
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
    return model.to(device).eval()


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
