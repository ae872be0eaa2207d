"""Save and load components: diffkit folders and diffusers-format model folders.

:func:`save_pretrained` writes a *diffkit component folder*::

    folder/
      diffkit.json        {"format_version", "kind", "name", "config", "origin", "save_id"}
      model.safetensors   the module's state dict (safetensors; never pickle)

:func:`load_pretrained` reads such a folder (``registry.build(kind, name, **config)`` then a
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
  so are NaN and ±inf unless ``allow_nonfinite=True`` (:func:`diffkit.state_dicts.check_tensors`);
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
import math
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
from diffkit.atomic import TMP_SUFFIX, make_folder, write_atomic
from diffkit.converters import DIFFUSERS_FORMATS, DiffusersConverter, converter_for
from diffkit.errors import CheckpointError, ConfigError, DiffkitError, UnknownNameError
from diffkit.files import read_json_object, require_regular_file, unpickling_error_detail
from diffkit.state_dicts import check_device, check_dtype, check_tensors, check_weights

FORMAT_VERSION = 1
CONFIG_FILE = "diffkit.json"
PIPELINE_FILE = "pipeline.json"  # a saved diffkit.Pipeline (diffkit.pipeline)
WEIGHTS_FILE = "model.safetensors"
_SAVE_ID_KEY = "diffkit_save_id"  # in the safetensors header's __metadata__

# diffusers ``_class_name`` → converter: the registry's converters (diffkit.converters). A
# plugin adds an architecture with the diffkit_register_converters hook.
DiffusersFormat = DiffusersConverter  # the name of diffkit 0.1 (deprecated, one release)

# diffusers' weight file names, in order of preference (name stem; variant goes before the extension).
_DIFFUSERS_STEM = "diffusion_pytorch_model"


# -- saving -----------------------------------------------------------------------------------


def save_pretrained(
    module: nn.Module, folder: str | os.PathLike[str], *, kind: str | None = None, name: str | None = None
) -> Path:
    """Write ``module`` as a diffkit component folder (``diffkit.json`` + ``model.safetensors``).

    Args:
        module: a diffkit component with a ``config`` attribute (an attrs config with
            ``to_dict``), e.g. a :class:`~diffkit.backbones.DiT`.
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
            (folder / WEIGHTS_FILE, lambda tmp: _save_safetensors(tensors, tmp, {_SAVE_ID_KEY: save_id})),
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


# -- loading ----------------------------------------------------------------------------------


def load_pretrained(
    path: str | os.PathLike[str],
    *,
    subfolder: str | None = None,
    allow_pickle: bool = False,
    variant: str | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    allow_nonfinite: bool = False,
) -> nn.Module:
    """The diffkit module stored in ``path`` (a diffkit pipeline, component or diffusers model folder), in eval mode.

    A folder written by :meth:`diffkit.Pipeline.save` gives back the :class:`~diffkit.Pipeline`.

    Args:
        path: a folder with ``diffkit.json`` (written by :func:`save_pretrained`) or with a
            diffusers ``config.json`` (``_class_name`` one of :data:`DIFFUSERS_FORMATS`).
        subfolder: a component of a diffusers pipeline folder, e.g. ``"vae"`` or ``"unet"``.
        allow_pickle: also read ``.bin`` pickle weights (with ``torch.load(weights_only=True)``)
            when no safetensors file is there. Off by default: unpickling can run code.
        variant: diffusers weight variant, e.g. ``"fp16"`` → ``diffusion_pytorch_model.fp16.safetensors``.
        device, dtype: where and in which floating dtype the module ends up (default: CPU,
            float32). Both are checked before any file is read: a device this machine lacks or
            a non-floating dtype is a :class:`~diffkit.errors.ConfigError`.
        allow_nonfinite: load weights holding NaN or ±inf (refused by default, naming them).
            Integer or bool tensors where the model has floating-point ones are always refused.

    Raises :class:`~diffkit.errors.CheckpointError` for missing, refused, corrupted, non-finite
    or non-fitting weights and malformed config files; :class:`~diffkit.errors.UnknownNameError`
    for an unsupported diffusers class or a registry entry that is not installed (naming the
    plugin recorded at save time); :class:`~diffkit.errors.ConfigError` for bad arguments and
    for a diffusers config the converter cannot represent.
    """
    device, dtype = check_device(device), check_dtype(dtype)
    _check_flags(allow_pickle=allow_pickle, allow_nonfinite=allow_nonfinite)
    for what, value in (("subfolder", subfolder), ("variant", variant)):
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{what} must be a string or None, got {value!r}")
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"path must be a folder path (str or os.PathLike), got {path!r}")
    folder = Path(path)
    if subfolder is not None:
        folder = folder / subfolder
    if not folder.is_dir():
        what = "a file; pass the folder that holds it" if folder.exists() else "not found"
        raise CheckpointError(f"{folder} is {what}")
    if (folder / PIPELINE_FILE).exists():
        from diffkit.pipeline import load_pipeline  # the pipeline imports this module

        return load_pipeline(folder, device=device, dtype=dtype, allow_nonfinite=allow_nonfinite)
    if (folder / CONFIG_FILE).exists():
        module = load_component(folder, allow_pickle=allow_pickle, allow_nonfinite=allow_nonfinite)
    elif (folder / "config.json").exists():
        module = _load_diffusers(folder, allow_pickle=allow_pickle, variant=variant, allow_nonfinite=allow_nonfinite)
    elif (folder / "model_index.json").exists():
        raise CheckpointError(_pipeline_message(folder))
    else:
        present = sorted(p.name for p in folder.iterdir())[:20]
        raise CheckpointError(
            f"{folder} is not a model folder: looked for {CONFIG_FILE} (diffkit), config.json (diffusers "
            f"model) and model_index.json (diffusers pipeline); found {present or 'nothing'}"
        )
    return module.to(device=device, dtype=dtype).eval()


def _check_flags(**flags: Any) -> None:
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be True or False, got {value!r}")


# -- checking what a file says ------------------------------------------------------------------------

_JSON_TYPES = {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number",
               bool: "true or false", type(None): "null"}


def check_record(
    record: Mapping[str, Any],
    fields: Mapping[str, tuple[type, ...]],
    *,
    where: str,
    optional: tuple[str, ...] = (),
) -> None:
    """Refuse a JSON object with missing, extra or wrong-typed keys (:class:`CheckpointError`).

    ``fields`` maps each valid key to the JSON types it may hold (``bool`` is not an ``int``
    here; ``float`` also accepts integers); keys in ``optional`` may be left out. ``where``
    names the file (and the section) in the message.
    """
    missing = [key for key in fields if key not in record and key not in optional]
    extra = sorted(str(key) for key in record if key not in fields)
    if missing or extra:
        problems = ([f"lacks {', '.join(missing)}"] if missing else []) + (
            [f"has unknown key(s) {', '.join(extra)}"] if extra else []
        )
        raise CheckpointError(f"{where} {' and '.join(problems)} (valid keys: {', '.join(fields)})")
    for key, types in fields.items():
        if key in record and not _json_type_ok(record[key], types):
            wanted = " or ".join(_JSON_TYPES.get(t, t.__name__) for t in types)
            raise CheckpointError(f"{where}: {key} must be {wanted}, got {short(record[key])}")


_INT_LIMIT = 2**63  # integers a config may hold: what torch and C code can take (int64)


def check_numbers(value: Any, *, where: str) -> None:
    """Refuse numbers no config can use, anywhere in ``value`` (nested objects and arrays).

    A JSON literal like ``1e400`` reads as ``inf`` and ``10**400`` as a Python int too large
    for any float or tensor size; both would pass a check like ``value > 0`` and fail (or give
    NaN) only later. The message names the key path. (Walked with a stack, not recursion:
    JSON may nest as deep as the parser allows.)
    """
    pending: list[tuple[str, Any]] = [("", value)]
    while pending:
        path, item = pending.pop()
        if isinstance(item, dict):
            pending += [(f"{path}.{key}" if path else str(key), child) for key, child in item.items()]
        elif isinstance(item, list):
            pending += [(f"{path}[{index}]", child) for index, child in enumerate(item)]
        elif isinstance(item, float) and not math.isfinite(item):
            raise CheckpointError(f"{where}: {path} is {item} (a number too large for a float); valid: finite numbers")
        elif isinstance(item, int) and not isinstance(item, bool) and not -_INT_LIMIT <= item < _INT_LIMIT:
            raise CheckpointError(
                f"{where}: {path} is {short(item, 40)}, outside the integers any config can use (−2**63 … 2**63−1)"
            )


def _json_type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, tuple(t for t in types if t is not bool))


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@contextlib.contextmanager
def naming_errors(where: str | os.PathLike[str]) -> Iterator[None]:
    """Make every failure inside the block a :class:`~diffkit.errors.DiffkitError` naming ``where``.

    A diffkit error gets ``where`` put in front of its message (unless it names it already);
    any other exception (a component's constructor meeting a value it did not expect) becomes
    a :class:`CheckpointError` with the cause chained.
    """
    where = str(where)
    try:
        yield
    except DiffkitError as error:
        if error.args and isinstance(error.args[0], str) and where not in error.args[0]:
            error.args = (f"{where}: {error.args[0]}", *error.args[1:])
        raise
    except Exception as exc:  # a raw error from code fed a value read from a file
        raise CheckpointError(f"{where}: cannot use what it holds ({type(exc).__name__}: {exc})") from exc


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
    state_dict, save_id = _read_weights(folder, [WEIGHTS_FILE], allow_pickle=allow_pickle, root=root)
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


def require_inside(path: Path, root: Path) -> Path:
    """``path`` with symlinks resolved, when that stays inside ``root``; else :class:`CheckpointError`.

    The message names the path as written, never what lies outside.
    """
    try:
        resolved, base = path.resolve(), root.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, an unreadable folder
        raise CheckpointError(f"cannot resolve {path}: {exc}") from exc
    if resolved == base or not resolved.is_relative_to(base):
        raise CheckpointError(f"{path} leads outside {root} (through a symlink); refusing to read it")
    return resolved


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
        check_weights(probe, state_dict, what=what, allow_nonfinite=allow_nonfinite, hint=_NONFINITE_HINT)
        _check_size(probe, state_dict, source)
    module = _build(kind, name, config, source=source, budget=budget, meta=False)
    if probe is None:
        check_weights(module, state_dict, what=what, allow_nonfinite=allow_nonfinite, hint=_NONFINITE_HINT)
    _load_into(module, state_dict, what)
    return module


_NONFINITE_HINT = "load_pretrained(..., allow_nonfinite=True) loads them anyway"


def _check_size(probe: nn.Module, state_dict: Mapping[str, torch.Tensor], source: Path) -> None:
    """The module to build may hold at most 4× its weights' bytes (plus slack) in all."""
    weights = sum(t.numel() * t.element_size() for t in state_dict.values())
    needed = sum(t.numel() * t.element_size() for t in (*probe.parameters(), *probe.buffers()))
    if needed > 4 * weights + _SLACK_BYTES:
        raise CheckpointError(
            f"{source}: its config describes a module of {needed / 2**20:.0f} MiB for {weights / 2**20:.1f} MiB of "
            "weights: the config does not describe these weights"
        )


def _load_into(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    try:
        module.load_state_dict(dict(state_dict), strict=True)
    except RuntimeError as exc:  # checked before: only a module changing its own keys gets here
        raise CheckpointError(f"{what} do not load into {type(module).__name__}: {exc}") from exc


# -- diffusers model folders ---------------------------------------------------------------------------


def _load_diffusers(folder: Path, *, allow_pickle: bool, variant: str | None, allow_nonfinite: bool) -> nn.Module:
    config_file = folder / "config.json"
    config_dict = read_json_object(config_file, what="diffusers model config")
    check_numbers(config_dict, where=str(config_file))
    class_name = config_dict.get("_class_name")
    if class_name is None:
        raise CheckpointError(f"{config_file} has no _class_name: not a diffusers model config")
    if not isinstance(class_name, str):
        raise CheckpointError(f"{config_file}: _class_name must be a string, got {short(class_name)}")
    converter = converter_for(class_name)
    if converter is None:
        raise UnknownNameError("diffusers model class (in config.json's _class_name)", class_name, DIFFUSERS_FORMATS)
    with naming_errors(config_file):
        config = converter.config_from_diffusers(config_dict)
    suffix = f".{variant}" if variant else ""
    names = [f"{_DIFFUSERS_STEM}{suffix}.safetensors", f"{_DIFFUSERS_STEM}{suffix}.bin"]
    state_dict, _ = _read_weights(folder, names, allow_pickle=allow_pickle)
    check_weights_types(state_dict, what=f"the weights in {folder}", allow_nonfinite=allow_nonfinite)
    with naming_errors(folder):
        weights = converter.convert_state_dict(state_dict, config)
        config_dict = config.to_dict()
    # the values were checked above, before converting; checking them again would only cost time
    return build_with_weights(
        converter.kind, converter.name, config_dict, weights, source=config_file,
        what=f"the converted weights of {folder}", allow_nonfinite=True,
    )


def check_weights_types(state_dict: Mapping[str, Any], *, what: str, allow_nonfinite: bool) -> None:
    """Tensors only, finite unless allowed: checked before a converter computes with them."""
    check_tensors(state_dict, None, what=what, allow_nonfinite=allow_nonfinite, hint=_NONFINITE_HINT)


def read_diffusers_folder(
    path: str | Path, component: str, *, allow_pickle: bool = False, variant: str | None = None
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config dict, state dict) of a diffusers model folder, as ``load_pretrained`` reads it.

    ``path`` is the model folder (``config.json`` + weights) or a pipeline folder holding it as
    the subfolder ``component`` (e.g. ``"unet"``, ``"vae"``, ``"transformer"``). Weights are
    read as :func:`load_pretrained` reads them: safetensors (sharded too), pickle only with
    ``allow_pickle``.
    """
    folder = Path(path)
    if not (folder / "config.json").exists() and (folder / component / "config.json").exists():
        folder = folder / component
    suffix = f".{variant}" if variant else ""
    names = [f"{_DIFFUSERS_STEM}{suffix}.safetensors", f"{_DIFFUSERS_STEM}{suffix}.bin"]
    state_dict, _ = _read_weights(folder, names, allow_pickle=allow_pickle)
    return read_json_object(folder / "config.json", what="diffusers model config"), state_dict


def _pipeline_message(folder: Path) -> str:
    index = read_json_object(folder / "model_index.json", what="diffusers pipeline index")
    parts = []
    for key, value in sorted(index.items()):
        if key.startswith("_") or not (isinstance(value, list) and len(value) == 2):
            continue
        class_name = value[1]
        if isinstance(class_name, str) and class_name in DIFFUSERS_FORMATS and (folder / key).is_dir():
            converter = DIFFUSERS_FORMATS[class_name]
            parts.append(f"{key} ({class_name} → {converter.kind} {converter.name!r})")
    pipeline = index.get("_class_name")
    pipeline = pipeline if isinstance(pipeline, str) and len(pipeline) <= 80 else "a diffusers pipeline"
    hint = (
        "components diffkit can load: " + ", ".join(parts) + f"; e.g. load_pretrained({str(folder)!r}, "
        f"subfolder={parts[0].split(' ')[0]!r})"
        if parts
        else f"none of its components is a class diffkit loads ({', '.join(sorted(DIFFUSERS_FORMATS))})"
    )
    return f"{folder} is a diffusers pipeline ({pipeline}), not one model; pass subfolder=: {hint}"


# -- weights files ------------------------------------------------------------------------------


def _read_weights(
    folder: Path, names: list[str], *, allow_pickle: bool, root: Path | None = None
) -> tuple[dict[str, torch.Tensor], str | None]:
    """The state dict (and the diffkit save id, if recorded) from the first of ``names`` present.

    Each name may also be sharded: ``<name>.index.json`` with a ``weight_map``. Safetensors
    names must come before pickle names. With ``root``, every file must resolve inside it.
    """
    refused = []
    for name in names:
        pickle = not name.endswith(".safetensors")
        files = _weight_files(folder, name)
        if not files:
            continue
        if pickle and not allow_pickle:
            refused.append(files[0].name)
            continue
        state_dict: dict[str, torch.Tensor] = {}
        save_id = None
        for file in files:
            if root is not None:
                require_inside(file, root)
            part, save_id = _read_pickle(file) if pickle else _read_safetensors(file)
            overlap = sorted(set(part) & set(state_dict))
            if overlap:
                raise CheckpointError(f"{file} repeats keys of another shard: {', '.join(overlap[:10])}")
            state_dict.update(part)
        return state_dict, save_id
    present = sorted(p.name for p in folder.iterdir() if not p.name.endswith(TMP_SUFFIX))
    if refused:
        raise CheckpointError(
            f"{folder} holds only pickle weights ({', '.join(refused)}); unpickling can run arbitrary code, so "
            "they are refused. Convert them to safetensors, or pass allow_pickle=True to read them with "
            "torch.load(weights_only=True)"
        )
    looked_for = ", ".join(f"{n} (or {n}.index.json)" for n in names)
    raise CheckpointError(f"no weights in {folder}: looked for {looked_for}; the folder holds {present[:20]}")


def _weight_files(folder: Path, name: str) -> list[Path]:
    """``[folder/name]``, the shards listed by ``folder/name.index.json``, or []."""
    if (folder / name).exists():
        return [folder / name]
    index = folder / f"{name}.index.json"
    if not index.exists():
        return []
    weight_map = read_json_object(index, what="weights index").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index} has no weight_map (an object naming each tensor's shard)")
    shards = sorted({str(s) for s in weight_map.values()})
    bad = [s for s in weight_map.values() if not isinstance(s, str) or Path(s).name != s or s in ("", ".", "..")]
    if bad:  # shard names must be plain file names inside the folder
        raise CheckpointError(f"{index} names shards that are not file names inside its folder: {short(bad)}")
    missing = [s for s in shards if not (folder / s).exists()]
    if missing:
        raise CheckpointError(f"{index} lists shards that are not in {folder}: {missing}")
    return [folder / s for s in shards]


_HEADER_LIMIT = 100 * 2**20  # safetensors' own limit on the JSON header


def _read_safetensors(file: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """The tensors and the diffkit save id of a safetensors file; any failure is a :class:`CheckpointError`."""
    from safetensors import safe_open

    require_regular_file(file, what="weights file")
    size = _check_header_length(file)
    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - a safe_open handle is not a mapping
    except Exception as exc:  # SafetensorError, OSError, bad header, an unknown dtype: all one message
        raise CheckpointError(
            f"cannot read {file} ({size} bytes): truncated or corrupted safetensors file "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    save_id = metadata.get(_SAVE_ID_KEY)
    return tensors, save_id if isinstance(save_id, str) else None


def _check_header_length(file: Path) -> int:
    """The file's size, once its 8-byte header length is seen to fit in it (nothing is allocated for it)."""
    try:
        size = file.stat().st_size
        with open(file, "rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise CheckpointError(f"cannot read {file}: {exc.strerror or exc}") from exc
    if len(head) < 8:
        raise CheckpointError(
            f"cannot read {file} ({size} bytes): truncated or corrupted safetensors file (shorter than the "
            "8-byte header length)"
        )
    length = int.from_bytes(head, "little")
    if length > min(size - 8, _HEADER_LIMIT):
        raise CheckpointError(
            f"cannot read {file} ({size} bytes): truncated or corrupted safetensors file (its header claims "
            f"{length} bytes; valid: at most {min(size - 8, _HEADER_LIMIT)})"
        )
    return size


def _read_pickle(file: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    require_regular_file(file, what="weights file")
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError (refused object), EOFError, zip errors
        raise CheckpointError(
            f"cannot read {file} with torch.load(weights_only=True): corrupted, or it holds objects other than "
            f"tensors ({unpickling_error_detail(exc)})"
        ) from exc
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items()):
        raise CheckpointError(f"{file} does not hold a state dict (a mapping of names to tensors)")
    return data, None


def load_state_dict_checked(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, what: str, allow_nonfinite: bool = False
) -> None:
    """``module.load_state_dict(state_dict, strict=True)`` after checking keys, shapes, dtypes and values.

    A :class:`CheckpointError` lists every missing, unexpected and mis-shaped key, and the
    tensors of the wrong type; NaN or ±inf raise :class:`~diffkit.errors.NonFiniteWeightsError`
    unless ``allow_nonfinite`` (see :func:`diffkit.state_dicts.check_weights`).
    """
    check_weights(module, state_dict, what=what, allow_nonfinite=allow_nonfinite)
    _load_into(module, state_dict, what)


__all__ = [
    "CONFIG_FILE",
    "DIFFUSERS_FORMATS",
    "FORMAT_VERSION",
    "read_diffusers_folder",
    "WEIGHTS_FILE",
    "DiffusersFormat",
    "check_numbers",
    "check_record",
    "load_component",
    "load_pretrained",
    "load_state_dict_checked",
    "naming_errors",
    "require_inside",
    "save_pretrained",
]
