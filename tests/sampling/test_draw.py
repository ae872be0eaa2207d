"""``diffkit.sample`` end to end: noise, σ grid, sampler, with exact models."""

from __future__ import annotations

import pytest
import torch

import diffkit
from diffkit.errors import ConfigError, UnknownNameError
from tests.analytic_models import MU, ExactVPModel, S


def exact_denoiser(schedule_name="linear", prediction="eps"):
    schedule = diffkit.build("schedule", schedule_name)
    return diffkit.VPDenoiser(ExactVPModel(schedule, prediction), schedule, prediction)


@pytest.mark.parametrize("sampler, options", [("ddpm", {}), ("ddpm", {"variance": "large"}), ("ddim", {"eta": 1.0})])
def test_stochastic_samplers_reproduce_the_data_distribution(sampler, options):
    out = diffkit.sample(
        exact_denoiser(), (4000, 1), schedule="linear", sampler=sampler, steps=100,
        generator=torch.Generator().manual_seed(0), sampler_options=options, dtype=torch.float64,
    )
    # 4000 draws of N(0.3, 0.7²): standard errors 0.011 (mean) and 0.008 (std)
    assert abs(float(out.mean()) - MU) < 0.05
    assert abs(float(out.std()) - S) < 0.05


def test_deterministic_sampling_maps_noise_through_the_flow():
    out = diffkit.sample(exact_denoiser(prediction="v"), (4000, 1), schedule="linear", sampler="ddim",
                         steps=50, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert abs(float(out.mean()) - MU) < 0.05 and abs(float(out.std()) - S) < 0.05


def test_sample_accepts_objects_as_well_as_names():
    schedule = diffkit.build("schedule", "linear")
    sampler = diffkit.build("sampler", "ddim")
    a = diffkit.sample(exact_denoiser(), (2, 3), schedule=schedule, sampler=sampler, steps=10,
                       generator=torch.Generator().manual_seed(0))
    b = diffkit.sample(exact_denoiser(), (2, 3), schedule="linear", sampler="ddim", steps=10,
                       generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.dtype == torch.float32


def test_sample_binds_options_of_a_bare_sampler_function():
    from diffkit.samplers import ddim

    kwargs = dict(schedule="linear", steps=10, dtype=torch.float64)
    a = diffkit.sample(exact_denoiser(), (3, 2), sampler=ddim, sampler_options={"eta": 1.0},
                       generator=torch.Generator().manual_seed(0), **kwargs)
    b = diffkit.sample(exact_denoiser(), (3, 2), sampler="ddim", sampler_options={"eta": 1.0},
                       generator=torch.Generator().manual_seed(0), **kwargs)
    assert torch.equal(a, b)


def test_sample_errors_name_what_is_valid():
    with pytest.raises(UnknownNameError, match="did you mean 'ddim'"):
        diffkit.sample(exact_denoiser(), (1, 2), schedule="linear", sampler="ddin", steps=5)
    with pytest.raises(UnknownNameError, match="did you mean 'linear'"):
        diffkit.sample(exact_denoiser(), (1, 2), schedule="lineer", sampler="ddim", steps=5)
    with pytest.raises(ConfigError, match=r"1\.\.1000"):
        diffkit.sample(exact_denoiser(), (1, 2), schedule="linear", sampler="ddim", steps=0)
    with pytest.raises(ConfigError, match="positive sizes"):
        diffkit.sample(exact_denoiser(), (0, 2), schedule="linear", sampler="ddim", steps=5)
    with pytest.raises(UnknownNameError, match="'eta'"):
        diffkit.sample(exact_denoiser(), (1, 2), schedule="linear", sampler="ddim", steps=5,
                       sampler_options={"etaa": 1})


# -- choosing the σ grid: steps + spacing (+ options), sigmas=, timesteps= -------------------


def run(**kwargs):
    """One ddim run on the exact linear-schedule model from a fixed seed (float64)."""
    kwargs.setdefault("schedule", "linear")
    return diffkit.sample(exact_denoiser(), (3, 2), sampler="ddim", dtype=torch.float64,
                          generator=torch.Generator().manual_seed(0), **kwargs)


def test_spacing_options_reach_the_spacing():
    schedule = diffkit.build("schedule", "linear")
    grid = schedule.sigmas_for(10, "karras", rho=5.0, sigma_min=0.05)
    a = run(steps=10, spacing="karras", spacing_options={"rho": 5.0, "sigma_min": 0.05})
    assert torch.equal(a, run(sigmas=grid))
    assert not torch.equal(a, run(steps=10, spacing="karras"))  # ρ = 7 is another grid
    # steps_offset as an argument or as a spacing option: the same leading grid
    leading = run(steps=10, spacing="leading", steps_offset=1)
    assert torch.equal(leading, run(steps=10, spacing="leading", spacing_options={"steps_offset": 1}))
    assert torch.equal(leading, run(sigmas=schedule.sigmas_for(10, "leading", steps_offset=1)))
    with pytest.raises(ConfigError, match="only applies to .*'leading'"):  # the default is trailing
        run(steps=10, steps_offset=1)


def test_user_sigmas_get_their_final_zero_appended():
    a = run(sigmas=[80.0, 10.0, 1.0, 0.1])
    b = run(sigmas=torch.tensor([80.0, 10.0, 1.0, 0.1, 0.0], dtype=torch.float64))
    assert torch.equal(a, b)
    steps_seen = []
    diffkit.sample(exact_denoiser(), (1, 2), sampler="ddim", sigmas=[5.0, 1.0],
                   callback=lambda info: steps_seen.append(info["sigma"]))
    assert steps_seen == [5.0, 1.0]  # two steps: 5 → 1 → 0
    # no schedule is needed with explicit σ
    assert torch.isfinite(run(sigmas=[3.0, 0.5], schedule=None)).all()


def test_user_timesteps_use_the_schedule_table():
    schedule = diffkit.build("schedule", "linear")
    assert torch.equal(run(timesteps=[999, 500, 20]), run(sigmas=schedule.sigmas_from_timesteps([999, 500, 20])))
    with pytest.raises(ConfigError, match="strictly decreasing"):
        run(timesteps=[10, 500])


@pytest.mark.parametrize(
    "sigmas, message",
    [
        ([1.0, float("nan"), 0.0], r"finite and ≥ 0; sigmas\[1\] = nan"),
        ([float("inf"), 1.0], "finite"),
        ([1.0, -0.5], r"≥ 0; sigmas\[1\] = -0.5"),
        ([1.0, 2.0, 0.0], r"strictly decreasing, but sigmas\[0\] = 1.0 and sigmas\[1\] = 2.0"),
        ([2.0, 2.0, 0.0], "strictly decreasing"),
        ([2.0, 0.0, 0.0], "strictly decreasing"),
        ([1.0, 0.0, 0.5], "strictly decreasing"),
        ([0.0], "at least one positive noise level"),
        ([], "non-empty"),
        ([[2.0, 1.0, 0.0]], "1-D"),
        ("abc", "sequence of numbers"),
    ],
)
def test_bad_user_sigmas_are_clear_errors(sigmas, message):
    with pytest.raises(ConfigError, match=message):
        run(sigmas=sigmas)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"steps": 10, "sigmas": [1.0, 0.0]}, "exactly one of steps=.*got steps and sigmas"),
        ({"steps": 10, "timesteps": [9, 0]}, "got steps and timesteps"),
        ({"sigmas": [1.0, 0.0], "timesteps": [9, 0]}, "got sigmas and timesteps"),
        ({}, "exactly one of .*got none"),
        ({"sigmas": [1.0, 0.0], "spacing": "karras"}, "spacing only apply with steps="),
        ({"timesteps": [9, 0], "spacing_options": {"rho": 3}}, "spacing_options only apply with steps="),
        ({"sigmas": [1.0, 0.0], "steps_offset": 1}, "steps_offset only apply with steps="),
        ({"timesteps": [9, 0], "schedule": None}, "timesteps= needs a schedule"),
        ({"steps": 10, "schedule": None}, "steps= needs a schedule"),
        ({"steps": 10, "steps_offset": 1, "spacing_options": {"steps_offset": 1}}, "given twice"),
        ({"steps": 10, "spacing_options": [("rho", 3)]}, "must be a mapping"),
        ({"steps": 10, "spacing": "karras", "spacing_options": {"rhoo": 3}}, "did you mean 'rho'"),
        ({"steps": 10, "spacing": "trailing", "spacing_options": {"rho": 3}}, "only applies to 'karras'"),
        ({"steps": 10, "spacing": "karass"}, "did you mean 'karras'"),
    ],
)
def test_grid_arguments_are_checked(kwargs, message):
    with pytest.raises((ConfigError, UnknownNameError), match=message):
        run(**kwargs)


def test_sigma_spacings_are_not_capped_at_the_training_steps():
    out = run(steps=1500, spacing="exponential")
    assert abs(float(out.mean()) - MU) < 1 and torch.isfinite(out).all()


def test_defaults_are_unipc_on_a_trailing_grid():
    seen = []
    a = diffkit.sample(exact_denoiser(), (2, 3), schedule="linear", steps=8, dtype=torch.float64,
                       generator=torch.Generator().manual_seed(0), callback=lambda info: seen.append(info["sigma"]))
    b = diffkit.sample(exact_denoiser(), (2, 3), schedule="linear", steps=8, dtype=torch.float64,
                       sampler="unipc", spacing="trailing", generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    assert seen[0] == diffkit.build("schedule", "linear").sigma_max  # trailing starts at pure noise
