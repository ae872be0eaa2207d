"""The sampler kit passes correct samplers and catches each kind of broken one."""

from __future__ import annotations

import functools
import types

import pytest

import diffkit_reference as reference
from diffkit import hookimpl, registry
from diffkit.testing import check_sampler
from diffkit.testing.api import run_sampler_group
from diffkit.testing.subject import SamplerSubject, resolve_sampler

from .toy_samplers import (
    euler,
    euler_ancestral,
    euler_ancestral_loud,
    euler_global_rng,
    euler_long_steps,
    euler_wrong_shape,
)

ACCURACY = ("accuracy[gaussian]", "accuracy[mixture]")


def _groups(sampler, groups, **kwargs):
    subject = resolve_sampler(sampler)
    return {r.name: r for group in groups for r in run_sampler_group(group, subject, **kwargs)}


@pytest.mark.parametrize("quick", [False, True])
def test_correct_euler_passes_with_first_order(quick):
    report = check_sampler(euler, quick=quick)
    assert report.ok, report.format()
    assert "deterministic" in report.notes
    for name in ("convergence[gaussian]", "convergence[mixture]"):
        assert 0.85 <= report[name].measured <= 1.2, report[name].detail
    assert report["reference_parity"].skipped  # a bare function has no twin


@pytest.mark.parametrize("quick", [False, True])
def test_euler_with_steps_three_percent_long_fails_convergence(quick):
    report = check_sampler(euler_long_steps, quick=quick)
    assert not report.ok
    assert {r.name for r in report.failures} == {"convergence[gaussian]", "convergence[mixture]"}, report.format()
    assert report["convergence[gaussian]"].measured < 0.4  # the error levels off: order → 0
    assert "FAIL convergence[gaussian]: observed order" in report.format()


def test_a_first_order_sampler_claiming_second_order_fails():
    report = check_sampler(euler, order=2)
    assert {r.name for r in report.failures} == {"convergence[gaussian]", "convergence[mixture]"}, report.format()
    assert "need ≥ 1.70, declared order 2" in report["convergence[gaussian]"].detail
    assert check_sampler(euler, order=1).ok


def test_declared_order_comes_from_the_registry_entry():
    assert resolve_sampler("ddim").order == 1
    assert resolve_sampler("ddim", order=3).order == 3


def test_wrong_shape_fails_the_shape_check():
    report = check_sampler(euler_wrong_shape, quick=True)
    failed = {r.name for r in report.failures}
    assert {"shape_dtype_device[float32, cpu]", "shape_dtype_device[float64, cpu]"} <= failed
    assert "shape [2, 48] (need [2, 3, 4, 4])" in report["shape_dtype_device[float32, cpu]"].detail


def test_global_rng_sampler_is_not_reproducible():
    results = _groups(euler_global_rng, ["reproducible", "batch_invariant", "noise_sampler"])
    assert not results["reproducible"].ok
    assert "torch's global RNG" in results["reproducible"].detail
    assert not results["batch_invariant"].ok
    assert not results["noise_sampler"].ok  # stochastic yet takes no noise_sampler


def test_euler_ancestral_passes_and_is_found_stochastic():
    report = check_sampler(euler_ancestral)
    assert report.ok, report.format()
    assert "stochastic" in report.notes
    assert report["noise_sampler"].ok and not report["noise_sampler"].skipped


def test_ancestral_with_ten_percent_too_much_noise_fails_moments():
    results = _groups(euler_ancestral_loud, ACCURACY)
    assert not results["moments[gaussian]"].ok, results["moments[gaussian]"].detail
    assert not results["moments[mixture]"].ok, results["moments[mixture]"].detail


def test_a_crashing_sampler_fails_every_check_with_its_exception():
    def broken(denoiser, x, sigmas, **kwargs):
        raise RuntimeError("boom")

    report = check_sampler(broken, quick=True)
    assert not report.ok
    assert all(not r.ok for r in report.results if not r.skipped)
    assert "RuntimeError: boom" in report.format()


def test_sigma_passed_as_a_float_is_reported():
    def scalar_sigma(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
        levels = sigmas.tolist()
        for sigma, sigma_next in zip(levels[:-1], levels[1:]):
            x = x + (sigma_next - sigma) * (x - denoiser(x, sigma, cond)) / sigma
        return x

    result = _groups(scalar_sigma, ["shape_dtype_device"])["shape_dtype_device[float64, cpu]"]
    assert not result.ok and "sigma passed as float" in result.detail


@hookimpl
def _register_without_metadata(samplers) -> None:
    samplers.add("toy_euler", euler)
    samplers.add("toy_euler_ancestral", euler_ancestral)


class _EntryPoint:
    """A stand-in for an installed distribution's entry point naming a plugin module."""

    name, value, dist = "toy", "toy_plugin", None

    def load(self) -> types.ModuleType:
        module = types.ModuleType("toy_plugin")
        module.diffkit_register_samplers = _register_without_metadata
        return module


def test_a_registered_sampler_without_metadata_is_checked_by_name():
    registry.reset(registry.PluginHost(entry_points=lambda: [_EntryPoint()], environ={}))
    assert registry.get_entry("sampler", "toy_euler").reference is None
    report = check_sampler("toy_euler", quick=True)
    assert report.ok, report.format()
    assert "toy" in report.subject
    assert "stochastic" in check_sampler("toy_euler_ancestral", quick=True).notes


@pytest.mark.parametrize(
    ("sampler", "twin", "agree"),
    [
        (euler, reference.euler_sample, True),
        (euler_long_steps, reference.euler_sample, False),
        # DDIM with η = 1 adds noise of std σ'·√(σ² − σ'²)/σ, exactly the toy ancestral step
        (euler_ancestral, functools.partial(reference.ddim_sample, eta=1.0), True),
        (euler_ancestral_loud, functools.partial(reference.ddim_sample, eta=1.0), False),
    ],
    ids=["euler", "euler-long", "ancestral", "ancestral-loud"],
)
def test_reference_parity_feeds_both_the_same_noise(sampler, twin, agree):
    subject = SamplerSubject(sampler, label=sampler.__name__, reference=twin)
    results = run_sampler_group("reference_parity", subject)
    assert len(results) == 2 and all(r.ok == agree for r in results), [r.format() for r in results]
