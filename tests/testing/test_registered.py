"""Every registered sampler and schedule — built-in or installed plugin — passes the kit (the wrappers of a peer
library's samplers excepted: their findings are docs/diffusers-conformance.md)."""

from __future__ import annotations

import inspect

import pytest

from diffkit import registry
from diffkit.testing import check_sampler, check_schedule
from tests.sweeps import conforming_samplers


def _names(kind: str) -> list[str]:
    names = registry.names(kind)
    registry.reset()  # leave no loaded registry behind at collection time
    return names


def _conforming_samplers() -> list[str]:
    names = conforming_samplers()
    registry.reset()  # leave no loaded registry behind at collection time
    return names


@pytest.mark.parametrize("name", _conforming_samplers())
def test_registered_sampler_passes(name):
    report = check_sampler(name)
    assert report.ok, report.format()


@pytest.mark.parametrize("options", [{"eta": 0.5}], ids=["eta=0.5"])
def test_ddim_with_noise_passes(options):
    report = check_sampler("ddim", options=options)
    assert report.ok, report.format()
    assert "stochastic" in report.notes


def test_ddpm_large_variance_passes():
    report = check_sampler("ddpm", options={"variance": "large"})
    assert report.ok, report.format()


def _schedule_configs() -> list:
    """Every registered schedule as built by default, and rescaled to zero terminal SNR where it takes that option."""
    cases = []
    for name in _names("schedule"):
        cases.append(pytest.param(name, False, id=f"{name}-default"))
        if "rescale_zero_terminal_snr" in inspect.signature(registry.get("schedule", name)).parameters:
            cases.append(pytest.param(name, True, id=f"{name}-zero-terminal-snr"))
    return cases


@pytest.mark.parametrize("name, zero_snr", _schedule_configs())
def test_registered_schedule_passes(name, zero_snr):
    report = check_schedule(name, config={"rescale_zero_terminal_snr": True} if zero_snr else None)
    assert report.ok, report.format()
