"""The conformance kit: the checks every sampler, schedule and spacing — built-in or plugin — must pass.

Programmatic::

    from diffkit.testing import check_sampler, check_schedule
    report = check_sampler("ddim", options={"eta": 0.0})
    print(report.format()); assert report.ok

In a plugin's test suite, subclass :class:`SamplerContract` / :class:`ScheduleContract` /
:class:`SpacingContract`.
From the shell: ``diffkit check NAME``.

Sampler checks: output shape/dtype/device, bit-identical reproducibility per generator, batch
invariance with one generator per sample, the per-step callback, finite output at extreme σ
grids, ``noise_sampler`` honoured (stochastic), convergence to the exact probability-flow ODE
endpoint on analytic data (deterministic) or the data's mean and covariance (stochastic) — each
data set seen through the σ path and by a flow-matching model from t = 1
(:mod:`diffkit.testing.problems`) — and parity with the registered numpy twin. See
:mod:`diffkit.testing.accuracy` for the bounds.
Spacing checks: :mod:`diffkit.testing.spacing_checks`.
"""

from diffkit.testing.api import (
    SAMPLER_GROUPS,
    SCHEDULE_GROUPS,
    SPACING_GROUPS,
    check_sampler,
    check_schedule,
    check_spacing,
)
from diffkit.testing.contract import SamplerContract, ScheduleContract, SpacingContract
from diffkit.testing.report import CheckResult, Report

__all__ = [  # by use: the checks and their groups; what they return; the pytest classes
    "check_sampler", "check_schedule", "check_spacing", "SAMPLER_GROUPS", "SCHEDULE_GROUPS", "SPACING_GROUPS",
    "Report", "CheckResult",
    "SamplerContract", "ScheduleContract", "SpacingContract",
]
