"""The argument checks every module shares: integers that are not bools, finite real numbers in
a range, flags, and their attrs field validators. One home, so that one rule gives one message
everywhere ("steps must be an integer ≥ 1, got 0").

Python's ``bool`` is an ``int``: ``True`` passes ``isinstance(v, int)`` and would silently mean
1. Every check here refuses bools where a number is wanted, and NaN/±inf where a finite number
is wanted. Failures are :class:`~diffkit.errors.ConfigError` naming the value and the valid range.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import attrs

from diffkit.errors import ConfigError, check_choice

Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]
"""An attrs field validator: ``validate(instance, attribute, value)``."""


def is_integer(value: Any) -> bool:
    """True for Python and numpy integers, False for bools (and everything else)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """True for real numbers (ints, floats, numpy scalars), False for bools and everything else."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _range_text(
    noun: str, low: Any, high: Any, low_open: bool, high_open: bool, show: Callable[[Any], str]
) -> str:
    """``"an integer in [1, 10]"``, ``"a finite number > 0"``, …: the valid range in words."""
    if low is not None and high is not None:
        return f"{noun} in {'(' if low_open else '['}{show(low)}, {show(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{noun} {'>' if low_open else '≥'} {show(low)}"
    if high is not None:
        return f"{noun} {'<' if high_open else '≤'} {show(high)}"
    return noun


def check_int(name: str, value: Any, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an ``int`` when it is an integer (not a bool) in [minimum, maximum]."""
    if not is_integer(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        valid = _range_text("an integer", minimum, maximum, False, False, str)
        raise ConfigError(f"{name} must be {valid}, got {value!r}")
    return int(value)


def check_real(
    name: str, value: Any, *, low: float | None = None, high: float | None = None,
    low_open: bool = False, high_open: bool = False, finite: bool = True,
) -> float:
    """``value`` as a ``float`` when it is a real number (not a bool) in the range.

    ``low``/``high`` bound it (``low_open``/``high_open`` exclude the bound); ``finite``
    (default) refuses NaN and ±inf. NaN never satisfies a bound.
    """
    ok = is_real(value) and not math.isnan(value) and (not finite or math.isfinite(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        noun = "a finite number" if finite else "a number"
        valid = _range_text(noun, low, high, low_open, high_open, "{:g}".format)
        raise ConfigError(f"{name} must be {valid}, got {value!r}")
    return float(value)


def check_flag(name: str, value: Any) -> bool:
    """``value`` when it is exactly True or False (``1``, ``"yes"`` or None are refused)."""
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {value!r}")
    return value


# -- attrs field validators -----------------------------------------------------------------------


def int_at_least(minimum: int, *, at_most: int | None = None) -> Validator:
    """attrs validator: an integer (not a bool) ≥ ``minimum`` (and ≤ ``at_most``)."""

    def validate(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        check_int(attribute.name, value, minimum=minimum, maximum=at_most)

    return validate


def real_in(
    low: float | None = None, high: float | None = None, *, low_open: bool = False, high_open: bool = False,
    finite: bool = True,
) -> Validator:
    """attrs validator: a real number (not a bool) in the range (see :func:`check_real`)."""

    def validate(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        check_real(attribute.name, value, low=low, high=high, low_open=low_open, high_open=high_open, finite=finite)

    return validate


def optional(validator: Validator) -> Validator:
    """attrs validator: None, or what ``validator`` accepts."""

    def validate(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is not None:
            validator(instance, attribute, value)

    return validate


positive_real: Validator = real_in(0.0, low_open=True)
"""attrs validator: a finite number > 0."""

non_negative_real: Validator = real_in(0.0)
"""attrs validator: a finite number ≥ 0."""

finite_real: Validator = real_in()
"""attrs validator: any finite number."""

probability: Validator = real_in(0.0, 1.0, high_open=True)
"""attrs validator: a number in [0, 1) (a drop probability of 1 would never show the condition)."""


def one_of(valid: tuple[str, ...]) -> Validator:
    """attrs validator: one of the names ``valid`` (an unknown one suggests close matches)."""

    def validate(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        check_choice(attribute.name, value, valid)

    return validate


def boolean(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """attrs validator: exactly True or False."""
    check_flag(attribute.name, value)


def positive_ints(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """attrs validator: a non-empty tuple of integers ≥ 1 (channel lists, kernel sizes)."""
    if not isinstance(value, tuple) or not value or not all(is_integer(v) and v >= 1 for v in value):
        raise ConfigError(f"{attribute.name} must be a non-empty tuple of positive integers, got {value!r}")


def as_tuple(value: Any) -> Any:
    """attrs converter: lists (e.g. from JSON) become tuples, so a frozen config stays hashable."""
    return tuple(value) if isinstance(value, (list, tuple)) else value
