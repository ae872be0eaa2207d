"""Weight files: safetensors (sharded too) and, only when asked, pickle read with
``torch.load(weights_only=True)``; diffusers model folders; a checked ``load_state_dict``.

Only regular files are opened; a truncated or corrupted file is a
:class:`~diffkit.errors.CheckpointError` naming it, and a safetensors header larger than the
file is refused before anything is allocated for it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.module import register_module_parameter_registration_hook

from diffkit.errors import CheckpointError
from diffkit.io.atomic import TMP_SUFFIX
from diffkit.io.files import read_json_object, require_regular_file, unpickling_error_detail
from diffkit.io.records import require_inside, short
from diffkit.io.safetensors_file import read_safetensors
from diffkit.io.state_dicts import check_weights

# diffusers' weight file names, in order of preference (name stem; variant goes before the extension).
SAVE_ID_KEY = "diffkit_save_id"  # in the safetensors header's __metadata__

# diffusers' weight file names, in order of preference (name stem; variant goes before the extension).
DIFFUSERS_STEM = "diffusion_pytorch_model"


def diffusers_weight_names(variant: str | None = None) -> list[str]:
    """The weight files of a diffusers model folder, safetensors first: ``diffusion_pytorch_model[.variant].{safetensors,bin}``."""
    suffix = f".{variant}" if variant else ""
    return [f"{DIFFUSERS_STEM}{suffix}.safetensors", f"{DIFFUSERS_STEM}{suffix}.bin"]


def load_into(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str, *, assign: bool = False) -> None:
    """A strict ``load_state_dict``; ``assign``: the module takes the tensors themselves (no copy), each
    first brought to the dtype the module declared for it (one tensor at a time)."""
    if assign:
        declared = {**dict(module.named_parameters()), **dict(module.named_buffers())}
        state_dict = {
            key: aligned(tensor.to(declared[key].dtype).contiguous()) if key in declared else tensor
            for key, tensor in state_dict.items()
        }
    try:
        module.load_state_dict(dict(state_dict), strict=True, assign=assign)
    except RuntimeError as exc:  # checked before: only a module changing its own keys gets here
        raise CheckpointError(f"{what} do not load into {type(module).__name__}: {exc}") from exc


ALIGNMENT = 64  # bytes: what the allocator gives, and what vectorized kernels' results may depend on


def aligned(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor``, or a copy of it when its data does not start on an allocator boundary.

    A tensor read from a file may sit at any byte offset of a buffer; kernels then take other
    vectorization paths and round differently in the last bit. Copied, a weight computes exactly
    as it does in a module that was built and loaded by copying.
    """
    return tensor.clone() if tensor.data_ptr() % ALIGNMENT else tensor


def meta_tensors(module: nn.Module) -> list[str]:
    """The names of the module's parameters and buffers that hold no values (on the meta device)."""
    return [name for name, tensor in (*module.named_parameters(), *module.named_buffers()) if tensor.is_meta]


@contextlib.contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules constructed inside get their parameters on the meta device; buffers stay real.

    (accelerate's ``init_empty_weights``, without accelerate.) A module built so allocates and
    initializes no weights, and loading with ``assign=True`` then holds each weight once. Buffers
    the constructor computes (sin-cos position tables, frequencies) keep their values, which a
    module built wholly on the meta device would lose. Only this thread's constructions are affected.
    """
    owner = threading.get_ident()

    def to_meta(module: nn.Module, name: str, param: Any) -> Any:
        if threading.get_ident() != owner or param is None or param.is_meta:
            return None
        return type(param)(param.to("meta"), requires_grad=param.requires_grad)

    handle = register_module_parameter_registration_hook(to_meta)
    try:
        yield
    finally:
        handle.remove()


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
    state_dict, _ = read_weights(folder, diffusers_weight_names(variant), allow_pickle=allow_pickle)
    return read_json_object(folder / "config.json", what="diffusers model config"), state_dict


# -- weights files ------------------------------------------------------------------------------


def read_weights(
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



def _read_safetensors(file: Path) -> tuple[dict[str, torch.Tensor], str | None]:
    """The tensors and the diffkit save id of a safetensors file (:mod:`diffkit.io.safetensors_file`: one
    aligned copy of each tensor, no mapping); any failure is a :class:`CheckpointError`."""
    require_regular_file(file, what="weights file")
    try:
        tensors, metadata = read_safetensors(file)
    except OSError as exc:
        raise CheckpointError(f"cannot read {file}: {exc.strerror or exc}") from exc
    save_id = metadata.get(SAVE_ID_KEY)
    return tensors, save_id if isinstance(save_id, str) else None


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
    unless ``allow_nonfinite`` (see :func:`diffkit.io.state_dicts.check_weights`).
    """
    check_weights(module, state_dict, what=what, allow_nonfinite=allow_nonfinite)
    load_into(module, state_dict, what)
