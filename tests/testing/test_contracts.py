"""The pytest contract classes, used exactly as a plugin author would."""

from __future__ import annotations

import pytest
import torch

import diffkit
from diffkit.testing import SamplerContract, ScheduleContract, check_schedule

from .toy_samplers import euler, euler_ancestral


class TestEulerContract(SamplerContract):
    """A bare function as the class attribute (it must not turn into a bound method)."""

    sampler = euler


class TestEulerAncestralContract(SamplerContract):
    sampler = euler_ancestral
    quick = True


class TestDDIMWithNoiseContract(SamplerContract):
    """A registered name with options."""

    sampler = "ddim"
    options = {"eta": 1.0}
    quick = True


class TestLinearScheduleContract(ScheduleContract):
    schedule = "linear"


class TestZeroTerminalSNRContract(ScheduleContract):
    schedule = "scaled_linear"
    config = {"rescale_zero_terminal_snr": True}


class _LaxSchedule:
    """The linear schedule with a broken ``sigmas_for``: accepts any steps, forgets the final 0."""

    def __init__(self) -> None:
        self._inner = diffkit.build("schedule", "linear")
        self.num_train_timesteps = self._inner.num_train_timesteps
        self.alphas_cumprod = self._inner.alphas_cumprod
        self.sigmas = self._inner.sigmas

    def sigmas_for(self, steps, spacing="leading", *, steps_offset=0):
        idx = torch.linspace(self.num_train_timesteps - 1, 0, max(int(steps), 1) + 1).long()
        return self.sigmas[idx]


def test_schedule_kit_catches_a_broken_schedule():
    report = check_schedule(_LaxSchedule())
    failed = {r.name for r in report.failures}
    assert failed == {"sigmas_for[leading]", "sigmas_for[trailing]", "sigmas_for[linspace]", "bad_steps"}, report.format()
    assert "last σ is 0.01 (need exactly 0)" in report["sigmas_for[leading]"].detail
    assert "steps=0: accepted" in report["bad_steps"].detail


def test_schedule_kit_catches_an_increasing_alpha_bar():
    schedule = _LaxSchedule()
    schedule.alphas_cumprod = schedule.alphas_cumprod.flip(0)
    report = check_schedule(schedule)
    assert not report["alphas_cumprod"].ok and "non-decreasing" in report["alphas_cumprod"].detail
    assert not report["sigma_table"].ok  # σ no longer matches √((1 − ᾱ)/ᾱ)


def test_contract_requires_the_subject_attribute():
    class TestNothing(SamplerContract):
        pass

    with pytest.raises(AttributeError, match="sampler"):
        TestNothing().test_reproducible()
