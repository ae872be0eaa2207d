"""Inference spacings: the six-name registry, σ spacings against the numpy twins and diffusers,
their options and errors, and every registered sampler on every spacing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import diffkit
from diffkit.errors import ConfigError, UnknownNameError
from diffkit.schedules import SIGMA_SPACINGS, SPACINGS, TIMESTEP_SPACINGS, spacing_options
from diffkit_reference import spacing as ref
from tests.analytic_models import ExactVPModel
from tests.sweeps import SCHEDULES, conforming_samplers

SIX = ("leading", "trailing", "linspace", "karras", "exponential", "logsnr_uniform")


def build(name: str = "linear", rescale: bool = False, **config):
    return diffkit.build("schedule", name, rescale_zero_terminal_snr=rescale, **config)


def table_ends(schedule) -> tuple[float, float]:
    return float(schedule.sigmas[0]), float(schedule.sigmas[-1])


# -- the registry ----------------------------------------------------------------------------


def test_one_registry_lists_all_six_spacings_and_their_options():
    assert set(SIX) <= set(SPACINGS)  # the registry, sorted by name; plugins may add more
    assert all(diffkit.get_entry("spacing", name).origin.builtin for name in SIX)
    # and "diffusers": the grids of diffusers' schedulers, by their config keys (tests/integrations)
    assert set(TIMESTEP_SPACINGS) | set(SIGMA_SPACINGS) | {"diffusers"} == set(SPACINGS)
    assert not set(TIMESTEP_SPACINGS) & set(SIGMA_SPACINGS)
    assert spacing_options("leading") == ("steps_offset",)
    assert spacing_options("trailing") == spacing_options("linspace") == ()
    assert spacing_options("karras") == ("rho", "sigma_min", "sigma_max")
    assert spacing_options("exponential") == spacing_options("logsnr_uniform") == ("sigma_min", "sigma_max")


@pytest.mark.parametrize("spacing", SIX)
@pytest.mark.parametrize("name, rescale", [("linear", False), ("cosine", False), ("scaled_linear", True)])
def test_every_spacing_gives_a_valid_grid(spacing, name, rescale):
    schedule = build(name, rescale)
    for steps in (1, 2, 7, 50, 1000):
        sigmas = schedule.sigmas_for(steps, spacing)
        assert sigmas.dtype == torch.float64 and sigmas.device.type == "cpu" and sigmas.shape == (steps + 1,)
        assert sigmas[-1] == 0 and bool((sigmas[1:] < sigmas[:-1]).all()) and bool(torch.isfinite(sigmas).all())
        low, high = table_ends(schedule)
        assert low <= float(sigmas[-2]) and float(sigmas[0]) <= high
        # the model sees fractional timesteps inside the table, decreasing
        t = schedule.sigma_to_t(sigmas[:-1])
        assert 0 <= float(t.min()) and float(t.max()) <= schedule.num_train_timesteps - 1
        assert steps == 1 or bool((t[1:] < t[:-1]).all())


# -- σ spacings against the numpy twins ------------------------------------------------------


@st.composite
def sigma_spacing_cases(draw):
    name, rescale = draw(st.sampled_from(SCHEDULES)), draw(st.booleans())
    schedule = build(name, rescale, num_train_timesteps=draw(st.integers(2, 1500)))
    spacing = draw(st.sampled_from(sorted(SIGMA_SPACINGS)))
    steps = draw(st.one_of(st.integers(1, 60), st.integers(61, 3000)))
    options = {}
    if spacing == "karras" and draw(st.booleans()):
        options["rho"] = draw(st.floats(0.2, 50.0))
    if draw(st.booleans()):  # a user σ range, inside or outside the table
        low = draw(st.floats(1e-4, 10.0))
        options["sigma_min"], options["sigma_max"] = low, low * draw(st.floats(1.5, 1e4))
    return schedule, spacing, steps, options


@given(sigma_spacing_cases())
def test_sigma_spacings_match_the_reference_and_the_invariants(case):
    schedule, spacing, steps, options = case
    sigmas = schedule.sigmas_for(steps, spacing, **options)
    table_low, table_high = table_ends(schedule)
    low, high = options.get("sigma_min", table_low), options.get("sigma_max", table_high)
    rho = options.get("rho", 7.0)
    expected = ref.sigma_spacing(steps, spacing, low, high, rho)
    np.testing.assert_allclose(sigmas.numpy(), expected, rtol=reference_tolerance(spacing, rho), atol=0)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (steps + 1,) and sigmas[-1] == 0
    assert bool((sigmas[1:] < sigmas[:-1]).all())
    assert float(sigmas[0]) == high  # first = σ_max exactly
    assert steps == 1 or float(sigmas[-2]) == low  # last nonzero = σ_min exactly


def reference_tolerance(spacing: str, rho: float) -> float:
    """Relative tolerance: a few ulp of the base σ^{1/ρ}, ρ times larger in σ for Karras."""
    return 16 * max(rho, 1.0) * np.finfo(np.float64).eps if spacing == "karras" else 1e-13


@given(steps=st.integers(2, 200), low=st.floats(1e-3, 1.0), ratio=st.floats(2.0, 1e5))
def test_karras_with_rho_one_is_linear_in_sigma(steps, low, ratio):
    sigmas = build().sigmas_for(steps, "karras", rho=1.0, sigma_min=low, sigma_max=low * ratio)[:-1].numpy()
    np.testing.assert_allclose(np.diff(sigmas), (low - low * ratio) / (steps - 1), rtol=1e-9)


def test_karras_tends_to_exponential_as_rho_grows():
    schedule = build("scaled_linear")
    exponential = schedule.sigmas_for(20, "exponential")[:-1]
    gaps = [float((schedule.sigmas_for(20, "karras", rho=rho)[:-1] / exponential - 1).abs().max()) for rho in (7, 70, 700)]
    # the gap falls like 1/ρ: (1 − r)·a^{1/ρ} + r·b^{1/ρ} = exp(((1−r) log a + r log b)/ρ + O(ρ⁻²))
    assert gaps[0] > gaps[1] > gaps[2] and 8 < gaps[1] / gaps[2] < 12 and gaps[2] < 1e-2


def test_hand_checked_sigma_grids():
    schedule = build()
    # ρ = 1 on [1, 3]: linear → 3, 2, 1
    np.testing.assert_allclose(schedule.sigmas_for(3, "karras", rho=1, sigma_min=1, sigma_max=3).numpy(), [3, 2, 1, 0])
    # ρ = 2 on [1, 9]: (3 + r·(1 − 3))² → 9, 4, 1
    np.testing.assert_allclose(schedule.sigmas_for(3, "karras", rho=2, sigma_min=1, sigma_max=9).numpy(), [9, 4, 1, 0])
    for spacing in ("exponential", "logsnr_uniform"):  # geometric: 8, 4, 2, 1
        np.testing.assert_allclose(schedule.sigmas_for(4, spacing, sigma_min=1, sigma_max=8).numpy(), [8, 4, 2, 1, 0])
    for spacing in SIGMA_SPACINGS:  # one step: [σ_max, 0]
        assert schedule.sigmas_for(1, spacing).tolist() == [schedule.sigma_max, 0.0]


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("rescale", [False, True])
def test_logsnr_uniform_is_exponential_derived_independently_through_alpha_bar(name, rescale):
    """DPM-Solver's λ = log(α_t/σ_t) with α_t = √ᾱ, σ_t = √(1−ᾱ): uniform λ, back to σ = √((1−ᾱ)/ᾱ)."""
    schedule = build(name, rescale)
    abar = schedule.alphas_cumprod.numpy()
    abar_first = abar[0]
    abar_last = abar[-1] if abar[-1] > 0 else min(2.0**-24, abar[-2] / 2)  # the σ table's zero-SNR floor
    lam = lambda a: 0.5 * np.log(a) - 0.5 * np.log1p(-a)  # noqa: E731
    for steps in (1, 2, 10, 999):
        lambdas = np.linspace(lam(abar_last), lam(abar_first), steps) if steps > 1 else np.array([lam(abar_last)])
        abar_i = 1 / (1 + np.exp(-2 * lambdas))  # ᾱ = sigmoid(2λ)
        expected = np.sqrt((1 - abar_i) / abar_i)
        grid = schedule.sigmas_for(steps, "logsnr_uniform")
        np.testing.assert_allclose(grid[:-1].numpy(), expected, rtol=1e-9)
        # …and in σ form the logSNR grid *is* the exponential grid, bit for bit
        assert torch.equal(grid, schedule.sigmas_for(steps, "exponential"))


# -- options, steps and names: clear errors ----------------------------------------------------


def test_sigma_spacings_take_any_step_count():
    schedule = build(num_train_timesteps=100)
    assert schedule.sigmas_for(5000, "karras").shape == (5001,)
    with pytest.raises(ConfigError, match=r"1\.\.100"):  # timestep spacings stay capped at T
        schedule.sigmas_for(101, "trailing")


@pytest.mark.parametrize("spacing", sorted(SIGMA_SPACINGS))
@pytest.mark.parametrize("steps", [0, -1, 2.5, "10", True, None])
def test_bad_step_counts_for_sigma_spacings(spacing, steps):
    with pytest.raises(ConfigError, match="integer ≥ 1"):
        build().sigmas_for(steps, spacing)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"rho": 0}, "rho must be a positive finite number"),
        ({"rho": -7}, "rho must be"),
        ({"rho": math.nan}, "rho must be"),
        ({"rho": math.inf}, "rho must be"),
        ({"rho": "7"}, "rho must be"),
        ({"rho": True}, "rho must be"),
        ({"sigma_min": 0.0}, "sigma_min must be a positive finite number"),
        ({"sigma_min": -1.0}, "sigma_min must be"),
        ({"sigma_max": math.inf}, "sigma_max must be"),
        ({"sigma_max": math.nan}, "sigma_max must be"),
        ({"sigma_min": 5.0, "sigma_max": 1.0}, r"sigma_min \(5\) must be smaller than sigma_max \(1\)"),
        ({"sigma_min": 2.0, "sigma_max": 2.0}, "must be smaller"),
        ({"sigma_min": 500.0}, "must be smaller than sigma_max"),  # above the table's σ_max
    ],
)
def test_bad_sigma_options_are_clear_errors(options, message):
    spacing = "karras" if "rho" in options else "exponential"
    with pytest.raises(ConfigError, match=message):
        build().sigmas_for(10, spacing, **options)


def test_options_that_do_not_apply_name_the_valid_ones():
    schedule = build()
    with pytest.raises(ConfigError, match=r"'leading' has no option 'rho' \(valid options: steps_offset\); 'rho' only applies to 'karras'"):
        schedule.sigmas_for(10, "leading", rho=7.0)
    with pytest.raises(UnknownNameError, match=r"has no option 'steps_offset' .*only applies to .*'leading'"):
        schedule.sigmas_for(10, "karras", steps_offset=1)
    with pytest.raises(UnknownNameError, match=r"'exponential' has no option 'rho' \(valid options: sigma_min, sigma_max\)"):
        schedule.sigmas_for(10, "exponential", rho=7.0)
    with pytest.raises(UnknownNameError, match=r"did you mean 'rho'\?"):
        schedule.sigmas_for(10, "karras", rh0=7.0)
    with pytest.raises(UnknownNameError, match=r"valid options: none"):
        schedule.sigmas_for(10, "trailing", sigma_min=0.1)
    # steps_offset=0 is a no-op every spacing accepts (sample() and old callers pass it)
    assert torch.equal(schedule.sigmas_for(10, "karras", steps_offset=0), schedule.sigmas_for(10, "karras"))


def test_unknown_spacing_names_suggest_close_matches():
    with pytest.raises(UnknownNameError, match="did you mean 'karras'"):
        build().sigmas_for(10, "karas")
    with pytest.raises(UnknownNameError, match="did you mean 'exponential'"):
        build().sigmas_for(10, "exponentail")


def test_a_range_too_narrow_for_the_step_count_is_an_error():
    with pytest.raises(ConfigError, match="repeat a σ"):
        build().sigmas_for(50, "exponential", sigma_min=1.0, sigma_max=1.0 + 1e-14)


def test_timesteps_of_a_sigma_spacing_point_to_sigma_to_t():
    with pytest.raises(ConfigError, match="σ spacing.*sigma_to_t"):
        build().timesteps(10, "karras")


def test_zero_terminal_snr_uses_the_finite_table_end():
    schedule = build("scaled_linear", rescale=True)
    for spacing in SIGMA_SPACINGS:
        sigmas = schedule.sigmas_for(10, spacing)
        assert float(sigmas[0]) == schedule.sigma_max and math.isfinite(schedule.sigma_max) and schedule.sigma_max >= 4095


# -- side by side with diffusers ---------------------------------------------------------------

DIFFUSERS_BETAS = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2"}


def _peer(diffusers, cls, schedule, name, **config):
    """A diffusers scheduler on our float64 ᾱ table (zero-SNR floor included), so both take the same σ ends."""
    betas = {k: getattr(schedule, k) for k in ("beta_start", "beta_end") if hasattr(schedule, k)}
    peer = getattr(diffusers, cls)(beta_schedule=DIFFUSERS_BETAS[name], **betas, **config)
    peer.alphas_cumprod = 1 / (1 + schedule.sigmas.numpy() ** 2)  # float64 [T]
    return peer


@pytest.mark.parametrize("name", sorted(DIFFUSERS_BETAS))
@pytest.mark.parametrize("rescale", [False, True])
def test_sigma_spacings_match_diffusers(name, rescale):
    diffusers = pytest.importorskip("diffusers")
    schedule = build(name, rescale)
    cases = [
        ("EulerDiscreteScheduler", {"use_karras_sigmas": True}, "karras", {}),
        ("EulerDiscreteScheduler", {"use_exponential_sigmas": True}, "exponential", {}),
        ("EulerDiscreteScheduler", {"use_karras_sigmas": True, "sigma_min": 0.03, "sigma_max": 10.0}, "karras",
         {"sigma_min": 0.03, "sigma_max": 10.0}),
        ("EulerDiscreteScheduler", {"use_exponential_sigmas": True, "sigma_min": 0.05, "sigma_max": 7.0},
         "exponential", {"sigma_min": 0.05, "sigma_max": 7.0}),
        ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}, "karras", {}),
        ("DPMSolverMultistepScheduler", {"use_exponential_sigmas": True}, "exponential", {}),
        ("DPMSolverMultistepScheduler", {"use_lu_lambdas": True}, "logsnr_uniform", {}),
    ]
    for cls, config, spacing, options in cases:
        # N = 1: diffusers' Euler takes σ_min and σ_max from its 1-entry timestep grid [t = 0],
        # so its one step starts at σ_0 (no noise); diffkit starts at σ_max. Compared from N = 2.
        for steps in (2, 13, 50) if cls == "EulerDiscreteScheduler" else (1, 2, 13, 50):
            peer = _peer(diffusers, cls, schedule, name, rescale_betas_zero_snr=rescale, **config)
            peer.set_timesteps(steps)
            theirs = peer.sigmas.double().numpy()  # float32 values, final 0 included
            ours = schedule.sigmas_for(steps, spacing, **options).numpy()
            assert theirs.shape == ours.shape and theirs[-1] == 0, (cls, config, steps)
            np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=0, err_msg=f"{cls} {config} N={steps}")


# -- every registered sampler on every spacing -------------------------------------------------


@pytest.mark.parametrize("sampler", conforming_samplers())
@pytest.mark.parametrize("spacing", SIX)
@pytest.mark.parametrize("name, rescale", [("linear", False), ("scaled_linear", True)])
def test_every_sampler_runs_on_every_spacing(sampler, spacing, name, rescale):
    schedule = build(name, rescale)
    denoiser = diffkit.VPDenoiser(ExactVPModel(schedule, "v"), schedule, "v")  # ε cannot serve zero SNR
    out = diffkit.sample(denoiser, (2, 3), schedule=schedule, sampler=sampler, steps=4, spacing=spacing,
                         generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 3) and out.dtype == torch.float32
    assert bool(torch.isfinite(out).all()), f"{sampler} on {spacing} ({name}, zero SNR {rescale}): {out}"
