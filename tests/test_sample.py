"""``diffkit.sample`` end to end: noise, σ grid, sampler, with exact models."""

from __future__ import annotations

import pytest
import torch

import diffkit
from diffkit.errors import ConfigError, UnknownNameError
from tests.analytic_models import MU, S, ExactVPModel


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
