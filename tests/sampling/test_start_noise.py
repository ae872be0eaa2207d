"""Where sampling starts: ``diffkit.sample(noise=, start_noise=)`` and the path forms behind it.

The σ form y = x0 + σ·ε and a path's sample x_t name the same point; the forms are checked
against the float64 numpy reference's forward processes (``q_sample``, ``flow_forward``), and
the start rules against their definitions (diffkit.sampling.paths): ``"sigma"`` y_0 = σ_0·z,
``"path"`` z read as x_T on the schedule's path.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import diffkit
from diffkit.errors import ConfigError, ShapeError, UnknownNameError
from diffkit.sampling.paths import from_path_form, start_sample, to_path_form
from diffkit_reference import flow as flow_reference
from diffkit_reference import forward as vp_reference

sigmas = st.floats(min_value=1e-4, max_value=1e3)


@given(sigma=sigmas, seed=st.integers(0, 2**16))
def test_the_vp_form_is_the_reference_forward_process(sigma, seed):
    # q_sample: x_t = √ᾱ·x0 + √(1 − ᾱ)·ε with ᾱ = 1/(1 + σ²); y = x0 + σ·ε is the same point
    rng = np.random.default_rng(seed)
    x0, eps = rng.standard_normal(5), rng.standard_normal(5)
    x_t = vp_reference.q_sample(x0, eps, 1.0 / (1.0 + sigma * sigma))
    y = torch.from_numpy(x0 + sigma * eps)
    np.testing.assert_allclose(to_path_form(y, sigma, "vp").numpy(), x_t, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(from_path_form(torch.from_numpy(x_t), sigma, "vp").numpy(), y.numpy(),
                               rtol=1e-12, atol=1e-12 * (1 + sigma))


@given(sigma=sigmas, seed=st.integers(0, 2**16))
def test_the_flow_form_is_the_reference_forward_process(sigma, seed):
    # flow_forward: x_t = (1 − t)·x0 + t·ε with t = σ/(1 + σ)
    rng = np.random.default_rng(seed)
    x0, eps = rng.standard_normal(5), rng.standard_normal(5)
    x_t = flow_reference.flow_forward(x0, eps, float(flow_reference.t_from_sigma(sigma)))
    y = torch.from_numpy(x0 + sigma * eps)
    np.testing.assert_allclose(to_path_form(y, sigma, "flow").numpy(), x_t, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(from_path_form(torch.from_numpy(x_t), sigma, "flow").numpy(), y.numpy(),
                               rtol=1e-12, atol=1e-12 * (1 + sigma))


def test_the_start_rules():
    z = torch.randn(4, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(start_sample(z, 14.6, "sigma", "vp"), 14.6 * z)
    torch.testing.assert_close(start_sample(z, 14.6, "path", "vp"), z * math.sqrt(1 + 14.6**2), rtol=1e-15, atol=0)
    torch.testing.assert_close(start_sample(z, 3.0, "path", "flow"), z * 4.0, rtol=1e-15, atol=0)
    with pytest.raises(UnknownNameError, match="did you mean 'path'"):
        start_sample(z, 1.0, "pth", "vp")


class FirstInput:
    """A sampler that records the start it is given and returns it (no steps)."""

    def __init__(self) -> None:
        self.start: torch.Tensor | None = None
        self.sigma_0: float | None = None

    def __call__(self, denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
        self.start, self.sigma_0 = x.clone(), float(sigmas[0])
        return x


def start_of(schedule, **kwargs) -> tuple[torch.Tensor, float]:
    sampler = FirstInput()
    diffkit.sample(lambda x, s, c=None: x, (3, 2), sampler=sampler, schedule=schedule, steps=10,
                   dtype=torch.float64, **kwargs)
    return sampler.start, sampler.sigma_0


@pytest.mark.parametrize("schedule, factor", [("linear", lambda s: math.sqrt(1 + s * s)), ("flow", lambda s: 1 + s)])
def test_sample_starts_from_the_given_noise(schedule, factor):
    z = torch.randn(3, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    start, sigma_0 = start_of(schedule, noise=z)
    assert torch.equal(start, sigma_0 * z)  # "sigma", the default
    start, sigma_0 = start_of(schedule, noise=z, start_noise="path")
    torch.testing.assert_close(start, z * factor(sigma_0), rtol=1e-14, atol=0)
    # reading the start back onto the path gives z itself: diffusers' latents= is x_T
    torch.testing.assert_close(to_path_form(start, sigma_0, "flow" if schedule == "flow" else "vp"), z,
                               rtol=1e-14, atol=1e-14)


def test_noise_equal_to_the_generators_draw_gives_the_same_samples():
    schedule = diffkit.build("schedule", "linear")
    kwargs = {"schedule": schedule, "sampler": "ddim", "steps": 8, "dtype": torch.float64}

    def denoiser(x, sigma, cond=None):  # any smooth map
        return 0.5 * x / (1 + sigma.view(-1, 1) ** 2)

    drawn = diffkit.sample(denoiser, (3, 2), generator=torch.Generator().manual_seed(4), **kwargs)
    z = torch.randn(3, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    assert torch.equal(diffkit.sample(denoiser, (3, 2), noise=z, **kwargs), drawn)


def test_init_starts_from_the_clean_samples_noised_to_the_first_level():
    x0 = torch.randn(3, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z = torch.randn(3, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    start, sigma_0 = start_of("linear", noise=z, init=x0)
    torch.testing.assert_close(start, x0 + sigma_0 * z, rtol=1e-15, atol=0)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"start_noise": "pth"}, UnknownNameError, r"unknown start_noise 'pth'; did you mean 'path'\? \(valid: path, sigma\)"),
        ({"start_noise": None}, UnknownNameError, "unknown start_noise None"),
        ({"noise": torch.zeros(3, 3)}, ShapeError, r"noise has shape \[3, 3\]; the samples need \[3, 2\]"),
        ({"noise": torch.zeros(3, 2, dtype=torch.int64)}, ConfigError, "floating-point"),
        ({"noise": torch.full((3, 2), math.nan)}, ConfigError, "NaN"),
        ({"noise": [[0.0, 0.0]] * 3}, ConfigError, "noise must be a tensor"),
        ({"start_noise": "path", "schedule": None, "sigmas": [2.0, 1.0]}, ConfigError, "pass schedule="),
        ({"init": torch.zeros(3, 1)}, ShapeError, r"init has shape \[3, 1\]"),
        ({"init": torch.full((3, 2), math.inf)}, ConfigError, "init holds NaN or ±inf; pass finite clean samples x0"),
        ({"init": torch.zeros(3, 2), "start_noise": "path"}, ConfigError, "start_noise='path' does not apply"),
    ],
)
def test_bad_noise_and_start_rules_are_refused_before_any_step(kwargs, error, message):
    sampler = FirstInput()
    kwargs = {"schedule": "linear", "steps": 5, **kwargs}
    if "sigmas" in kwargs:
        del kwargs["steps"]
    with pytest.raises(error, match=message):
        diffkit.sample(lambda x, s, c=None: x, (3, 2), sampler=sampler, **kwargs)
    assert sampler.start is None
