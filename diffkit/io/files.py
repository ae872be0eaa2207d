"""Reading files a user or another process may have tampered with: regular files only, JSON
of the expected shape, every failure a named :class:`~diffkit.errors.DiffkitError`.

A FIFO, device or socket where a file is expected would block ``open`` (or read forever), so
every reader here checks ``stat`` first: only regular files are opened, and a symlink counts
as what it points to.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from diffkit.errors import CheckpointError, DiffkitError


def require_regular_file(
    path: str | os.PathLike[str], *, what: str = "file", error: type[DiffkitError] = CheckpointError
) -> Path:
    """``path`` when it is a regular file (after symlinks); otherwise ``error`` saying what it is."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"{what} {path} is missing") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(mode):
        raise error(f"{what} {path} is not a regular file (it is a {_kind_of(mode)}); refusing to open it")
    return path


def read_text(
    path: str | os.PathLike[str], *, what: str = "file", error: type[DiffkitError] = CheckpointError
) -> str:
    """The UTF-8 text of a regular file, or ``error`` naming the file and the reason."""
    path = require_regular_file(path, what=what, error=error)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {path} is not UTF-8 text: {exc}") from exc
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def read_json_object(
    path: str | os.PathLike[str], *, what: str = "file", error: type[DiffkitError] = CheckpointError,
    allow_infinity: bool = False,
) -> dict[str, Any]:
    """A JSON object (a ``dict``) read from a regular file; anything else is ``error``.

    Non-standard numbers (``NaN``, ``Infinity``) are refused, like the writers refuse them;
    ``allow_infinity`` accepts the literals ``Infinity`` and ``-Infinity`` (diffusers writes them
    in scheduler configs, e.g. ``lambda_min_clipped``), never NaN.
    """
    text = read_text(path, what=what, error=error)
    constant = _infinity if allow_infinity else _refuse_constant
    try:
        data = json.loads(text, parse_constant=constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        raise error(f"{what} {path} is not valid JSON ({exc}); it may be truncated or edited by hand") from exc
    if not isinstance(data, dict):
        raise error(f"{what} {path} must hold a JSON object {{...}}, found {type(data).__name__} {_short(data)}")
    return data


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _infinity(name: str) -> float:
    if name == "NaN":
        return _refuse_constant(name)
    return float(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:40]} is too large for a floating-point number")
    return value


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _kind_of(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "FIFO (named pipe)"), (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return name
    return "special file"


def unpickling_error_detail(exc: BaseException) -> str:
    """One line describing why ``torch.load(weights_only=True)`` refused or failed a file.

    torch's own message runs to many lines and advises retrying with ``weights_only=False``:
    advice that would run whatever the file holds. Only the line naming the refused object
    (``Unsupported global: …``) or else the first line is kept, without that advice.
    """
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if "weights_only" not in line or "Unsupported global" in line]
    detail = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else "")
    detail = detail.replace("WeightsUnpickler error: ", "")
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
