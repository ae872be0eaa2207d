"""Learned variance (Nichol & Dhariwal 2021, eq. 15): adapter, DDPM sampler, numpy twin."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import diffkit
import diffkit_reference as ref
from diffkit.errors import ConfigError, ShapeError
from diffkit.samplers import ddpm
from diffkit.sampling.guidance import CFGDenoiser
from diffkit_reference.parameterizations import learned_variance_frac
from tests.analytic_models import ExactVPModel, denoiser_numpy
from tests.sweeps import SCHEDULES, SPACINGS


def v_raw_of(x_t):
    """The network's variance channels: any smooth function of its input, in [−1, 1]."""
    return np.tanh(x_t) if isinstance(x_t, np.ndarray) else torch.tanh(x_t)


class LearnedVarianceModel(torch.nn.Module):
    """2C channels: the exact ε/x0/v prediction, then v_raw = tanh(x_t) (or a constant)."""

    def __init__(self, schedule, prediction="eps", v_raw=None):
        super().__init__()
        self.exact = ExactVPModel(schedule, prediction)
        self.v_raw = v_raw

    def forward(self, x_t, t, cond=None):
        v = v_raw_of(x_t) if self.v_raw is None else torch.full_like(x_t, self.v_raw)
        if cond is not None:
            v = v + 0 * cond.reshape(-1, *([1] * (x_t.ndim - 1)))  # same variance for every label
        pred = self.exact(x_t.double(), t).to(x_t.dtype)  # exact in float64, then the input's dtype
        return torch.cat([pred, v], dim=1)


def twin_denoiser(y, sigma, cond=None):
    """(x0, frac) in numpy: the exact x0 and frac = (tanh(x_t) + 1)/2 at x_t = y/√(1+σ²)."""
    x_t = y / np.sqrt(1 + sigma**2).reshape(-1, *([1] * (y.ndim - 1)))
    return denoiser_numpy(y, sigma), learned_variance_frac(v_raw_of(x_t))


def feeder(noises, as_torch):
    it = iter(noises)
    return (lambda s, sn: torch.from_numpy(next(it))) if as_torch else (lambda s, sn: next(it))


def noises_for(shape, count, seed):
    g = np.random.default_rng(seed)
    return [g.standard_normal(shape) for _ in range(count)]


@given(
    schedule=st.sampled_from(SCHEDULES),
    spacing=st.sampled_from(SPACINGS),
    steps=st.integers(1, 40),
    prediction=st.sampled_from(["eps", "x0", "v"]),
    seed=st.integers(0, 2**16),
)
def test_learned_ddpm_matches_the_vp_reference(schedule, spacing, steps, prediction, seed):
    schedule = diffkit.build("schedule", schedule)
    model = LearnedVarianceModel(schedule, prediction)
    denoiser = diffkit.VPDenoiser(model, schedule, prediction, learned_variance=True)
    sigmas = schedule.sigmas_for(steps, spacing)
    x = np.random.default_rng(seed).standard_normal((3, 2, 4)) * float(sigmas[0])
    noises = noises_for(x.shape, steps, seed + 1)
    ours = ddpm(denoiser, torch.from_numpy(x), sigmas, variance="learned", noise_sampler=feeder(noises, True))
    theirs = ref.ddpm_sample(twin_denoiser, x, sigmas.numpy(), variance="learned", noise_sampler=feeder(noises, False))
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("v_raw, fixed", [(-1.0, "small"), (1.0, "large")])
def test_frac_0_is_small_and_frac_1_is_large_with_the_same_noise(v_raw, fixed):
    schedule = diffkit.build("schedule", "cosine")
    learned = diffkit.VPDenoiser(LearnedVarianceModel(schedule, v_raw=v_raw), schedule, learned_variance=True)
    sigmas = schedule.sigmas_for(25, "trailing")
    x = torch.randn(64, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * sigmas[0]
    out_learned = ddpm(learned, x, sigmas, variance="learned", generator=torch.Generator().manual_seed(2))
    out_fixed = ddpm(learned, x, sigmas, variance=fixed, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out_learned, out_fixed, rtol=1e-10, atol=1e-10)
    # the twin: frac = 0 / 1 gives ddpm_step's "small" / "large"
    noises = noises_for(tuple(x.shape), 25, 3)
    frac = learned_variance_frac(v_raw)
    twin = ref.ddpm_sample(
        lambda y, s, c: (denoiser_numpy(y, s), np.full_like(y, frac)), x.numpy(), sigmas.numpy(),
        variance="learned", noise_sampler=feeder(noises, False),
    )
    fixed_twin = ref.ddpm_sample(
        denoiser_numpy, x.numpy(), sigmas.numpy(), variance=fixed, noise_sampler=feeder(noises, False)
    )
    np.testing.assert_allclose(twin, fixed_twin, rtol=1e-10, atol=1e-10)


def test_the_step_variance_is_the_log_interpolation_statistically():
    """One step σ → σ' from a fixed y: Var[y'] = Σ·(1+σ'²), Σ = exp(f log β + (1−f) log β̃)."""
    schedule = diffkit.build("schedule", "linear")
    v_raw = -0.4  # frac = 0.3
    denoiser = diffkit.VPDenoiser(LearnedVarianceModel(schedule, v_raw=v_raw), schedule, learned_variance=True)
    t, t_next = 500, 400
    sigmas = torch.stack([schedule.sigmas[t], schedule.sigmas[t_next], schedule.sigmas[0]])
    sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
    n = 20000
    x = torch.full((n, 1), 1.5, dtype=torch.float64)
    seen = []
    ddpm(denoiser, x, sigmas, variance="learned", generator=torch.Generator().manual_seed(0),
         callback=lambda info: seen.append(info["x"]))
    y_next = seen[1].squeeze(1)  # the state entering the second step: after the first
    abar, abar_prev = float(schedule.alphas_cumprod[t]), float(schedule.alphas_cumprod[t_next])
    beta = 1 - abar / abar_prev
    beta_tilde = (1 - abar_prev) / (1 - abar) * beta
    frac = (v_raw + 1) / 2
    expected = math.exp(frac * math.log(beta) + (1 - frac) * math.log(beta_tilde)) / abar_prev  # σ form: ÷ ᾱ'
    var = float(y_next.var())
    # sample variance of n normals: relative SE √(2/n) ≈ 1%; 5 SE
    assert abs(var / expected - 1) < 5 * math.sqrt(2 / n), (var, expected)
    assert beta_tilde / abar_prev < var < beta / abar_prev  # strictly between "small" and "large"


def test_no_log_of_zero_and_no_noise_on_the_last_step():
    schedule = diffkit.build("schedule", "scaled_linear", rescale_zero_terminal_snr=True)
    denoiser = diffkit.VPDenoiser(LearnedVarianceModel(schedule, "v"), schedule, "v", learned_variance=True)
    sigmas = schedule.sigmas_for(10, "trailing")  # starts at σ_max ≥ 4096, ends with a step into σ = 0
    calls, g = [], torch.Generator().manual_seed(0)

    def noise(sigma, sigma_next):
        calls.append(sigma_next)
        return torch.randn(256, 2, dtype=torch.float64, generator=g)

    x = torch.randn(256, 2, dtype=torch.float64, generator=g) * sigmas[0]
    out = ddpm(denoiser, x, sigmas, variance="learned", noise_sampler=noise)
    assert torch.isfinite(out).all()
    assert len(calls) == 9 and all(s > 0 for s in calls)  # never for the step into 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_keeps_its_dtype_without_nan(dtype):
    schedule = diffkit.build("schedule", "linear")
    denoiser = diffkit.VPDenoiser(LearnedVarianceModel(schedule, "eps"), schedule, learned_variance=True)
    sigmas = schedule.sigmas_for(20)
    x = (torch.randn(8, 2, 4, generator=torch.Generator().manual_seed(0)) * sigmas[0].float()).to(dtype)
    out = ddpm(denoiser, x, sigmas, variance="learned", generator=torch.Generator().manual_seed(1))
    assert out.dtype == dtype and torch.isfinite(out).all()


def test_reruns_with_the_same_generator_are_bit_identical():
    schedule = diffkit.build("schedule", "linear")
    denoiser = diffkit.VPDenoiser(LearnedVarianceModel(schedule), schedule, learned_variance=True)
    sigmas = schedule.sigmas_for(15)
    x = torch.randn(4, 2, 3) * sigmas[0].float()
    runs = [ddpm(denoiser, x, sigmas, variance="learned", generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(*runs)


def test_the_adapter_splits_the_channels_and_maps_v_raw_to_frac():
    schedule = diffkit.build("schedule", "linear")
    output = torch.tensor([[[0.5], [-2.0], [0.2], [-1.0]]], dtype=torch.float64)  # [B=1, 2C=4, 1]
    denoiser = diffkit.VPDenoiser(lambda x_t, t: output, schedule, "x0", learned_variance=True)
    y, sigma = torch.zeros(1, 2, 1, dtype=torch.float64), schedule.sigmas[100].reshape(1)
    x0, frac = denoiser.forward_with_variance(y, sigma)
    torch.testing.assert_close(x0, output[:, :2])  # the first C channels
    torch.testing.assert_close(frac, torch.tensor([[[0.6], [0.0]]], dtype=torch.float64))  # (v_raw + 1)/2
    torch.testing.assert_close(denoiser(y, sigma), output[:, :2])  # a plain call: x0 only


def test_errors_are_clear():
    schedule = diffkit.build("schedule", "linear")
    sigmas = schedule.sigmas_for(5)
    x = torch.randn(2, 2, 3, dtype=torch.float64)
    plain = lambda y, s, c=None: y  # noqa: E731 - a denoiser without forward_with_variance
    with pytest.raises(ConfigError, match="forward_with_variance"):
        ddpm(plain, x, sigmas, variance="learned")
    not_learned = diffkit.VPDenoiser(ExactVPModel(schedule, "eps"), schedule)
    with pytest.raises(ConfigError, match="learned_variance=True"):
        ddpm(not_learned, x, sigmas, variance="learned")
    wrong_channels = diffkit.VPDenoiser(ExactVPModel(schedule, "eps"), schedule, learned_variance=True)
    with pytest.raises(ShapeError, match="2C channels"):
        wrong_channels(x, sigmas[:1].expand(2))
    with pytest.raises(ConfigError, match="forward_with_variance"):  # CFG around a denoiser without it
        ddpm(CFGDenoiser(plain, 2.0, uncond=torch.zeros(1)), x, sigmas, variance="learned", cond=torch.ones(2))
    with pytest.raises(ValueError, match="pair"):
        ref.ddpm_sample(
            denoiser_numpy, x.numpy(), sigmas.numpy(), variance="learned", noise_sampler=lambda s, n: x.numpy()
        )


def test_guidance_passes_the_conditional_variance_through():
    """CFG guides the prediction channels and takes frac from the conditional branch (as DiT)."""
    schedule = diffkit.build("schedule", "linear")
    seen = []

    def model(x_t, t, label):
        seen.append(label.clone())
        pred = torch.zeros_like(x_t) + label.reshape(-1, 1, 1)  # x0 = the label
        v_raw = (label.reshape(-1, 1, 1) == 1).to(x_t.dtype) * 2 - 1 + torch.zeros_like(x_t)  # cond: +1, uncond: −1
        return torch.cat([pred, v_raw], dim=1)

    inner = diffkit.VPDenoiser(model, schedule, "x0", learned_variance=True)
    guided = CFGDenoiser(inner, 3.0, uncond=torch.tensor([0.0], dtype=torch.float64))
    x = torch.zeros(2, 1, 3, dtype=torch.float64)
    x0, frac = guided.forward_with_variance(x, schedule.sigmas[[10, 10]], torch.ones(2, dtype=torch.float64))
    assert len(seen) == 1 and seen[0].tolist() == [1, 1, 0, 0]  # one batched forward, [cond; uncond]
    torch.testing.assert_close(x0, torch.full_like(x, 3.0))  # 0 + 3·(1 − 0)
    torch.testing.assert_close(frac, torch.ones_like(x))  # the conditional branch's frac
    sigmas = schedule.sigmas_for(10)
    out = ddpm(guided, x + sigmas[0], sigmas, variance="learned", cond=torch.ones(2, dtype=torch.float64),
               generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()
