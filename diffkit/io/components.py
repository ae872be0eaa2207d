"""diffkit component folders: one module as ``diffkit.json`` + safetensors, written atomically.

:func:`save_pretrained` writes a *diffkit component folder*::

    folder/
      diffkit.json        {"format_version", "kind", "name", "config", "origin", "save_id"}
      model.safetensors   the module's state dict (safetensors; never pickle)

:func:`load_component` reads such a folder (``registry.build(kind, name, **config)`` then a
strict ``load_state_dict``), or a diffusers model folder (``config.json`` with ``_class_name``
plus ``diffusion_pytorch_model.safetensors``) through the converter named for its class in
:data:`DIFFUSERS_FORMATS`.

Safety and failure rules:

* pickle (``.bin``/``.pt``) weights can run code when read: they are refused unless
  ``allow_pickle=True``, and even then read with ``torch.load(weights_only=True)``;
* every file is written to a temporary name in the target folder, flushed and fsynced, then
  renamed over the old file (``os.replace`` is atomic on POSIX and Windows), so a crash leaves
  the old or the new file, never a half-written one. Both files are written and fsynced before
  either is renamed, so a failure while writing leaves the old checkpoint whole; they carry the
  same random ``save_id``, so a folder left with the weights of one save and the config of
  another (a kill in the instant between the two renames) is detected on load instead of
  silently pairing them;
* weights that do not fit the model raise :class:`~diffkit.errors.CheckpointError` listing
  every missing, unexpected and mis-shaped key; a truncated or corrupted file names the file;
* weights of the wrong type (int64 or bool where the model is floating point) are refused, and
  so are NaN and ±inf unless ``allow_nonfinite=True`` (:func:`diffkit.io.state_dicts.check_tensors`);
* files are only read, never written, and only regular files are opened (a FIFO would block);
* every key of ``diffkit.json`` is checked (no missing, extra or wrong-typed keys), and the
  component is first built on the meta device, with a budget on the tensors it may create, and
  compared with the weights before it is built for real: a config edited to describe a huge
  network is an error, not an attempt to allocate it;
* ``device`` and ``dtype`` are checked before anything is read.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from diffkit import registry
from diffkit.errors import CheckpointError, ConfigError, DiffkitError, UnknownNameError
from diffkit.io.atomic import make_folder, write_atomic
from diffkit.io.files import read_json_object
from diffkit.io.records import check_numbers, check_record, naming_errors, require_inside, short
from diffkit.io.state_dicts import check_tensors, check_weights
from diffkit.io.weights import SAVE_ID_KEY, load_into, meta_tensors, parameters_on_meta, read_weights

FORMAT_VERSION = 1
CONFIG_FILE = "diffkit.json"
WEIGHTS_FILE = "model.safetensors"


# -- saving -----------------------------------------------------------------------------------


def save_pretrained(
    module: nn.Module, folder: str | os.PathLike[str], *, kind: str | None = None, name: str | None = None
) -> Path:
    """Write ``module`` as a diffkit component folder (``diffkit.json`` + ``model.safetensors``).

    Args:
        module: a diffkit component with a ``config`` attribute (an attrs config with
            ``to_dict``), e.g. a :class:`~diffkit.models.backbones.DiT`.
        folder: created if needed; existing ``diffkit.json`` / ``model.safetensors`` are
            replaced atomically (other files are left alone).
        kind, name: the registry entry that builds the module (``"backbone"``, ``"dit"``).
            When left out they are found from the config's class (the entry registered with
            ``options=type(module.config)``); an error lists the candidates if that is ambiguous.

    Returns the folder. ``origin`` (plugin, distribution, version of the registry entry) is
    recorded so that loading without the plugin can say what to install.
    """
    config = getattr(module, "config", None)
    if config is None:
        raise ConfigError(
            f"save_pretrained needs a diffkit component with a .config (an attrs config), got {type(module).__name__}"
        )
    entry = entry_for_config(config, kind, name)
    config_dict = _config_to_dict(config)
    save_id = uuid.uuid4().hex
    record = {
        "format_version": FORMAT_VERSION,
        "kind": entry.kind,
        "name": entry.name,
        "config": config_dict,
        "origin": {
            "plugin": entry.origin.plugin,
            "distribution": entry.origin.distribution,
            "version": entry.origin.version,
        },
        "save_id": save_id,
    }
    folder = Path(folder)
    make_folder(folder, "component folder")
    tensors = _plain_tensors(module.state_dict())
    text = json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n"
    write_atomic(
        [
            (folder / WEIGHTS_FILE, lambda tmp: _save_safetensors(tensors, tmp, {SAVE_ID_KEY: save_id})),
            (folder / CONFIG_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8")),
        ]
    )
    return folder


def entry_for_config(config: Any, kind: str | None, name: str | None) -> registry.Entry:
    """The registry entry that builds modules with this config (given, or found by options class)."""
    if name is not None:
        if kind is None:
            raise ConfigError("pass kind= together with name= (e.g. kind='backbone', name='dit')")
        entry = registry.get_entry(kind, name)
        if entry.options is not None and not isinstance(config, entry.options):
            raise ConfigError(
                f"{entry.kind} {entry.name!r} is configured by {entry.options.__name__}, but the module's "
                f"config is a {type(config).__name__}"
            )
        return entry
    host = registry.default_host().load()
    kinds = [registry.normalize_kind(kind)] if kind is not None else list(registry.KINDS)
    matches = [e for k in kinds for e in host.entries[k].values() if e.options is type(config)]
    if len(matches) != 1:
        found = ", ".join(f"{e.kind} {e.name!r}" for e in matches) or "none"
        raise ConfigError(
            f"cannot tell which registry entry builds a module configured by {type(config).__name__} "
            f"(entries registered with options={type(config).__name__}: {found}); pass kind= and name="
        )
    return matches[0]


def _config_to_dict(config: Any) -> dict[str, Any]:
    """``config.to_dict()`` checked to survive JSON unchanged (so the saved config rebuilds it)."""
    if hasattr(config, "to_dict"):
        data = config.to_dict()
    elif attrs.has(type(config)):
        data = attrs.asdict(config)
    else:
        raise ConfigError(f"the module's config ({type(config).__name__}) has no to_dict and is not an attrs class")
    try:
        data = json.loads(json.dumps(data, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"the config of {type(config).__name__} cannot be written as JSON: {exc}") from exc
    from_dict = getattr(type(config), "from_dict", None)
    if from_dict is not None and from_dict(data) != config:
        raise ConfigError(f"{type(config).__name__}.from_dict(to_dict()) does not give back the config; not saved")
    return data


def _plain_tensors(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors; tensors sharing storage (tied weights) are cloned,
    since safetensors refuses shared storage."""
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, value in state_dict.items():
        tensor = value.detach().cpu().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen and tensor.numel() > 0:
            tensor = tensor.clone()
        seen.add(ptr)
        out[key] = tensor
    return out


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt", **metadata})


# -- diffkit component folders ------------------------------------------------------------------------

_RECORD_FIELDS: Mapping[str, tuple[type, ...]] = {
    "format_version": (int,), "kind": (str,), "name": (str,), "config": (dict,), "origin": (dict, type(None)),
    "save_id": (str, type(None)),
}
_ORIGIN_FIELDS: Mapping[str, tuple[type, ...]] = {
    "plugin": (str, type(None)), "distribution": (str, type(None)), "version": (str, type(None)),
}


def read_component_record(path: Path, *, kind: str | None = None) -> dict[str, Any]:
    """The checked ``diffkit.json`` of a component folder.

    ``kind``: the kind the folder must hold (a pipeline's ``backbone`` folder must hold a backbone).
    """
    record = read_json_object(path, what="component config")
    check_numbers(record, where=str(path))
    check_record(record, _RECORD_FIELDS, where=str(path), optional=("format_version", "origin", "save_id"))
    check_record(record.get("origin") or {}, _ORIGIN_FIELDS, where=f"{path} (origin)", optional=tuple(_ORIGIN_FIELDS))
    version = record.get("format_version", FORMAT_VERSION)
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {version!r}; this diffkit reads up to {FORMAT_VERSION}: upgrade diffkit"
        )
    if version < 1:
        raise CheckpointError(f"{path} has format_version {version!r}; valid: 1 … {FORMAT_VERSION}")
    if _kind_of(record["kind"], path) != kind and kind is not None:  # an unknown kind names the file
        raise CheckpointError(f"{path} holds a {record['kind']!r} component where this pipeline needs its {kind}")
    return record


def _kind_of(kind: str, path: Path) -> str:
    with naming_errors(path):
        return registry.normalize_kind(kind)


def load_component(
    folder: Path,
    *,
    kind: str | None = None,
    root: Path | None = None,
    allow_pickle: bool = False,
    allow_nonfinite: bool = False,
) -> nn.Module:
    """The module of a diffkit component folder (``diffkit.json`` + weights), on the CPU.

    ``kind``: the kind it must hold. ``root``: a folder the component folder and its files must
    stay inside once symlinks are resolved (a pipeline folder); nothing outside it is opened.
    """
    config_file = folder / CONFIG_FILE
    if root is not None:
        require_inside(folder, root)
        require_inside(config_file, root)
    record = read_component_record(config_file, kind=kind)
    kind, name = record["kind"], record["name"]
    _require_entry(kind, name, record.get("origin") or {}, folder)
    state_dict, save_id = read_weights(folder, [WEIGHTS_FILE], allow_pickle=allow_pickle, root=root)
    if save_id is not None and record.get("save_id") not in (None, save_id):
        raise CheckpointError(
            f"{folder}: {WEIGHTS_FILE} and {CONFIG_FILE} come from two different saves (a save was "
            "interrupted between writing the two files); save the model again"
        )
    return build_with_weights(
        kind, name, record["config"], state_dict, source=config_file,
        what=f"the weights in {folder}", allow_nonfinite=allow_nonfinite,
    )


def _require_entry(kind: str, name: str, origin: Mapping[str, Any], folder: Path) -> None:
    """The registry entry exists; a missing one names the plugin recorded at save time."""
    try:
        registry.get_entry(kind, name)
    except UnknownNameError as error:
        if origin.get("plugin") and origin.get("distribution") != "diffkit":
            dist = " ".join(str(origin[k]) for k in ("distribution", "version") if origin.get(k))
            error.args = (
                f"{error.args[0]}. {folder} was saved with {kind} {name!r} from the plugin "
                f"{origin['plugin']!r}" + (f" (distribution {dist}); install it" if dist else "; install it"),
            )
        raise


# -- building a module for the weights read ---------------------------------------------------------

_SLACK_TENSORS = 256  # tensors a module may create beyond twice those in its weights
_SLACK_BYTES = 256 * 2**20  # and bytes beyond four times its weights' (non-persistent buffers)


class _TooManyTensors(BaseException):
    """Raised inside a module's constructor once it has created more tensors than allowed.

    A ``BaseException``, so that no ``except Exception`` in the constructor (or in
    :func:`naming_errors`) turns the abort into something else.
    """


@contextlib.contextmanager
def _tensor_budget(limit: int) -> Iterator[None]:
    """Abort a module construction (in this thread) after ``limit`` parameters and buffers.

    A config edited to say ``depth: 10**9`` would otherwise build modules for hours, even on
    the meta device.
    """
    from torch.nn.modules.module import (
        register_module_buffer_registration_hook,
        register_module_parameter_registration_hook,
    )

    owner, count = threading.get_ident(), 0

    def count_one(module: nn.Module, name: str, tensor: Any) -> None:
        nonlocal count
        if threading.get_ident() == owner:
            count += 1
            if count > limit:
                raise _TooManyTensors(count)

    handles = [register_module_parameter_registration_hook(count_one), register_module_buffer_registration_hook(count_one)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _build(kind: str, name: str, config: Mapping[str, Any], *, source: Path, budget: int, meta: bool) -> nn.Module:
    placement = torch.device("meta") if meta else contextlib.nullcontext()
    try:
        with naming_errors(source), _tensor_budget(budget), placement:
            module = registry.build(kind, name, **config)
    except _TooManyTensors:
        raise CheckpointError(
            f"{source}: the {kind} {name!r} configured as {short(config, 200)} creates more than {budget} "
            "tensors, far more than its weights file holds: the config does not describe these weights"
        ) from None
    if not isinstance(module, nn.Module):
        raise CheckpointError(f"{source}: the {kind} {name!r} builds a {type(module).__name__}, not a torch module")
    return module


def build_with_weights(
    kind: str,
    name: str,
    config: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: Path,
    what: str,
    allow_nonfinite: bool = False,
) -> nn.Module:
    """``registry.build(kind, name, **config)`` holding ``state_dict``, checked before it is built.

    The module is first built on the meta device (no memory) and the weights' names, shapes,
    dtypes and values are checked against it; only then is it built for real and loaded. A
    module that cannot be built on the meta device (some plugins) is checked after the real build.
    """
    budget = 2 * len(state_dict) + _SLACK_TENSORS
    try:
        probe = _build(kind, name, config, source=source, budget=budget, meta=True)
    except CheckpointError as error:
        if not isinstance(error.__cause__, Exception) or isinstance(error.__cause__, DiffkitError):
            raise
        probe = None  # not meta-friendly: the real build below reports any real problem
    if probe is not None:
        check_weights(probe, state_dict, what=what, allow_nonfinite=allow_nonfinite, hint=NONFINITE_HINT)
        _check_size(probe, state_dict, source)
    if probe is not None:
        module = _build_holding(kind, name, config, state_dict, source=source, budget=budget, what=what)
        if module is not None:
            return module
    module = _build(kind, name, config, source=source, budget=budget, meta=False)
    if probe is None:
        check_weights(module, state_dict, what=what, allow_nonfinite=allow_nonfinite, hint=NONFINITE_HINT)
    load_into(module, state_dict, what)
    return module


def _build_holding(
    kind: str, name: str, config: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor], *, source: Path,
    budget: int, what: str,
) -> nn.Module | None:
    """The module built with its parameters on the meta device and the weights moved in: one copy of them.

    None when that leaves a tensor without values (a parameter the weights do not hold, a buffer the
    constructor made on the meta device): the caller then builds for real and copies.
    """
    with parameters_on_meta():
        module = _build(kind, name, config, source=source, budget=budget, meta=False)
    load_into(module, state_dict, what, assign=True)
    return None if meta_tensors(module) else module


NONFINITE_HINT = "load_pretrained(..., allow_nonfinite=True) loads them anyway"


def _check_size(probe: nn.Module, state_dict: Mapping[str, torch.Tensor], source: Path) -> None:
    """The module to build may hold at most 4× its weights' bytes (plus slack) in all."""
    weights = sum(t.numel() * t.element_size() for t in state_dict.values())
    needed = sum(t.numel() * t.element_size() for t in (*probe.parameters(), *probe.buffers()))
    if needed > 4 * weights + _SLACK_BYTES:
        raise CheckpointError(
            f"{source}: its config describes a module of {needed / 2**20:.0f} MiB for {weights / 2**20:.1f} MiB of "
            "weights: the config does not describe these weights"
        )


def check_weights_types(state_dict: Mapping[str, Any], *, what: str, allow_nonfinite: bool) -> None:
    """Tensors only, finite unless allowed: checked before a converter computes with them."""
    check_tensors(state_dict, None, what=what, allow_nonfinite=allow_nonfinite, hint=NONFINITE_HINT)
