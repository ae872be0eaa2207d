"""The flow-matching objective: its time densities and weights against the float64 reference and
diffusers' SD3 training utilities, the loss it computes, and what minimises it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import diffkit
import diffkit_reference.flow as ref
from diffkit.errors import ConfigError, UnknownNameError
from diffkit.training.flow_objective import (
    FLOW_WEIGHTINGS,
    MODE_SCALE_MAX,
    flow_loss_weight,
    mode_time,
    sample_flow_times,
)
from diffkit.training.objectives import Objective, diffusion_loss

T_MIN = 1e-3


def flow_schedule(**config):
    return diffkit.build("schedule", "flow", **config)


def ks_distance(samples: np.ndarray, cdf) -> float:
    """sup |F_n − F| of the empirical CDF of ``samples`` against ``cdf``."""
    x = np.sort(samples)
    n = len(x)
    f = cdf(x)
    return float(max(np.max(np.arange(1, n + 1) / n - f), np.max(f - np.arange(n) / n)))


# -- the reference ----------------------------------------------------------------------------


@given(scale=st.floats(-1.0, float(ref.MODE_SCALE_MAX)))
def test_mode_density_maps_the_unit_interval_onto_itself_decreasingly(scale):
    u = np.linspace(0, 1, 2001)
    t = ref.mode_time(u, scale)
    assert t[0] == pytest.approx(1.0) and t[-1] == pytest.approx(0.0, abs=1e-12)
    assert np.all(np.diff(t) <= 1e-12)
    np.testing.assert_allclose(1 - ref.mode_time(1 - u, scale), t, atol=1e-12)  # f(1 − u) = 1 − f(u): symmetric law


def test_mode_scale_bound_is_where_monotonicity_ends():
    """f'(u) = −1 − s + (sπ/2)·sin(πu) reaches 0 at u = ½ exactly when s = 2/(π − 2)."""
    u = np.array([0.5 - 1e-3, 0.5, 0.5 + 1e-3])
    above = ref.mode_time(u, ref.MODE_SCALE_MAX * 1.05)
    assert above[2] > above[1]  # no longer decreasing just past the bound
    assert MODE_SCALE_MAX == pytest.approx(ref.MODE_SCALE_MAX, rel=1e-15)


@given(mean=st.floats(-2, 2), std=st.floats(0.3, 2))
@settings(max_examples=20)
def test_logit_normal_density_is_a_density_and_the_law_of_sigmoid_of_a_normal(mean, std):
    t = np.linspace(1e-6, 1 - 1e-6, 200_001)
    assert np.trapezoid(ref.logit_normal_density(t, mean, std), t) == pytest.approx(1.0, abs=2e-3)
    # P(sigmoid(m + s·n) ≤ ½) = P(n ≤ −m/s)
    n = np.random.default_rng(0).standard_normal(100_000)
    share = np.mean(ref.logit_normal_time(n, mean, std) <= 0.5)
    assert share == pytest.approx(0.5 * math.erfc(mean / std / math.sqrt(2)), abs=0.01)


@given(t=st.floats(1e-4, 1.0), gamma=st.floats(0.1, 20))
def test_flow_weights_are_the_x0_space_weights_they_name(t, gamma):
    """|x̂0 − x0|² = t²·|v̂ − v|²: sigma_sqrt (1/t²) turns diffusers' preconditioned x0-space loss
    into the velocity loss, and min_snr weighs the velocity loss as min(SNR, γ)·|x̂0 − x0|² with
    SNR = ((1 − t)/t)²."""
    rng = np.random.default_rng(1)
    x0, eps, v_err = rng.standard_normal((3, 6))
    x_t = ref.flow_forward(x0, eps, t)
    v_hat = ref.flow_velocity(x0, eps) + v_err
    x0_err = np.sum((ref.x0_from_velocity(x_t, t, v_hat) - x0) ** 2)
    v_loss = np.sum(v_err**2)
    assert ref.flow_loss_weight(t, "sigma_sqrt") * x0_err == pytest.approx(v_loss, rel=1e-9)
    snr = ((1 - t) / t) ** 2
    assert ref.flow_loss_weight(t, "min_snr", gamma) * v_loss == pytest.approx(min(snr, gamma) * x0_err, rel=1e-9)


# -- diffkit against the reference and diffusers ------------------------------------------------


@pytest.mark.parametrize("weighting", FLOW_WEIGHTINGS)
def test_torch_weights_equal_the_reference(weighting):
    t = torch.linspace(T_MIN, 1, 101, dtype=torch.float64)
    ours = flow_loss_weight(t, weighting, 5.0, T_MIN).numpy()
    np.testing.assert_allclose(ours, ref.flow_loss_weight(t.numpy(), weighting, 5.0), rtol=1e-12)


@pytest.mark.parametrize("weighting", ["sigma_sqrt", "cosmap", "none"])
def test_weights_equal_diffusers_sd3_weighting(weighting):
    training_utils = pytest.importorskip("diffusers.training_utils")
    t = torch.linspace(0.01, 1, 100, dtype=torch.float64)
    theirs = training_utils.compute_loss_weighting_for_sd3(weighting, sigmas=t)
    torch.testing.assert_close(flow_loss_weight(t, weighting, 5.0, T_MIN), theirs.to(torch.float64), rtol=1e-6, atol=0)


def test_sigma_sqrt_stays_finite_at_t_zero():
    w = flow_loss_weight(torch.tensor([0.0, 0.5], dtype=torch.float64), "sigma_sqrt", 5.0, T_MIN)
    assert w.tolist() == pytest.approx([T_MIN**-2, 4.0])


@pytest.mark.parametrize("scale", [-1.0, 0.0, 1.29, float(MODE_SCALE_MAX)])
def test_torch_mode_time_equals_the_reference(scale):
    r = torch.linspace(0, 1, 1001, dtype=torch.float64)
    np.testing.assert_allclose(mode_time(r, scale).numpy(), np.clip(ref.mode_time(r.numpy(), scale), 0, 1), atol=1e-15)


N_DRAWS = 20_000
KS_BOUND = 1.95 / math.sqrt(N_DRAWS)  # Kolmogorov's distribution: P(√n·D > 1.95) ≈ 1e-3


def _times(shift: float = 1.0, **objective) -> np.ndarray:
    g = torch.Generator().manual_seed(7)
    return sample_flow_times(
        Objective(prediction="flow", **objective), flow_schedule(shift=shift), N_DRAWS, g
    ).numpy()


def test_uniform_times_are_uniform_then_shifted():
    """t = shift(u) with u ~ U(0, 1): P(t ≤ x) = shift⁻¹(x) = x/(s − (s − 1)·x)."""
    s = 3.0
    assert ks_distance(_times(s, timesteps="uniform"), lambda x: x / (s - (s - 1) * x)) < KS_BOUND


@pytest.mark.parametrize(("mean", "std"), [(0.0, 1.0), (0.8, 0.6), (-0.5, 1.5)])
def test_logit_normal_times_have_sd3s_law(mean, std):
    from scipy.stats import norm

    t = _times(timesteps="logit_normal", logit_mean=mean, logit_std=std)
    assert ks_distance(t, lambda x: norm.cdf((np.log(x / (1 - x)) - mean) / std)) < KS_BOUND


@pytest.mark.parametrize("scale", [0.5, 1.29])
def test_mode_times_have_sd3s_law(scale):
    """t = f(r) decreasing, so P(t ≤ x) = 1 − f⁻¹(x); f⁻¹ by bisection on the reference."""

    def cdf(x: np.ndarray) -> np.ndarray:
        low, high = np.zeros_like(x), np.ones_like(x)
        for _ in range(60):
            mid = (low + high) / 2
            above = ref.mode_time(mid, scale) > x  # f(mid) > x: the root lies right of mid
            low, high = np.where(above, mid, low), np.where(above, high, mid)
        return 1 - (low + high) / 2

    assert ks_distance(_times(timesteps="mode", mode_scale=scale), cdf) < KS_BOUND


def test_diffusers_training_recipe_flips_the_logit_mean():
    """diffusers' SD3/Flux training scripts index the scheduler's descending timesteps with ⌊u·T⌋
    (u = compute_density_for_timestep_sampling), so their t is 1 − u on the table: logit_mean m
    acts as −m there. SD3 (eq. 19, t → 1 noise) and diffkit put more noisy t for m > 0."""
    diffusers = pytest.importorskip("diffusers")
    from diffusers.training_utils import compute_density_for_timestep_sampling

    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0)
    g = torch.Generator().manual_seed(0)
    u = compute_density_for_timestep_sampling("logit_normal", N_DRAWS, logit_mean=1.0, logit_std=1.0, generator=g)
    indices = (u * scheduler.config.num_train_timesteps).long()
    theirs = scheduler.sigmas[indices].numpy()  # flow t, as their scripts read it
    ours = _times(timesteps="logit_normal", logit_mean=1.0, logit_std=1.0)
    assert np.median(ours) == pytest.approx(1 / (1 + math.exp(-1)), abs=0.01)
    assert np.median(theirs) == pytest.approx(1 / (1 + math.exp(1)), abs=0.01)
    assert np.median(ours) + np.median(theirs) == pytest.approx(1.0, abs=0.01)


def test_dynamic_shift_trains_unshifted_as_diffusers_does():
    g = torch.Generator().manual_seed(1)
    objective = Objective(prediction="flow")
    dynamic = sample_flow_times(objective, flow_schedule(use_dynamic_shifting=True), 1000, g).numpy()
    assert ks_distance(dynamic, lambda x: x) < 1.95 / math.sqrt(1000)


# -- the loss ---------------------------------------------------------------------------------


class Recorder(torch.nn.Module):
    """A network returning ``value(x_t, t)`` and keeping what it was called with."""

    def __init__(self, value=None):
        super().__init__()
        self.value = value or (lambda x, t: torch.zeros_like(x))
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x, t, cond=None):
        self.calls.append((x.clone(), t.clone()))
        return self.value(x, t)


@pytest.mark.parametrize("weighting", FLOW_WEIGHTINGS)
def test_the_loss_is_the_weighted_velocity_error_on_the_flow_path(weighting):
    """Replaying the generator gives t and ε: the network saw x_t = (1 − t)·x0 + t·ε at t·T, and the
    loss is mean_b w(t_b)·mean((F − (ε − x0))²)."""
    schedule = flow_schedule(shift=3.0)
    objective = Objective(prediction="flow", timesteps="logit_normal", weighting=weighting)
    x0 = torch.randn(6, 2, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    net = Recorder(lambda x, t: 0.3 * x)
    loss, parts = diffusion_loss(net, x0, None, schedule, objective, generator=torch.Generator().manual_seed(5))
    replay = torch.Generator().manual_seed(5)
    t = sample_flow_times(objective, schedule, 6, replay)
    eps = torch.randn(x0.shape, generator=replay, dtype=x0.dtype)
    x_t = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * eps
    seen_x, seen_t = net.calls[0]
    torch.testing.assert_close(seen_x, x_t, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(seen_t, (t * 1000).float())
    weight = torch.from_numpy(ref.flow_loss_weight(t.numpy().clip(float(schedule.train_t[0]), None)
                                                   if weighting == "sigma_sqrt" else t.numpy(), weighting))
    expected = (weight * (0.3 * x_t - (eps - x0)).pow(2).flatten(1).mean(1)).mean()
    assert float(loss) == pytest.approx(float(expected), rel=1e-10)
    assert float(parts["mse"]) == float(loss)


def _gaussian_velocity(std: float):
    """E[ε − x0 | x_t] for x0 ~ N(0, std²·I): x0̂ = (1 − t)·std²·x_t / ((1 − t)²·std² + t²), ε̂ = (x_t − (1 − t)·x0̂)/t."""

    def velocity(x_t, time):
        t = (time.to(x_t.dtype) / 1000).view(-1, *([1] * (x_t.ndim - 1)))
        x0_hat = (1 - t) * std**2 * x_t / ((1 - t) ** 2 * std**2 + t**2)
        eps_hat = (x_t - (1 - t) * x0_hat) / t
        return eps_hat - x0_hat

    return velocity


@pytest.mark.parametrize("weighting", ["none", "cosmap"])
def test_the_exact_conditional_velocity_minimises_the_expected_loss(weighting):
    """The minimiser of E|F − v|² over functions of (x_t, t) is E[v | x_t]: every perturbation of it,
    in any direction, raises the loss (same draws for all)."""
    std = 0.7
    x0 = std * torch.randn(4096, 1, 2, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    schedule = flow_schedule(shift=2.0)
    objective = Objective(prediction="flow", timesteps="uniform", weighting=weighting)
    exact = _gaussian_velocity(std)

    def loss_of(net) -> float:
        return float(diffusion_loss(net, x0, None, schedule, objective, generator=torch.Generator().manual_seed(9))[0])

    best = loss_of(Recorder(exact))
    for change in (lambda x, t: 0.05 * x, lambda x, t: -0.05 * x, lambda x, t: torch.full_like(x, 0.05)):
        assert loss_of(Recorder(lambda x, t, c=change: exact(x, t) + c(x, t))) > best
    # and the exact velocity's loss is the irreducible one, well below a zero network's
    assert best < 0.8 * loss_of(Recorder())


# -- the Objective's options -------------------------------------------------------------------


def test_flow_options_are_checked_against_the_family():
    with pytest.raises(ConfigError, match="logit_normal, mode"):
        Objective(prediction="flow", timesteps="lognormal")
    with pytest.raises(ConfigError, match="valid: none, min_snr$"):
        Objective(prediction="v", weighting="cosmap")
    with pytest.raises(ConfigError, match="valid: uniform, lognormal$"):
        Objective(prediction="eps", timesteps="mode")
    with pytest.raises(ConfigError, match="mode_scale"):
        Objective(prediction="flow", timesteps="mode", mode_scale=2.0)
    with pytest.raises(ConfigError, match="logit_std"):
        Objective(prediction="flow", logit_std=0.0)
    with pytest.raises(UnknownNameError, match="logit_normal"):
        Objective(prediction="flow", timesteps="logitnormal")


def test_a_flow_objective_refuses_a_vp_schedule_and_back():
    x0 = torch.zeros(2, 1, 2, 2)
    with pytest.raises(ConfigError, match="prediction='flow' goes with the 'flow' schedule"):
        diffusion_loss(Recorder(), x0, None, diffkit.build("schedule", "cosine"), Objective(prediction="flow"))
    with pytest.raises(ConfigError, match="cannot train on a FlowSchedule"):
        diffusion_loss(Recorder(), x0, None, flow_schedule(), Objective(prediction="v"))
    with pytest.raises(ConfigError, match="learned variance"):
        diffusion_loss(Recorder(), x0, None, flow_schedule(), Objective(prediction="flow"), learned_variance=True)
