"""The sampler kit passes correct samplers and catches each kind of broken one."""

from __future__ import annotations

import functools
import types

import pytest

import diffkit_reference as reference
from diffkit import hookimpl, registry
from diffkit.testing import check_sampler, problems
from diffkit.testing.api import run_sampler_group
from diffkit.testing.subject import SamplerSubject, resolve_sampler

from .toy_samplers import (
    euler,
    euler_ancestral,
    euler_ancestral_loud,
    euler_clipped_start,
    euler_global_rng,
    euler_long_steps,
    euler_reporting_the_update,
    euler_wrong_shape,
)

ACCURACY = tuple(f"accuracy[{name}]" for name in problems.NAMES)
CONVERGENCE = {f"convergence[{name}]" for name in problems.NAMES}
FLOW_CONVERGENCE = {"convergence[flow_gaussian]", "convergence[flow_mixture]"}


def _groups(sampler, groups, **kwargs):
    subject = resolve_sampler(sampler)
    return {r.name: r for group in groups for r in run_sampler_group(group, subject, **kwargs)}


@pytest.mark.parametrize("quick", [False, True])
def test_correct_euler_passes_with_first_order(quick):
    report = check_sampler(euler, quick=quick)
    assert report.ok, report.format()
    assert "deterministic" in report.notes
    for name in CONVERGENCE:
        assert 0.85 <= report[name].measured <= 1.2, report[name].detail
    assert report["reference_parity"].skipped  # a bare function has no twin


@pytest.mark.parametrize("quick", [False, True])
def test_euler_with_steps_three_percent_long_fails_convergence(quick):
    report = check_sampler(euler_long_steps, quick=quick)
    assert not report.ok
    assert {r.name for r in report.failures} == CONVERGENCE, report.format()
    assert report["convergence[gaussian]"].measured < 0.4  # the error levels off: order → 0
    assert "FAIL convergence[gaussian]: observed order" in report.format()


def test_a_first_order_sampler_claiming_second_order_fails():
    report = check_sampler(euler, order=2)
    assert {r.name for r in report.failures} == CONVERGENCE, report.format()
    assert "need ≥ 1.70, declared order 2" in report["convergence[gaussian]"].detail
    assert "need ≥ 1.20, declared order 2" in report["convergence[flow_gaussian]"].detail  # the flow grid's cap
    assert check_sampler(euler, order=1).ok


def test_declared_order_comes_from_the_registry_entry():
    assert resolve_sampler("ddim").order == 1
    assert resolve_sampler("ddim", order=3).order == 3


def test_wrong_shape_fails_the_shape_check():
    report = check_sampler(euler_wrong_shape, quick=True)
    failed = {r.name for r in report.failures}
    assert {"shape_dtype_device[float32, cpu]", "shape_dtype_device[float64, cpu]"} <= failed
    assert "shape [2, 48] (need [2, 3, 4, 4])" in report["shape_dtype_device[float32, cpu]"].detail


def test_a_callback_reporting_the_updated_x_fails_the_callback_check():
    results = _groups(euler_reporting_the_update, ["callback"], quick=True)
    assert not results["callback"].ok and "report x before the step's update" in results["callback"].detail
    assert _groups(euler, ["callback"], quick=True)["callback"].ok


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
    """Caught on three problems of four; on the flow mixture 10 % louder noise moves the worst whitened
    covariance entry by 0.17, under its bound of 0.19 (the flow grid spends most steps at large σ,
    whose extra noise the later steps contract away)."""
    results = _groups(euler_ancestral_loud, ACCURACY)
    for name in ("gaussian", "mixture", "flow_gaussian"):
        assert not results[f"moments[{name}]"].ok, results[f"moments[{name}]"].detail


@pytest.mark.parametrize("quick", [False, True])
def test_a_sampler_that_cannot_start_at_t_equals_one_fails_the_flow_problems_only(quick):
    """Clipping σ to 4096 is harmless from σ = 80 but leaves a flow model's t = 1 start at t = 0.99976:
    the error levels off (order → 0) on the flow problems alone."""
    report = check_sampler(euler_clipped_start, quick=quick)
    assert {r.name for r in report.failures} == FLOW_CONVERGENCE, report.format()
    assert report["convergence[flow_mixture]"].measured < 0.4


def test_the_sigma_trapezoid_fails_from_t_equals_one_and_the_flow_trapezoid_passes():
    """EDM's Heun (trapezoid in σ) diverges from σ = 2³⁰ — its correction grows with σ — so ``heun``
    takes the trapezoid in flow time t on a flow model; the kit's flow problems tell the two apart."""
    sigma_time = check_sampler("heun", options={"time": "sigma"}, quick=True)
    assert {r.name for r in sigma_time.failures} == FLOW_CONVERGENCE, sigma_time.format()
    flow_time = _groups("heun", sorted(f"accuracy[{name}]" for name in ("flow_gaussian", "flow_mixture")), quick=True)
    assert all(r.ok and r.measured >= 1.5 for r in flow_time.values()), [r.detail for r in flow_time.values()]


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
