"""The outcome of a conformance run: one :class:`CheckResult` per check, gathered in a :class:`Report`."""

from __future__ import annotations

from collections.abc import Iterator

import attrs


@attrs.frozen(kw_only=True)
class CheckResult:
    """One check's verdict.

    Attributes:
        name: the check, e.g. ``"convergence[gaussian]"``.
        ok: whether it passed (a skipped check counts as passed).
        detail: one human-readable line with the measured value and its bound,
            e.g. ``"observed order 0.14 (need ≥ 0.7)"``.
        measured: the headline number (an order, an error, …), or None.
        skipped: the check did not apply (e.g. no reference twin registered).
        seconds: wall time spent on the check.
    """

    name: str
    ok: bool
    detail: str
    measured: float | None = None
    skipped: bool = False
    seconds: float = 0.0

    @property
    def status(self) -> str:
        """``"PASS"``, ``"FAIL"`` or ``"SKIP"``."""
        return "SKIP" if self.skipped else "PASS" if self.ok else "FAIL"

    def format(self) -> str:
        """``PASS name: detail (0.12 s)``."""
        return f"{self.status} {self.name}: {self.detail} ({self.seconds:.2f} s)"


def passed(name: str, detail: str, measured: float | None = None) -> CheckResult:
    """A passing result."""
    return CheckResult(name=name, ok=True, detail=detail, measured=measured)


def failed(name: str, detail: str, measured: float | None = None) -> CheckResult:
    """A failing result."""
    return CheckResult(name=name, ok=False, detail=detail, measured=measured)


def verdict(name: str, ok: bool, detail: str, measured: float | None = None) -> CheckResult:
    """A result that passes when ``ok``."""
    return CheckResult(name=name, ok=bool(ok), detail=detail, measured=measured)


def skipped(name: str, reason: str) -> CheckResult:
    """A check that does not apply."""
    return CheckResult(name=name, ok=True, detail=reason, skipped=True)


def crashed(name: str, exc: BaseException) -> CheckResult:
    """A check whose subject raised: a failure naming the exception."""
    return failed(name, f"raised {type(exc).__name__}: {exc}")


@attrs.frozen(kw_only=True)
class Report:
    """All results of one conformance run.

    Attributes:
        subject: what was checked, e.g. ``"sampler ddim"``.
        results: one :class:`CheckResult` per check, in the order they ran.
        notes: facts found on the way, e.g. ``"stochastic"``.
    """

    subject: str
    results: list[CheckResult] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)

    @property
    def ok(self) -> bool:
        """True when no check failed."""
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        """The failed checks."""
        return [r for r in self.results if not r.ok]

    def __iter__(self) -> Iterator[CheckResult]:
        return iter(self.results)

    def __getitem__(self, name: str) -> CheckResult:
        """The result of the check called ``name``."""
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(f"no check named {name!r}; checks: {', '.join(r.name for r in self.results)}")

    def format(self) -> str:
        """Human-readable lines: a summary, then one ``PASS``/``FAIL``/``SKIP`` line per check."""
        total = sum(r.seconds for r in self.results)
        n_fail = len(self.failures)
        n_skip = sum(1 for r in self.results if r.skipped)
        n_pass = len(self.results) - n_fail - n_skip
        counts = [f"{n_pass} passed"] + ([f"{n_fail} FAILED"] if n_fail else []) + ([f"{n_skip} skipped"] if n_skip else [])
        notes = f" ({', '.join(self.notes)})" if self.notes else ""
        head = f"{self.subject}{notes}: {len(self.results)} checks: {', '.join(counts)} in {total:.1f} s"
        return "\n".join([head, *("  " + r.format() for r in self.results)])
