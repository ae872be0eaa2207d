"""Pytest contract classes: subclass one in your plugin's tests to run every check as a test.

::

    from diffkit.testing import SamplerContract, ScheduleContract

    class TestMyEuler(SamplerContract):
        sampler = "my_euler"            # a registered name, or the function itself
        options = {"s_churn": 0.0}      # optional keyword options
        order = 2                       # optional: the convergence order to require

    class TestMySchedule(ScheduleContract):
        schedule = "my_schedule"        # a registered name, or a schedule object
        config = {"num_train_timesteps": 500}

    class TestMySpacing(SpacingContract):
        spacing = "my_spacing"          # a registered name, or the grid function itself
        options = {"rho": 5.0}          # optional spacing options

Each check group becomes its own test method (``test_reproducible``, ``test_accuracy_mixture``,
…), so a failure names the broken property and its measurement. Checks that do not apply
(e.g. no reference twin) are reported as skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

from diffkit.testing.api import (
    SAMPLER_GROUPS,
    SCHEDULE_GROUPS,
    SPACING_GROUPS,
    resolve_schedule,
    run_sampler_group,
    run_schedule_group,
    run_spacing_group,
)
from diffkit.testing.report import CheckResult
from diffkit.testing.spacing_checks import resolve_spacing
from diffkit.testing.subject import resolve_sampler


def _class_attribute(cls: type, name: str) -> Any:
    """A class attribute as written (a function stays a function, not a bound method)."""
    for klass in cls.__mro__:
        if name in vars(klass):
            value = vars(klass)[name]
            return value.__func__ if isinstance(value, staticmethod) else value
    raise AttributeError(f"{cls.__name__} must set the class attribute {name!r}")


def _assert_results(results: list[CheckResult]) -> None:
    import pytest  # the contract classes only run under pytest

    if results and all(r.skipped for r in results):
        pytest.skip("; ".join(r.detail for r in results))
    failures = [r for r in results if not r.ok]
    assert not failures, "\n".join(r.format() for r in failures)


def _group_test(group: str) -> Callable[[Any], None]:
    """The test method of one check group: ``accuracy[mixture]`` becomes ``test_accuracy_mixture``."""

    def test(self: _Contract) -> None:
        _assert_results(self._run(group))

    test.__name__ = "test_" + group.replace("[", "_").rstrip("]")
    test.__doc__ = f"The {group!r} check group."
    return test


def _one_test_per_group(groups: Iterable[str]) -> Callable[[type], type]:
    """Class decorator: a ``test_<group>`` method per check group, so a failure names the broken property."""

    def add(cls: type) -> type:
        for test in map(_group_test, groups):
            test.__qualname__ = f"{cls.__qualname__}.{test.__name__}"
            setattr(cls, test.__name__, test)
        return cls

    return add


class _Contract:
    """What the three contract classes share: the subject, resolved once per class from the class
    attributes named in ``_attributes`` (in ``_resolve``'s order), and ``_run_group`` to check it."""

    _attributes: ClassVar[tuple[str, ...]]
    _resolve: ClassVar[Callable[..., Any]]
    _run_group: ClassVar[Callable[[str, Any], list[CheckResult]]]

    @classmethod
    def _subject(cls) -> Any:
        cached = vars(cls).get("_diffkit_subject")
        if cached is None:
            cached = cls._resolve(*(_class_attribute(cls, name) for name in cls._attributes))
            cls._diffkit_subject = cached  # one subject per class: e.g. a sampler's kind is probed once
        return cached

    def _run(self, group: str) -> list[CheckResult]:
        return type(self)._run_group(group, self._subject())


@_one_test_per_group(SAMPLER_GROUPS)
class SamplerContract(_Contract):
    """Base class: set ``sampler`` (name or function); optionally ``options``, ``order``, ``quick``."""

    sampler: ClassVar[Any]
    options: ClassVar[Mapping[str, Any] | None] = None
    order: ClassVar[float | None] = None
    quick: ClassVar[bool] = False

    _attributes = ("sampler", "options", "order")
    _resolve = staticmethod(resolve_sampler)

    def _run(self, group: str) -> list[CheckResult]:
        return run_sampler_group(group, self._subject(), quick=type(self).quick)


@_one_test_per_group(SCHEDULE_GROUPS)
class ScheduleContract(_Contract):
    """Base class: set ``schedule`` (name or object); optionally ``config`` for a name."""

    schedule: ClassVar[Any]
    config: ClassVar[Mapping[str, Any] | None] = None

    _attributes = ("schedule", "config")
    _resolve = staticmethod(lambda schedule, config: resolve_schedule(schedule, config)[0])  # the object, not its label
    _run_group = staticmethod(run_schedule_group)


@_one_test_per_group(SPACING_GROUPS)
class SpacingContract(_Contract):
    """Base class: set ``spacing`` (name or grid function); optionally ``options`` and, for a
    bare function placed at training timesteps, ``timesteps``."""

    spacing: ClassVar[Any]
    options: ClassVar[Mapping[str, Any] | None] = None
    timesteps: ClassVar[Any] = None

    _attributes = ("spacing", "options", "timesteps")
    _resolve = staticmethod(resolve_spacing)
    _run_group = staticmethod(run_spacing_group)
