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

from collections.abc import Mapping
from typing import Any, ClassVar

from diffkit.testing.api import resolve_schedule, run_sampler_group, run_schedule_group, run_spacing_group
from diffkit.testing.report import CheckResult
from diffkit.testing.spacing_checks import SpacingSubject, resolve_spacing
from diffkit.testing.subject import SamplerSubject, resolve_sampler


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


class SamplerContract:
    """Base class: set ``sampler`` (name or function); optionally ``options``, ``order``, ``quick``."""

    sampler: ClassVar[Any]
    options: ClassVar[Mapping[str, Any] | None] = None
    order: ClassVar[float | None] = None
    quick: ClassVar[bool] = False

    @classmethod
    def _subject(cls) -> SamplerSubject:
        cached = vars(cls).get("_diffkit_subject")
        if cached is None:
            cached = resolve_sampler(
                _class_attribute(cls, "sampler"), _class_attribute(cls, "options"), _class_attribute(cls, "order")
            )
            cls._diffkit_subject = cached  # one subject per class: its kind is probed once
        return cached

    def _check(self, group: str) -> None:
        _assert_results(run_sampler_group(group, self._subject(), quick=type(self).quick))

    def test_shape_dtype_device(self) -> None:
        self._check("shape_dtype_device")

    def test_reproducible(self) -> None:
        self._check("reproducible")

    def test_batch_invariant(self) -> None:
        self._check("batch_invariant")

    def test_callback(self) -> None:
        self._check("callback")

    def test_finite_extremes(self) -> None:
        self._check("finite_extremes")

    def test_noise_sampler(self) -> None:
        self._check("noise_sampler")

    def test_accuracy_gaussian(self) -> None:
        self._check("accuracy[gaussian]")

    def test_accuracy_mixture(self) -> None:
        self._check("accuracy[mixture]")

    def test_reference_parity(self) -> None:
        self._check("reference_parity")


class ScheduleContract:
    """Base class: set ``schedule`` (name or object); optionally ``config`` for a name."""

    schedule: ClassVar[Any]
    config: ClassVar[Mapping[str, Any] | None] = None

    @classmethod
    def _built(cls) -> Any:
        cached = vars(cls).get("_diffkit_schedule")
        if cached is None:
            cached, _ = resolve_schedule(_class_attribute(cls, "schedule"), _class_attribute(cls, "config"))
            cls._diffkit_schedule = cached
        return cached

    def _check(self, group: str) -> None:
        _assert_results(run_schedule_group(group, self._built()))

    def test_alphas_cumprod(self) -> None:
        self._check("alphas_cumprod")

    def test_sigma_table(self) -> None:
        self._check("sigma_table")

    def test_sigmas_for(self) -> None:
        self._check("sigmas_for")

    def test_bad_steps(self) -> None:
        self._check("bad_steps")


class SpacingContract:
    """Base class: set ``spacing`` (name or grid function); optionally ``options`` and, for a
    bare function placed at training timesteps, ``timesteps``."""

    spacing: ClassVar[Any]
    options: ClassVar[Mapping[str, Any] | None] = None
    timesteps: ClassVar[Any] = None

    @classmethod
    def _subject(cls) -> SpacingSubject:
        cached = vars(cls).get("_diffkit_subject")
        if cached is None:
            cached = resolve_spacing(
                _class_attribute(cls, "spacing"), _class_attribute(cls, "options"), _class_attribute(cls, "timesteps")
            )
            cls._diffkit_subject = cached
        return cached

    def _check(self, group: str) -> None:
        _assert_results(run_spacing_group(group, self._subject()))

    def test_grids(self) -> None:
        self._check("grids")

    def test_hits_sigma_max(self) -> None:
        self._check("hits_sigma_max")

    def test_timesteps(self) -> None:
        self._check("timesteps")

    def test_bad_steps(self) -> None:
        self._check("bad_steps")
