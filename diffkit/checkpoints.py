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
  every missing, unexpected and mis-shaped key; a truncated or corrupted file names the file.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from diffkit import registry
from diffkit.atomic import TMP_SUFFIX, write_atomic
from diffkit.errors import CheckpointError, ConfigError, UnknownNameError
from diffkit.state_dicts import check_state_dict

FORMAT_VERSION = 1
CONFIG_FILE = "diffkit.json"
PIPELINE_FILE = "pipeline.json"  # a saved diffkit.Pipeline (diffkit.pipeline)
WEIGHTS_FILE = "model.safetensors"
_SAVE_ID_KEY = "diffkit_save_id"  # in the safetensors header's __metadata__

# -- the diffusers converter table ----------------------------------------------------------


@attrs.frozen
class DiffusersFormat:
    """How one diffusers model class maps to a diffkit component.

    ``converter`` is a module with ``config_from_diffusers(config_dict) -> config`` (an attrs
    config with ``to_dict``) and ``convert_diffusers_state_dict(state_dict, config) -> dict``
    (checks every key and shape); the module is built with ``registry.build(kind, name, **config)``.
    """

    kind: str
    name: str
    converter: str


# diffusers ``_class_name`` → the diffkit component. Adding an architecture is one row.
DIFFUSERS_FORMATS: Mapping[str, DiffusersFormat] = {
    "DiTTransformer2DModel": DiffusersFormat("backbone", "dit", "diffkit.backbones.diffusers_dit"),
    # Older DiT checkpoints (e.g. facebook/DiT-XL-2-256) are Transformer2DModel with DiT settings;
    # the DiT converter checks the settings and names any it does not support.
    "Transformer2DModel": DiffusersFormat("backbone", "dit", "diffkit.backbones.diffusers_dit"),
    "UNet2DModel": DiffusersFormat("backbone", "unet", "diffkit.backbones.diffusers_unet"),
    "AutoencoderKL": DiffusersFormat("autoencoder", "kl", "diffkit.autoencoders.diffusers_kl"),
    "UNet2DConditionModel": DiffusersFormat("backbone", "latent_unet", "diffkit.backbones.diffusers_latent_unet"),
}

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
    folder.mkdir(parents=True, exist_ok=True)
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
        device, dtype: where and in which floating dtype the module ends up (default: CPU, float32).

    Raises :class:`~diffkit.errors.CheckpointError` for missing, refused, corrupted or
    non-fitting weights; :class:`~diffkit.errors.UnknownNameError` for an unsupported diffusers
    class or a registry entry that is not installed (naming the plugin recorded at save time);
    :class:`~diffkit.errors.ConfigError` for a diffusers config the converter cannot represent.
    """
    folder = Path(path)
    if subfolder is not None:
        folder = folder / subfolder
    if not folder.is_dir():
        what = "a file; pass the folder that holds it" if folder.is_file() else "not found"
        raise CheckpointError(f"{folder} is {what}")
    if (folder / PIPELINE_FILE).is_file():
        from diffkit.pipeline import load_pipeline  # the pipeline imports this module

        return load_pipeline(folder, device=device, dtype=dtype)
    if (folder / CONFIG_FILE).is_file():
        module = _load_diffkit(folder, allow_pickle=allow_pickle)
    elif (folder / "config.json").is_file():
        module = _load_diffusers(folder, allow_pickle=allow_pickle, variant=variant)
    elif (folder / "model_index.json").is_file():
        raise CheckpointError(_pipeline_message(folder))
    else:
        present = sorted(p.name for p in folder.iterdir())[:20]
        raise CheckpointError(
            f"{folder} is not a model folder: looked for {CONFIG_FILE} (diffkit), config.json (diffusers "
            f"model) and model_index.json (diffusers pipeline); found {present or 'nothing'}"
        )
    return module.to(device=device, dtype=dtype).eval()


def _load_diffkit(folder: Path, *, allow_pickle: bool) -> nn.Module:
    record = _read_json(folder / CONFIG_FILE)
    missing = [key for key in ("kind", "name", "config") if key not in record]
    if missing:
        raise CheckpointError(f"{folder / CONFIG_FILE} lacks {', '.join(missing)}")
    version = record.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{folder / CONFIG_FILE} has format_version {version!r}; this diffkit reads up to {FORMAT_VERSION}: "
            "upgrade diffkit"
        )
    kind, name = record["kind"], record["name"]
    try:
        registry.get_entry(kind, name)
    except UnknownNameError as error:
        origin = record.get("origin") or {}
        if origin.get("plugin") and origin.get("distribution") != "diffkit":
            dist = " ".join(str(origin[k]) for k in ("distribution", "version") if origin.get(k))
            error.args = (
                f"{error.args[0]}. {folder} was saved with {kind} {name!r} from the plugin "
                f"{origin['plugin']!r}" + (f" (distribution {dist}); install it" if dist else "; install it"),
            )
        raise
    module = registry.build(kind, name, **record["config"])
    state_dict, save_id = _read_weights(folder, [WEIGHTS_FILE], allow_pickle=allow_pickle)
    if save_id is not None and record.get("save_id") not in (None, save_id):
        raise CheckpointError(
            f"{folder}: {WEIGHTS_FILE} and {CONFIG_FILE} come from two different saves (a save was "
            "interrupted between writing the two files); save the model again"
        )
    load_state_dict_checked(module, state_dict, what=f"the weights in {folder}")
    return module


def _load_diffusers(folder: Path, *, allow_pickle: bool, variant: str | None) -> nn.Module:
    config_dict = _read_json(folder / "config.json")
    class_name = config_dict.get("_class_name")
    if class_name is None:
        raise CheckpointError(f"{folder / 'config.json'} has no _class_name: not a diffusers model config")
    row = DIFFUSERS_FORMATS.get(class_name)
    if row is None:
        raise UnknownNameError("diffusers model class (in config.json's _class_name)", class_name, DIFFUSERS_FORMATS)
    import importlib

    converter = importlib.import_module(row.converter)
    config = converter.config_from_diffusers(config_dict)
    suffix = f".{variant}" if variant else ""
    names = [f"{_DIFFUSERS_STEM}{suffix}.safetensors", f"{_DIFFUSERS_STEM}{suffix}.bin"]
    state_dict, _ = _read_weights(folder, names, allow_pickle=allow_pickle)
    weights = converter.convert_diffusers_state_dict(state_dict, config)
    module = registry.build(row.kind, row.name, **config.to_dict())
    load_state_dict_checked(module, weights, what=f"the converted weights of {folder}")
    return module


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
    return _read_json(folder / "config.json"), state_dict


def _pipeline_message(folder: Path) -> str:
    index = _read_json(folder / "model_index.json")
    parts = []
    for key, value in sorted(index.items()):
        if key.startswith("_") or not (isinstance(value, list) and len(value) == 2):
            continue
        class_name = value[1]
        if class_name in DIFFUSERS_FORMATS and (folder / key).is_dir():
            row = DIFFUSERS_FORMATS[class_name]
            parts.append(f"{key} ({class_name} → {row.kind} {row.name!r})")
    pipeline = index.get("_class_name", "a diffusers pipeline")
    hint = (
        "components diffkit can load: " + ", ".join(parts) + f"; e.g. load_pretrained({str(folder)!r}, "
        f"subfolder={parts[0].split(' ')[0]!r})"
        if parts
        else f"none of its components is a class diffkit loads ({', '.join(sorted(DIFFUSERS_FORMATS))})"
    )
    return f"{folder} is a diffusers pipeline ({pipeline}), not one model; pass subfolder=: {hint}"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    return data


# -- weights files ------------------------------------------------------------------------------


def _read_weights(
    folder: Path, names: list[str], *, allow_pickle: bool
) -> tuple[dict[str, torch.Tensor], str | None]:
    """The state dict (and the diffkit save id, if recorded) from the first of ``names`` present.

    Each name may also be sharded: ``<name>.index.json`` with a ``weight_map``. Safetensors
    names must come before pickle names.
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
    raise CheckpointError(f"no weights in {folder}: looked for {looked_for}; the folder holds {present}")


def _weight_files(folder: Path, name: str) -> list[Path]:
    """``[folder/name]``, the shards listed by ``folder/name.index.json``, or []."""
    if (folder / name).is_file():
        return [folder / name]
    index = folder / f"{name}.index.json"
    if not index.is_file():
        return []
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{index} has no weight_map")
    shards = sorted(set(weight_map.values()))
    bad = [s for s in shards if Path(s).name != s]  # shard names must stay inside the folder
    if bad:
        raise CheckpointError(f"{index} names shards outside its folder: {bad}")
    missing = [s for s in shards if not (folder / s).is_file()]
    if missing:
        raise CheckpointError(f"{index} lists shards that are not in {folder}: {missing}")
    return [folder / s for s in shards]


def _read_safetensors(file: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - a safe_open handle is not a mapping
    except Exception as exc:  # SafetensorError, OSError, bad header: all one message
        raise CheckpointError(
            f"cannot read {file} ({file.stat().st_size} bytes): truncated or corrupted safetensors file "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    return tensors, metadata.get(_SAVE_ID_KEY)


def _read_pickle(file: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    try:
        data = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError (refused object), EOFError, zip errors
        # torch's message is long and suggests weights_only=False; keep the line naming the object.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else "")
        raise CheckpointError(
            f"cannot read {file} with torch.load(weights_only=True): corrupted, or it holds objects other than "
            f"tensors ({type(exc).__name__}: {detail})"
        ) from exc
    if isinstance(data, dict) and isinstance(data.get("state_dict"), dict):
        data = data["state_dict"]
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{file} does not hold a state dict (a mapping of names to tensors)")
    return data, None


def load_state_dict_checked(module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, what: str) -> None:
    """``module.load_state_dict(state_dict, strict=True)`` after checking keys and shapes;
    a :class:`CheckpointError` lists every missing, unexpected and mis-shaped key."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    check_state_dict(state_dict, expected, what=f"{what} do not fit {type(module).__name__}")
    module.load_state_dict(dict(state_dict), strict=True)


__all__ = [
    "CONFIG_FILE",
    "DIFFUSERS_FORMATS",
    "FORMAT_VERSION",
    "read_diffusers_folder",
    "WEIGHTS_FILE",
    "DiffusersFormat",
    "load_pretrained",
    "load_state_dict_checked",
    "save_pretrained",
]
