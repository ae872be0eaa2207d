"""Checking weights before they are used: the keys, shapes and dtypes a model expects, finite
values, and the device and dtype they are asked to go to.

These checks are shared by every loader (component and pipeline folders, diffusers folders,
training checkpoints), so that one bad tensor gives the same named error wherever it is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from diffkit.errors import CheckpointError, ConfigError, NonFiniteWeightsError

SHOWN_KEYS = 5  # keys named in a message before "and N more"


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], *, what: str
) -> None:
    """Raise :class:`CheckpointError` listing every missing, unexpected and mis-shaped key.

    Args:
        state_dict: the weights as read (name → tensor).
        expected: the names and shapes the model needs.
        what: the opening of the message, e.g. "the diffusers DiT weights do not fit DiT-S/2".
    """
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected)
    misshaped = sorted(
        f"{k}: {tuple(state_dict[k].shape)}, expected {tuple(shape)}"
        for k, shape in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(shape)
    )
    if missing or unexpected or misshaped:
        lines = [f"{what}:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                lines.append(f"  {len(keys)} {title} key(s):")
                lines += [f"    {k}" for k in keys]
        raise CheckpointError("\n".join(lines))


def check_tensors(
    state_dict: Mapping[str, Any],
    expected: nn.Module | Mapping[str, torch.dtype] | None,
    *,
    what: str,
    allow_nonfinite: bool = False,
    hint: str = "",
) -> None:
    """Refuse values that are not tensors, tensors of the wrong kind of dtype, and NaN or ±inf.

    Args:
        state_dict: the weights as read (name → tensor).
        expected: the model (its ``state_dict()`` gives the dtypes) or name → dtype; None checks
            values only. A floating-point entry must receive a floating-point tensor (an int64 or
            bool tensor would be cast silently by ``load_state_dict``); an integer or bool entry
            (a buffer the model itself keeps as integers) must receive a non-floating one. Names
            the model does not have are left to :func:`check_state_dict`.
        what: the opening of the message, e.g. "the weights in run/pipeline/backbone".
        allow_nonfinite: let NaN and ±inf through (the dtype rules still hold).
        hint: appended to the non-finite message (e.g. how to load such weights anyway).

    Raises :class:`CheckpointError` for wrong types, then
    :class:`~diffkit.errors.NonFiniteWeightsError` (also a ``CheckpointError``) for NaN/inf,
    each naming the first few offending tensors.
    """
    dtypes = _expected_dtypes(expected)
    wrong = [
        problem
        for key, value in state_dict.items()
        if (problem := _dtype_problem(key, value, dtypes.get(key))) is not None
    ]
    if wrong:
        raise CheckpointError(_listing(f"{what}: {len(wrong)} tensor(s) of the wrong type", wrong))
    if allow_nonfinite:
        return
    bad = [problem for key, value in state_dict.items() if (problem := _nonfinite_problem(key, value)) is not None]
    if bad:
        message = _listing(f"{what}: {len(bad)} tensor(s) hold NaN or ±inf", bad)
        raise NonFiniteWeightsError(message + (f"\n{hint}" if hint else ""))


def _expected_dtypes(expected: nn.Module | Mapping[str, torch.dtype] | None) -> Mapping[str, torch.dtype]:
    if expected is None:
        return {}
    if isinstance(expected, nn.Module):
        return {key: value.dtype for key, value in expected.state_dict().items()}
    return expected


def _is_float(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point or dtype.is_complex


def _dtype_problem(key: str, value: Any, expected: torch.dtype | None) -> str | None:
    if not isinstance(value, torch.Tensor):
        return f"{key}: a {type(value).__name__}, not a tensor"
    if expected is None or _is_float(value.dtype) == _is_float(expected):
        return None
    if _is_float(expected):
        return f"{key}: {_dtype_name(value.dtype)}, where the model has a floating-point tensor ({_dtype_name(expected)})"
    return f"{key}: {_dtype_name(value.dtype)}, where the model keeps integers ({_dtype_name(expected)})"


def _nonfinite_problem(key: str, value: torch.Tensor) -> str | None:
    if not _is_float(value.dtype) or value.is_meta or bool(torch.isfinite(value).all()):
        return None
    nan = int(torch.isnan(value).sum())
    inf = int(torch.isinf(value).sum())
    return f"{key}: {nan} NaN and {inf} ±inf of {value.numel()} values"


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _listing(title: str, lines: list[str]) -> str:
    shown = [f"  {line}" for line in lines[:SHOWN_KEYS]]
    if len(lines) > SHOWN_KEYS:
        shown.append(f"  … and {len(lines) - SHOWN_KEYS} more")
    return "\n".join([f"{title}:", *shown])


def check_weights(
    module: nn.Module, state_dict: Mapping[str, Any], *, what: str, allow_nonfinite: bool = False, hint: str = ""
) -> None:
    """:func:`check_tensors` and :func:`check_state_dict` of ``state_dict`` against ``module``.

    ``module`` may live on the meta device (built only to know the names, shapes and dtypes).
    """
    check_tensors(state_dict, module, what=what, allow_nonfinite=allow_nonfinite, hint=hint)
    expected = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    check_state_dict(state_dict, expected, what=f"{what} do not fit {type(module).__name__}")


# -- where weights are asked to go ------------------------------------------------------------------

_FLOAT_EXAMPLES = "torch.float32, torch.bfloat16, torch.float16 or torch.float64"


def check_dtype(dtype: Any, *, what: str = "dtype") -> torch.dtype | None:
    """``dtype`` when it is None or a floating-point ``torch.dtype``; else :class:`ConfigError`.

    Module weights are floating point: ``nn.Module.to`` refuses integer dtypes, and casting
    weights to integers would destroy them.
    """
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype):
        raise ConfigError(f"{what} must be a torch.dtype ({_FLOAT_EXAMPLES}), got {dtype!r} ({type(dtype).__name__})")
    if not dtype.is_floating_point:
        raise ConfigError(
            f"{what}={dtype} is not a floating-point dtype; weights are floating point (valid: {_FLOAT_EXAMPLES})"
        )
    return dtype


def available_devices() -> list[str]:
    """The devices this build of torch can use now: ``cpu``, then ``cuda:i``, ``xpu:i``, ``mps:0``."""
    names = ["cpu"]
    for backend in ("cuda", "xpu", "mps"):
        module = getattr(torch, backend, None)
        try:
            usable = module is not None and module.is_available()
            count = module.device_count() if usable and hasattr(module, "device_count") else int(usable)
        except Exception:  # a broken driver counts as no device  # noqa: BLE001
            count = 0
        names += [f"{backend}:{index}" for index in range(count)]
    return names


def check_device(device: Any, *, what: str = "device", allow_meta: bool = False) -> torch.device | None:
    """``device`` as a ``torch.device`` when this machine has it; else :class:`ConfigError`.

    None stays None. ``"cuda"`` (no index) needs one CUDA device, ``"cuda:3"`` four; the
    message lists the devices there are. The meta device holds no values and is refused
    unless ``allow_meta``.
    """
    if device is None:
        return None
    available = available_devices()
    if isinstance(device, bool) or not isinstance(device, (str, int, torch.device)):
        raise ConfigError(
            f"{what} must be a device name such as 'cpu' or 'cuda:0' or a torch.device, got {device!r} "
            f"(available: {', '.join(available)})"
        )
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown {what} {device!r} (available: {', '.join(available)})") from None
    if parsed.type == "cpu" or (allow_meta and parsed.type == "meta"):
        return parsed
    present = [name for name in available if name.split(":")[0] == parsed.type]
    if parsed.index is None and present or f"{parsed.type}:{parsed.index}" in present:
        return parsed
    raise ConfigError(f"{what} {str(parsed)!r} is not available on this machine (available: {', '.join(available)})")
