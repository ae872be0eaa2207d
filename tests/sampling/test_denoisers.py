"""The ε/x0/v and EDM adapters turn the exact network into the exact σ-form denoiser; zero terminal SNR."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import diffkit
import diffkit_reference as ref
from diffkit.errors import ConfigError, ShapeError, UnknownNameError
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


# -- VP parameterizations against the numpy reference -----------------------------------------


@given(prediction=st.sampled_from(["eps", "x0", "v"]), sigma=st.floats(1e-3, 1e3), seed=st.integers(0, 1000))
def test_vp_preconditioning_coefficients_agree_with_the_conversions(prediction, sigma, seed):
    """Reference cross-check: c_skip·y + c_out·o (Karras Table 1 form) = forward.py's conversions = VPDenoiser."""
    from diffkit_reference.parameterizations import vp_denoise, vp_preconditioning

    rng = np.random.default_rng(seed)
    y, output = rng.standard_normal((2, 3)) * (1 + sigma), rng.standard_normal((2, 3))
    sigmas = np.full(2, sigma)
    c_skip, c_out, c_in = vp_preconditioning(sigmas, prediction)
    from_coefficients = c_skip[:, None] * y + c_out[:, None] * output
    np.testing.assert_allclose(from_coefficients, vp_denoise(output, y, sigmas, prediction), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(c_in, np.sqrt(ref.alphas_cumprod_from_sigmas(sigmas)), rtol=1e-14)
    schedule = diffkit.build("schedule", "linear")
    ours = diffkit.VPDenoiser(lambda x_t, t: torch.from_numpy(output), schedule, prediction)
    out = ours(torch.from_numpy(y), torch.from_numpy(sigmas)).numpy()
    np.testing.assert_allclose(out, from_coefficients, rtol=1e-9, atol=1e-9)


# -- zero terminal SNR ----------------------------------------------------------------------------


def test_eps_prediction_on_a_zero_terminal_snr_schedule_is_a_config_error():
    schedule = diffkit.build("schedule", "scaled_linear", rescale_zero_terminal_snr=True)
    with pytest.raises(ConfigError, match=r"use prediction='v' or 'x0'"):
        diffkit.VPDenoiser(ExactVPModel(schedule, "eps"), schedule, "eps")
    diffkit.VPDenoiser(ExactVPModel(schedule, "eps"), diffkit.build("schedule", "scaled_linear"), "eps")  # fine without


@pytest.mark.parametrize("prediction", ["v", "x0"])
@pytest.mark.parametrize("sampler, steps", [("ddim", 100), ("ddpm", 250)])
def test_v_and_x0_sample_a_zero_terminal_snr_schedule_from_sigma_max(prediction, sampler, steps):
    schedule = diffkit.build("schedule", "scaled_linear", rescale_zero_terminal_snr=True)
    denoiser = diffkit.VPDenoiser(ExactVPModel(schedule, prediction), schedule, prediction)
    sigmas = schedule.sigmas_for(steps, "trailing")
    assert float(sigmas[0]) == schedule.sigma_max > 4000  # the first step is the terminal one (ᾱ = 0)
    out = diffkit.sample(denoiser, (4000, 1), schedule=schedule, sampler=sampler, steps=steps, spacing="trailing",
                         generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.isfinite(out).all()
    # N(0.3, 0.7²) data: standard errors 0.011 (mean) and 0.008 (std); ~4 SE plus the discretisation
    # bias (std −0.02 for DDIM at 100 steps and DDPM at 250; DDPM at 30 steps would give 0.62)
    assert abs(float(out.mean()) - 0.3) < 0.05 and abs(float(out.std()) - 0.7) < 0.05


def test_half_precision_at_the_terminal_sigma_keeps_the_v_prediction():
    """σ_max ≈ 4096 squares past fp16's range: the coefficients are computed in float32."""
    schedule = diffkit.build("schedule", "scaled_linear", rescale_zero_terminal_snr=True)
    denoiser = diffkit.VPDenoiser(lambda x_t, t: torch.full_like(x_t, -0.5), schedule, "v")
    sigma = schedule.sigmas[-1:].expand(2)
    out = denoiser(torch.zeros(2, 3, dtype=torch.float16), sigma)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), torch.full((2, 3), 0.5), rtol=1e-3, atol=1e-3)  # D ≈ −v̂ at σ → ∞


# -- EDM preconditioning ----------------------------------------------------------------------------


def exact_edm_network(sigma_data):
    """F* with D(y; σ) = c_skip y + c_out F*(c_in y; c_noise) the exact Gaussian denoiser."""

    def network(x_in, c_noise, cond=None):
        sigma = torch.exp(4 * c_noise).reshape(-1, *([1] * (x_in.ndim - 1)))
        c_skip, c_out, c_in, _ = diffkit.sampling.denoisers.edm_preconditioning(sigma, sigma_data)
        y = x_in / c_in
        return (denoiser_torch(y, sigma.reshape(-1)) - c_skip * y) / c_out

    return network


@given(sigma=st.floats(2e-3, 80.0), sigma_data=st.floats(0.1, 2.0), seed=st.integers(0, 1000))
def test_edm_with_the_exact_network_is_the_exact_denoiser(sigma, sigma_data, seed):
    denoiser = diffkit.sampling.denoisers.EDMDenoiser(exact_edm_network(sigma_data), sigma_data=sigma_data)
    sigmas = torch.full((3,), sigma, dtype=torch.float64)
    y = torch.randn(3, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * (1 + sigma)
    torch.testing.assert_close(denoiser(y, sigmas), denoiser_torch(y, sigmas), rtol=1e-9, atol=1e-9)


@given(sigma=st.floats(1e-4, 1e3), sigma_data=st.floats(0.05, 5.0))
def test_edm_coefficients_match_the_reference_and_table_1(sigma, sigma_data):
    from diffkit_reference.parameterizations import edm_loss_weight, edm_preconditioning

    ours = diffkit.sampling.denoisers.edm_preconditioning(torch.tensor([sigma], dtype=torch.float64), sigma_data)
    theirs = edm_preconditioning(np.array([sigma]), sigma_data)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a.numpy(), b, rtol=1e-13, atol=1e-300)
    c_skip, c_out, c_in, c_noise = theirs
    total = sigma**2 + sigma_data**2
    # unit input variance: Var[c_in·(x0 + σn)] = c_in²(σd² + σ²) = 1
    np.testing.assert_allclose(c_in**2 * total, 1.0, rtol=1e-13)
    # unit target variance: Var[(x0 − c_skip·y)/c_out] = ((1−c_skip)²σd² + c_skip²σ²)/c_out² = 1
    np.testing.assert_allclose(((1 - c_skip) ** 2 * sigma_data**2 + c_skip**2 * sigma**2) / c_out**2, 1.0, rtol=1e-10)
    # c_skip minimizes that target variance (c_out² is its minimum); λ(σ) = 1/c_out² (Table 1)
    target_var = lambda k: (1 - k) ** 2 * sigma_data**2 + k**2 * sigma**2  # noqa: E731
    assert target_var(c_skip) <= min(target_var(c_skip * 0.99), target_var(min(1.0, c_skip * 1.01)))
    np.testing.assert_allclose(target_var(c_skip), c_out**2, rtol=1e-10)
    np.testing.assert_allclose(edm_loss_weight(sigma, sigma_data), 1 / c_out**2, rtol=1e-12)
    np.testing.assert_allclose(c_noise, np.log(sigma) / 4, rtol=1e-14)


@pytest.mark.parametrize("sigma", [0.002, 0.5, 80.0])
def test_edm_unit_variance_holds_for_sampled_non_gaussian_data(sigma):
    """Monte Carlo on uniform data of std σd: network input and effective target have variance ≈ 1."""
    from diffkit_reference.parameterizations import edm_preconditioning, edm_training_target

    sigma_data, n = 0.5, 200_000
    rng = np.random.default_rng(0)
    x0 = rng.uniform(-1, 1, n) * sigma_data * np.sqrt(3)  # Var = σd², not Gaussian
    noise = rng.standard_normal(n)
    _, _, c_in, _ = edm_preconditioning(sigma, sigma_data)
    se = np.sqrt(2 / n) * 5  # relative standard error of a sample variance, 5 SE (uniform: smaller)
    assert abs(np.var(c_in * (x0 + sigma * noise)) - 1) < se
    assert abs(np.var(edm_training_target(x0, noise, np.full(n, sigma), sigma_data)) - 1) < se


def test_edm_calls_the_network_with_scaled_input_and_log_sigma():
    seen = []

    def network(x_in, c_noise, *cond):
        seen.append((x_in, c_noise, cond))
        return torch.zeros_like(x_in)

    denoiser = diffkit.sampling.denoisers.EDMDenoiser(network, sigma_data=0.5)
    y, sigma = torch.full((2, 3), 2.0, dtype=torch.float64), torch.tensor([0.5, 80.0], dtype=torch.float64)
    out = denoiser(y, sigma)
    torch.testing.assert_close(seen[0][0], y / (sigma**2 + 0.25).sqrt().reshape(-1, 1))
    torch.testing.assert_close(seen[0][1], sigma.log() / 4)
    assert seen[0][2] == ()
    torch.testing.assert_close(out, 0.25 / (sigma**2 + 0.25).reshape(-1, 1) * y)  # F = 0: D = c_skip·y
    denoiser(y, sigma, {"label": 1})
    assert seen[1][2] == ({"label": 1},)
    torch.testing.assert_close(denoiser(y, torch.zeros(2, dtype=torch.float64)), y)  # σ = 0: D = y, no NaN


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_edm_half_precision_keeps_dtype_without_nan(dtype):
    denoiser = diffkit.sampling.denoisers.EDMDenoiser(exact_edm_network(0.5))
    y = (torch.randn(4, 3, generator=torch.Generator().manual_seed(0)) * 80).to(dtype)
    out = denoiser(y, torch.tensor([80.0, 10.0, 0.1, 0.002], dtype=dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()


def test_edm_bad_config_and_shapes_are_clear_errors():
    EDM = diffkit.sampling.denoisers.EDMDenoiser
    for bad in (0.0, -1.0, math.inf, True, "0.5"):
        with pytest.raises(ConfigError, match="sigma_data"):
            EDM(lambda x, c: x, sigma_data=bad)
    with pytest.raises(ShapeError, match="EDM network F"):
        EDM(lambda x, c: x[:, :1])(torch.zeros(2, 3), torch.ones(2))
    with pytest.raises(ShapeError, match=r"sigma must have shape \[batch\]"):
        EDM(lambda x, c: x)(torch.zeros(2, 3), torch.ones(1))
