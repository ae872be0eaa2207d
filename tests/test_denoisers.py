"""The ε/x0/v adapters turn the exact VP network into the exact σ-form denoiser."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import diffkit
import diffkit_reference as ref
from diffkit.errors import ShapeError, UnknownNameError
from tests.analytic_models import ExactVPModel, denoiser_torch


@given(
    prediction=st.sampled_from(["eps", "x0", "v"]),
    schedule=st.sampled_from(["linear", "scaled_linear", "cosine", "sigmoid"]),
    t=st.integers(0, 999),
)
def test_every_parameterization_gives_the_exact_denoiser(prediction, schedule, t):
    schedule = diffkit.build("schedule", schedule)
    denoiser = diffkit.VPDenoiser(ExactVPModel(schedule, prediction), schedule, prediction)
    sigma = schedule.sigmas[t].expand(3)
    y = torch.randn(3, 2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(t)) * (1 + sigma[0])
    torch.testing.assert_close(denoiser(y, sigma), denoiser_torch(y, sigma), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_adapter_agrees_with_the_reference_conversions(prediction):
    """A constant network output o: D must be the reference's x0 given o as ε, x0 or v."""
    schedule = diffkit.build("schedule", "linear")
    output = torch.tensor([[0.25, -1.5]], dtype=torch.float64)
    denoiser = diffkit.VPDenoiser(lambda x_t, t: output.expand_as(x_t), schedule, prediction)
    t = 417
    abar = float(schedule.alphas_cumprod[t])
    y = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    x_t = (y * abar**0.5).numpy()
    expected = {
        "eps": lambda: ref.x0_from_eps(x_t, output.numpy(), abar),
        "x0": lambda: output.numpy(),
        "v": lambda: ref.x0_from_v(x_t, output.numpy(), abar),
    }[prediction]()
    np.testing.assert_allclose(denoiser(y, schedule.sigmas[t].reshape(1)).numpy(), expected, rtol=1e-12)


def test_the_network_sees_the_vp_input_and_the_matching_timestep():
    schedule = diffkit.build("schedule", "linear")
    seen = {}

    def model(x_t, t):
        seen.update(x_t=x_t, t=t)
        return torch.zeros_like(x_t)

    y = torch.full((2, 3), 5.0, dtype=torch.float64)
    diffkit.VPDenoiser(model, schedule)(y, schedule.sigmas[[10, 700]])
    abar = schedule.alphas_cumprod[[10, 700]].reshape(2, 1)
    torch.testing.assert_close(seen["x_t"], y * abar.sqrt())  # x_t = √ᾱ·y (c_in = 1/√(1+σ²))
    torch.testing.assert_close(seen["t"], torch.tensor([10.0, 700.0], dtype=torch.float64))
    diffkit.VPDenoiser(model, schedule, quantize=True)(y, schedule.t_to_sigma(torch.tensor([10.4, 699.6])))
    assert seen["t"].dtype == torch.int64 and seen["t"].tolist() == [10, 700]


def test_conditioning_is_passed_to_the_network_only_when_given():
    schedule = diffkit.build("schedule", "linear")
    calls = []
    denoiser = diffkit.VPDenoiser(lambda x_t, t, *cond: calls.append(cond) or torch.zeros_like(x_t), schedule)
    denoiser(torch.zeros(1, 2), torch.ones(1))
    denoiser(torch.zeros(1, 2), torch.ones(1), {"label": 3})
    assert calls == [(), ({"label": 3},)]


def test_v_prediction_on_a_zero_terminal_snr_schedule_samples_finite_values():
    schedule = diffkit.build("schedule", "scaled_linear", rescale_zero_terminal_snr=True)
    denoiser = diffkit.VPDenoiser(ExactVPModel(schedule, "v"), schedule, "v")
    out = diffkit.sample(denoiser, (64, 2), schedule=schedule, sampler="ddim", steps=30, spacing="trailing",
                         generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.isfinite(out).all()
    assert abs(float(out.mean()) - 0.3) < 0.1  # data mean μ = 0.3 (64·2 samples, std 0.7)


def test_bad_prediction_and_shapes_are_clear_errors():
    schedule = diffkit.build("schedule", "linear")
    with pytest.raises(UnknownNameError, match="did you mean 'eps'"):
        diffkit.VPDenoiser(lambda x, t: x, schedule, "epsilon")
    denoiser = diffkit.VPDenoiser(lambda x, t: x[:, :1], schedule)
    with pytest.raises(ShapeError, match="must return a tensor shaped like its input"):
        denoiser(torch.zeros(2, 3), torch.ones(2))
    with pytest.raises(ShapeError, match=r"sigma must have shape \[batch\]"):
        diffkit.VPDenoiser(lambda x, t: x, schedule)(torch.zeros(2, 3), torch.ones(3))
