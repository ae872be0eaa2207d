"""diffkit.Pipeline with ``parameterization="flow"``: the flow schedule by default, the σ-form
denoiser it samples through (x0 = x_t − t·v), explicit grids, and the errors a mismatched
composition gets before any weight is built.

Save → load of a flow pipeline is in tests/test_pipeline.py (its ``dit+class_label(flow)``
composition); training and resume under flow in tests/training.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import diffkit
from diffkit.errors import ConfigError
from diffkit.pipeline import Pipeline
from diffkit.sampling.denoisers import FlowDenoiser
from diffkit.schedules.flow import FlowSchedule
from diffkit.training.objectives import Objective
from tests.model_helpers import perturb
from tests.test_pipeline import UNET

pytestmark = pytest.mark.usefixtures("one_thread")


def flow_pipeline(seed: int = 0, **changes: Any) -> Pipeline:
    """An unconditional tiny unet trained (here: perturbed) as a flow-matching velocity model."""
    options = {"backbone": ("unet", UNET), "parameterization": "flow", "default_steps": 4, **changes}
    return perturb(Pipeline(**options), scale=0.1, seed=seed)


def test_flow_parameterization_defaults_to_the_flow_schedule_and_a_flow_objective():
    pipe = flow_pipeline()
    assert isinstance(pipe.schedule, FlowSchedule) and pipe.schedule == diffkit.build("schedule", "flow")
    assert pipe.objective.prediction == "flow" and pipe.objective.timesteps == "uniform"
    assert isinstance(pipe.denoiser(), FlowDenoiser)
    assert not pipe.learned_variance
    # and the VP default is unchanged
    assert Pipeline(backbone=("unet", UNET)).schedule == diffkit.build("schedule", "linear")


def test_the_denoiser_is_x_t_minus_t_times_the_predicted_velocity():
    """D(y, σ) = x_t − t·F(x_t, t·T) with t = σ/(1 + σ), x_t = y/(1 + σ): the flow path in σ form."""
    pipe = flow_pipeline(schedule=("flow", {"shift": 3.0})).eval()
    g = torch.Generator().manual_seed(0)
    sigma = torch.tensor([0.05, 1.0, 30.0], dtype=torch.float64)
    y = torch.randn(3, *pipe.sample_shape, generator=g, dtype=torch.float64) * (1 + sigma.view(-1, 1, 1, 1))
    t = (sigma / (1 + sigma)).view(-1, 1, 1, 1)
    x_t = y / (1 + sigma.view(-1, 1, 1, 1))
    with torch.no_grad():
        velocity = pipe.backbone(x_t.float(), (t.flatten() * 1000).float()).double()
        got = pipe.denoiser()(y, sigma)
    torch.testing.assert_close(got, x_t - t * velocity, rtol=1e-5, atol=1e-5)


def test_sampling_starts_from_pure_noise_at_t_one():
    """The first network call sees x_t = ε (t = 1, time input T) — diffusers' flow start — not a finite-σ blend."""
    pipe = flow_pipeline(schedule=("flow", {"shift": 3.0})).eval()
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []
    forward = pipe.backbone.forward

    def recording(x, t, *args, **kwargs):
        calls.append((x.clone(), t.clone()))
        return forward(x, t, *args, **kwargs)

    pipe.backbone.forward = recording
    pipe.sample(2, generator=5, sampler="euler")
    noise = torch.randn(2, *pipe.sample_shape, generator=torch.Generator().manual_seed(5))
    first_x, first_t = calls[0]
    assert torch.allclose(first_t, torch.full_like(first_t, 1000.0))
    torch.testing.assert_close(first_x, noise, rtol=1e-6, atol=1e-6)


def test_an_explicit_grid_is_the_grid_a_spacing_names():
    pipe = flow_pipeline(schedule=("flow", {"shift": 3.0})).eval()
    default = pipe.sample(2, generator=1, sampler="euler")
    assert torch.equal(pipe.sample(2, generator=1, sampler="euler", sigmas=pipe.schedule.sigmas_for(4)), default)
    assert torch.equal(pipe.sample(2, generator=1, sampler="euler", sigmas=pipe.schedule.sigmas_for(4)[:-1]), default)
    karras = pipe.sample(2, generator=1, sampler="euler", spacing="karras", spacing_options={"rho": 5.0})
    grid = pipe.schedule.sigmas_for(4, "karras", rho=5.0)
    assert torch.equal(pipe.sample(2, generator=1, sampler="euler", sigmas=grid), karras)
    assert not torch.equal(karras, default)


def test_flux_dynamic_shift_takes_the_sequence_length_at_sample_time():
    pipe = flow_pipeline(schedule=("flow", {"use_dynamic_shifting": True})).eval()
    with pytest.raises(ConfigError, match="use_dynamic_shifting needs mu= or image_seq_len="):
        pipe.sample(1, generator=0)
    short = pipe.sample(1, generator=0, spacing_options={"image_seq_len": 256})
    long = pipe.sample(1, generator=0, spacing_options={"image_seq_len": 4096})
    assert torch.isfinite(short).all() and not torch.equal(short, long)
    grid = pipe.schedule.sigmas_for(4, mu=1.15)
    assert torch.equal(pipe.sample(1, generator=0, sigmas=grid), long)


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"steps": 3}, "without steps="),
        ({"spacing": "karras"}, "without steps=, spacing="),
        ({"spacing_options": {"rho": 7.0}}, "spacing_options="),
    ],
)
def test_sigmas_exclude_the_other_grid_arguments(extra, message):
    pipe = flow_pipeline()
    with pytest.raises(ConfigError, match=message):
        pipe.sample(1, sigmas=[5.0, 1.0, 0.0], **extra)


@pytest.mark.parametrize("sigmas", [[1.0, 5.0, 0.0], [5.0, float("nan"), 0.0], [], "karras"])
def test_bad_sigmas_are_refused_before_sampling(sigmas):
    pipe = flow_pipeline()
    pipe.backbone.forward = lambda *a, **k: pytest.fail("the network ran")
    with pytest.raises(ConfigError):
        pipe.sample(1, sigmas=sigmas)


def test_timestep_spacings_are_refused_on_the_flow_schedule_naming_the_valid_ones():
    with pytest.raises(ConfigError, match="'uniform'.*karras"):
        flow_pipeline().sample(1, spacing="trailing")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"schedule": "cosine"}, "parameterization='flow' goes with the 'flow' schedule"),
        ({"parameterization": "v", "schedule": "flow"}, "a flow schedule with parameterization='flow'"),
        ({"backbone": ("unet", {**UNET, "out_channels": 2})}, "learned variance, which a flow model does not have"),
        ({"parameterization": "v", "schedule": "cosine", "objective": {"weighting": "cosmap"}},
         "weighting='cosmap' is not a loss weighting of the VP 'v' target; valid: none, min_snr"),
        ({"objective": {"timesteps": "lognormal"}}, "not a time sampling of flow matching"),
        ({"objective": Objective(prediction="v")}, "differs from parameterization='flow'"),
    ],
    ids=["vp-schedule", "vp-prediction-on-flow", "learned-variance", "flow-weighting-on-vp", "vp-time-law", "objective"],
)
def test_mismatched_flow_compositions_are_refused(changes, message):
    options = {"backbone": ("unet", UNET), "parameterization": "flow", **changes}
    with pytest.raises(ConfigError, match=message):
        Pipeline(**options)


def test_the_flow_loss_trains_a_pipeline():
    """A few Adam steps on one batch lower the flow-matching loss (the loss reaches the weights)."""
    torch.manual_seed(0)
    pipe = flow_pipeline(objective={"timesteps": "logit_normal"})
    x0 = torch.rand(8, *pipe.sample_shape, generator=torch.Generator().manual_seed(2)) * 2 - 1
    optimizer = torch.optim.Adam(pipe.backbone.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        return pipe.loss(x0, generator=torch.Generator().manual_seed(3))[0]

    before = loss().item()
    for _ in range(15):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < 0.8 * before
