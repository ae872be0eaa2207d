"""The exceptions diffkit raises. Every one names what was wrong and what is valid."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class DiffkitError(Exception):
    """Base class of every error diffkit raises on purpose."""


class UnknownNameError(DiffkitError, LookupError):
    """A registry (or option) name that does not exist; the message lists close matches."""

    def __init__(self, what: str, name: str, valid: Iterable[str]) -> None:
        valid = sorted(valid)
        self.what, self.name, self.valid = what, name, valid
        self.suggestions = close_matches(name, valid)
        message = f"unknown {what} {name!r}"
        if self.suggestions:
            message += "; did you mean " + " or ".join(repr(s) for s in self.suggestions) + "?"
        if valid:
            message += f" (valid: {', '.join(valid)})"
        else:
            message += f" (no {what} is registered)"
        super().__init__(message)

    def __str__(self) -> str:  # LookupError would otherwise repr() the message
        return str(self.args[0])


class PluginError(DiffkitError):
    """A plugin failed to import, validate or register (raised in strict mode)."""


class ConflictError(DiffkitError):
    """Two plugins claim the same name in one registry."""


class ConfigError(DiffkitError, ValueError):
    """Configuration or argument values outside their valid range."""


def close_matches(name: str, valid: Iterable[str], n: int = 3) -> list[str]:
    """Up to ``n`` entries of ``valid`` that look like ``name`` (never raises)."""
    valid = list(valid)
    lowered = {v.lower(): v for v in valid}
    hits = difflib.get_close_matches(str(name).lower(), list(lowered), n=n, cutoff=0.6)
    return [lowered[h] for h in hits]


def check_choice(what: str, value: str, valid: Iterable[str]) -> str:
    """Return ``value`` when it is one of ``valid``, else raise :class:`UnknownNameError`."""
    valid = list(valid)
    if value not in valid:
        raise UnknownNameError(what, value, valid)
    return value


class ShapeError(DiffkitError, ValueError):
    """Tensor shapes that do not fit together (e.g. a denoiser output unlike its input)."""


class CheckpointError(DiffkitError, ValueError):
    """Weights that do not fit the model: the message lists every offending key."""


class RunFolderError(DiffkitError):
    """A run folder that this run may not use: another run's, the user's own files, unwritable."""


class RunInUseError(RunFolderError):
    """A run folder locked by another live diffkit process (the message names the holder)."""


class OutputError(DiffkitError, OSError):
    """A file or folder diffkit was asked to write cannot be written (a read-only folder, a
    parent that is a file, a NUL byte in the name, …): the message names the path and why.
    An :class:`OSError` too, so code that catches file-system errors keeps catching it."""


class NonFiniteError(DiffkitError, FloatingPointError):
    """NaN or ±inf where finite numbers are required: a diverged loss, weights, samples."""


class NonFiniteWeightsError(CheckpointError, NonFiniteError):
    """Weights holding NaN or ±inf: both a :class:`CheckpointError` (a file that cannot be used
    as it is) and a :class:`NonFiniteError`, so either ``except`` clause catches it."""


class InsufficientMemoryError(ConfigError, MemoryError):
    """A request larger than the memory there is (too many samples at once, say): the message
    names how much it needs, how much is free, and what to make smaller."""
