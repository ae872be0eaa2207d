"""Checking what a file says before anything uses it: JSON records with exactly the expected
keys and types, numbers every config can hold, paths that stay inside their folder, and errors
that name the file.

Shared by every reader of diffkit's folders (components, pipelines, training runs).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from diffkit.errors import CheckpointError, DiffkitError

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


def check_numbers(value: Any, *, where: str, allow_infinity: bool = False) -> None:
    """Refuse numbers no config can use, anywhere in ``value`` (nested objects and arrays).

    A JSON literal like ``1e400`` reads as ``inf`` and ``10**400`` as a Python int too large
    for any float or tensor size; both would pass a check like ``value > 0`` and fail (or give
    NaN) only later. The message names the key path. (Walked with a stack, not recursion:
    JSON may nest as deep as the parser allows.) ``allow_infinity`` lets ±inf through (files whose
    writer means it, such as diffusers' scheduler configs).
    """
    pending: list[tuple[str, Any]] = [("", value)]
    while pending:
        path, item = pending.pop()
        if isinstance(item, dict):
            pending += [(f"{path}.{key}" if path else str(key), child) for key, child in item.items()]
        elif isinstance(item, list):
            pending += [(f"{path}[{index}]", child) for index, child in enumerate(item)]
        elif isinstance(item, float) and not math.isfinite(item) and not (allow_infinity and math.isinf(item)):
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
