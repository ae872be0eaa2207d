"""The conformance kit: the checks every sampler and schedule — built-in or plugin — must pass.

Programmatic::

    from diffkit.testing import check_sampler, check_schedule
    report = check_sampler("ddim", options={"eta": 0.0})
    print(report.format()); assert report.ok

In a plugin's test suite, subclass :class:`SamplerContract` / :class:`ScheduleContract`.
From the shell: ``diffkit check NAME``.

Sampler checks: output shape/dtype/device, bit-identical reproducibility per generator, batch
invariance with one generator per sample, the per-step callback, finite output at extreme σ
grids, ``noise_sampler`` honoured (stochastic), convergence to the exact probability-flow ODE
endpoint on analytic data (deterministic) or the data's mean and covariance (stochastic), and
parity with the registered numpy twin. See :mod:`diffkit.testing.accuracy` for the bounds.
"""

from diffkit.testing.api import (
    SAMPLER_GROUPS,
    SCHEDULE_GROUPS,
    check_sampler,
    check_schedule,
)
from diffkit.testing.contract import SamplerContract, ScheduleContract
from diffkit.testing.report import CheckResult, Report

__all__ = [
    "SAMPLER_GROUPS",
    "SCHEDULE_GROUPS",
    "CheckResult",
    "Report",
    "SamplerContract",
    "ScheduleContract",
    "check_sampler",
    "check_schedule",
]
