"""Training objectives against the float64 reference: targets, Min-SNR-γ, σ sampling, the loss.

diffusion_loss draws σ and then ε from its generator (its docstring); the fake models below
replay those draws with an identically seeded generator, so the reference can compute the
exact x_t, target and loss of every sample, independently of the torch code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy import stats

import diffkit
import diffkit_reference as ref
from diffkit.errors import ConfigError, ShapeError, UnknownNameError
from diffkit.training.objectives import Objective, diffusion_loss, min_snr_weight, sample_sigmas, training_target
from tests.sweeps import SCHEDULES

seeds = st.integers(0, 2**31 - 1)
predictions = st.sampled_from(["eps", "x0", "v"])
schedule_specs = st.tuples(st.sampled_from(SCHEDULES), st.booleans())  # (name, zero terminal SNR)
SHAPE = (3, 2, 4, 4)  # [B, C, H, W]
GRID = np.linspace(-1.0, 1.0, 256)


def build_schedule(spec: tuple[str, bool], **config):
    name, zero_snr = spec
    return diffkit.build("schedule", name, rescale_zero_terminal_snr=zero_snr, **config)


def per_sample(values: np.ndarray, ndim: int) -> np.ndarray:
    return values.reshape(-1, *([1] * (ndim - 1)))


class Replay:
    """The σ, ε, x_t, t and target diffusion_loss uses for a generator seeded with ``seed``."""

    def __init__(self, objective: Objective, schedule, x0: torch.Tensor, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        sigma = sample_sigmas(objective, schedule, x0.shape[0], g)
        noise = torch.randn(x0.shape, generator=g, dtype=x0.dtype)
        self.sigma, self.noise, self.x0 = sigma.numpy(), noise.numpy(), x0.numpy()
        self.abar = per_sample(ref.alphas_cumprod_from_sigmas(self.sigma), x0.ndim)  # ᾱ = 1/(1+σ²)
        self.snr = 1 / self.sigma**2
        self.x_t = ref.q_sample(self.x0, self.noise, self.abar)
        self.t = schedule.sigma_to_t(sigma)
        self.target = ref.training_target(self.x0, self.noise, self.abar, objective.prediction)

    def weights(self, objective: Objective) -> np.ndarray:
        if objective.weighting == "none":
            return np.ones_like(self.sigma)
        return ref.min_snr_weight(self.snr, objective.prediction, objective.snr_gamma)

    def x0_hat(self, prediction: np.ndarray, kind: str) -> np.ndarray:
        if kind == "eps":
            return ref.x0_from_eps(self.x_t, prediction, self.abar)
        if kind == "x0":
            return prediction
        return ref.x0_from_v(self.x_t, prediction, self.abar)


class FakeModel:
    """Checks it is shown the replayed x_t and t, then returns ``output(replay)``."""

    def __init__(self, replay: Replay, output) -> None:
        self.replay, self.output, self.calls = replay, output, []

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, *cond) -> torch.Tensor:
        self.calls.append(cond)
        np.testing.assert_allclose(x_t.numpy(), self.replay.x_t, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(t, self.replay.t.float())
        return torch.as_tensor(self.output(self.replay))


objectives = st.builds(
    Objective,
    prediction=predictions,
    weighting=st.sampled_from(["none", "min_snr"]),
    snr_gamma=st.floats(0.5, 10.0),
    timesteps=st.sampled_from(["uniform", "lognormal"]),
)


# -- targets and weights ------------------------------------------------------------------


@given(seeds, predictions, st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3))
def test_training_target_matches_reference(seed, prediction, abars):
    rng = np.random.default_rng(seed)
    x0, eps = rng.standard_normal(SHAPE), rng.standard_normal(SHAPE)
    abar = per_sample(np.array(abars), 4)
    got = training_target(torch.from_numpy(x0), torch.from_numpy(eps), torch.from_numpy(abar), prediction)
    assert got.dtype == torch.float64 and got.shape == SHAPE
    np.testing.assert_allclose(got.numpy(), ref.training_target(x0, eps, abar, prediction), rtol=1e-14, atol=1e-15)


@given(predictions, st.floats(0.1, 20.0), st.lists(st.floats(1e-8, 1e8), min_size=1, max_size=8))
def test_min_snr_weight_matches_reference(prediction, gamma, snrs):
    snr = np.array(snrs)
    got = min_snr_weight(torch.from_numpy(snr), prediction, gamma)
    np.testing.assert_allclose(got.numpy(), ref.min_snr_weight(snr, prediction, gamma), rtol=1e-14)


def test_min_snr_eps_weight_at_zero_snr_is_its_limit():
    """min(SNR, γ)/SNR = 1 for every 0 < SNR ≤ γ, so the SNR → 0 limit is 1 (torch returns it)."""
    got = min_snr_weight(torch.tensor([0.0, 1e-300], dtype=torch.float64), "eps", 5.0)
    assert got.tolist() == [1.0, float(ref.min_snr_weight(1e-300, "eps", 5.0))] == [1.0, 1.0]


# -- σ sampling -----------------------------------------------------------------------------


@pytest.mark.parametrize("zero_snr", [False, True])
@pytest.mark.parametrize("name", SCHEDULES)
def test_uniform_sigmas_are_table_entries(name, zero_snr):
    schedule = build_schedule((name, zero_snr))
    sigma = sample_sigmas(Objective(), schedule, 500, torch.Generator().manual_seed(0))
    assert sigma.dtype == torch.float64 and sigma.shape == (500,)
    t = schedule.sigma_to_t(sigma)
    assert torch.equal(t, t.round())  # table entries map to exact integer timesteps
    assert torch.equal(schedule.sigmas[t.long()], sigma)


def test_uniform_sigmas_cover_every_timestep_evenly():
    """Counts over T = 10 timesteps pass a χ² test (9 degrees of freedom, p > 1e-4)."""
    schedule = diffkit.build("schedule", "linear", num_train_timesteps=10)
    sigma = sample_sigmas(Objective(), schedule, 5000, torch.Generator().manual_seed(1))
    counts = torch.bincount(schedule.sigma_to_t(sigma).long(), minlength=10).numpy()
    expected = np.full(10, 500.0)
    assert ((counts - expected) ** 2 / expected).sum() < stats.chi2.ppf(1 - 1e-4, 9)


@pytest.mark.parametrize("mean,std", [(0.0, 0.8), (-1.2, 0.5), (1.0, 1.0)])
def test_lognormal_sigmas_have_the_requested_log_statistics(mean, std):
    """ln σ ~ N(mean, std²); the linear table spans ln σ ∈ [−4.6, 5.1], ≥ 5.7 std from each mean."""
    schedule = diffkit.build("schedule", "linear")
    objective = Objective(timesteps="lognormal", lognormal_mean=mean, lognormal_std=std)
    n = 20_000
    sigma = sample_sigmas(objective, schedule, n, torch.Generator().manual_seed(2))
    assert sigma.dtype == torch.float64 and sigma.shape == (n,)
    assert schedule.sigma_min <= float(sigma.min()) and float(sigma.max()) <= schedule.sigma_max
    log_sigma = sigma.log().numpy()
    assert abs(log_sigma.mean() - mean) < 5 * std / math.sqrt(n)
    assert abs(log_sigma.std() - std) < 5 * std / math.sqrt(2 * n)
    assert stats.kstest(log_sigma, "norm", args=(mean, std)).pvalue > 1e-4


def test_lognormal_sigmas_are_clamped_to_the_table():
    schedule = diffkit.build("schedule", "cosine")
    g = torch.Generator().manual_seed(3)
    high = sample_sigmas(Objective(timesteps="lognormal", lognormal_mean=30.0), schedule, 50, g)
    low = sample_sigmas(Objective(timesteps="lognormal", lognormal_mean=-30.0), schedule, 50, g)
    assert torch.all(high == schedule.sigma_max) and torch.all(low == schedule.sigma_min)
    mixed = sample_sigmas(Objective(timesteps="lognormal", lognormal_std=4.0), schedule, 2000, g)
    assert schedule.sigma_min <= float(mixed.min()) and float(mixed.max()) <= schedule.sigma_max
    assert float(mixed.min()) == schedule.sigma_min and float(mixed.max()) == schedule.sigma_max


def test_sigma_draws_follow_the_generator():
    schedule = diffkit.build("schedule", "linear")
    for objective in (Objective(), Objective(timesteps="lognormal")):
        a = sample_sigmas(objective, schedule, 16, torch.Generator().manual_seed(7))
        b = sample_sigmas(objective, schedule, 16, torch.Generator().manual_seed(7))
        c = sample_sigmas(objective, schedule, 16, torch.Generator().manual_seed(8))
        assert torch.equal(a, b) and not torch.equal(a, c)


# -- diffusion_loss -------------------------------------------------------------------------


@given(seeds, objectives, schedule_specs)
def test_exact_target_gives_zero_loss(seed, objective, spec):
    schedule = build_schedule(spec)
    x0 = torch.from_numpy(np.random.default_rng(seed).standard_normal(SHAPE))
    model = FakeModel(Replay(objective, schedule, x0, seed), lambda r: r.target)
    loss, parts = diffusion_loss(model, x0, None, schedule, objective, generator=torch.Generator().manual_seed(seed))
    assert loss.shape == () and float(loss) == pytest.approx(0.0, abs=1e-20)
    assert set(parts) == {"mse"} and float(parts["mse"]) == float(loss)


@given(seeds, objectives, schedule_specs)
def test_zero_output_gives_the_weighted_mean_square_target(seed, objective, spec):
    schedule = build_schedule(spec)
    x0 = torch.from_numpy(np.random.default_rng(seed).standard_normal(SHAPE))
    replay = Replay(objective, schedule, x0, seed)
    loss, _ = diffusion_loss(
        FakeModel(replay, lambda r: np.zeros(SHAPE)), x0, None, schedule, objective,
        generator=torch.Generator().manual_seed(seed),
    )
    per_sample_mse = (replay.target**2).reshape(SHAPE[0], -1).mean(axis=1)
    expected = np.mean(replay.weights(objective) * per_sample_mse)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-10)


def test_conditioning_is_passed_to_the_model():
    schedule = diffkit.build("schedule", "linear")
    objective = Objective()
    x0 = torch.zeros(SHAPE, dtype=torch.float64)
    labels = torch.tensor([1, 2, 3])
    model = FakeModel(Replay(objective, schedule, x0, 0), lambda r: r.target)
    diffusion_loss(model, x0, labels, schedule, objective, generator=torch.Generator().manual_seed(0))
    diffusion_loss(model, x0, None, schedule, objective, generator=torch.Generator().manual_seed(0))
    assert model.calls[0][0] is labels and model.calls[1] == ()


def _grid_data(seed: int) -> torch.Tensor:
    """Data on the 256-level grid of [−1, 1], as the discretized decoder of L_0 needs."""
    return torch.from_numpy(GRID[np.random.default_rng(seed).integers(0, 256, SHAPE)])


def _learned_output(seed: int):
    """2C channels: the target plus a seeded error, then v_raw ∈ [−1, 1]."""
    rng = np.random.default_rng(seed + 1)
    error, v_raw = 0.1 * rng.standard_normal(SHAPE), rng.uniform(-1, 1, SHAPE)
    return lambda r: np.concatenate([r.target + error, v_raw], axis=1), error, v_raw


@given(seeds, objectives.filter(lambda o: o.timesteps == "uniform"), schedule_specs, st.floats(1e-4, 0.1))
def test_learned_variance_loss_adds_lambda_T_vlb(seed, objective, spec, vlb_weight):
    """Hybrid loss (improved DDPM §3.1): L_simple + λ·L_vlb, L_vlb = Σ_t L_t ≈ T·E_t[L_t]."""
    schedule = build_schedule(spec)
    objective = Objective(**{**objective.to_dict(), "vlb_weight": vlb_weight})
    x0 = _grid_data(seed)
    replay = Replay(objective, schedule, x0, seed)
    output, error, v_raw = _learned_output(seed)
    loss, parts = diffusion_loss(
        FakeModel(replay, output), x0, None, schedule, objective,
        generator=torch.Generator().manual_seed(seed), learned_variance=True,
    )
    mse = np.mean(replay.weights(objective) * (error**2).reshape(SHAPE[0], -1).mean(axis=1))
    x0_hat = replay.x0_hat(replay.target + error, objective.prediction)
    frac = ref.learned_variance_frac(v_raw)
    betas = schedule.betas.numpy()
    t = replay.t.round().long().numpy()
    terms = [ref.vlb_term(replay.x0[i], replay.x_t[i], int(t[i]), x0_hat[i], frac[i], betas) for i in range(SHAPE[0])]
    vlb = np.mean(terms)
    np.testing.assert_allclose(float(parts["mse"]), mse, rtol=1e-10)
    np.testing.assert_allclose(float(parts["vlb"]), vlb, rtol=1e-7)
    np.testing.assert_allclose(float(loss), mse + vlb_weight * schedule.num_train_timesteps * vlb, rtol=1e-7)


def test_vlb_term_trains_only_the_variance_channels():
    """μ_θ in L_vlb uses the stopped-gradient prediction (improved DDPM §3.1): the gradient on the
    prediction channels is that of the MSE alone, 2·(pred − target)/(B·C·H·W)."""
    schedule = diffkit.build("schedule", "linear")
    objective = Objective(prediction="v")
    x0 = _grid_data(5)
    replay = Replay(objective, schedule, x0, 5)
    output, error, _ = _learned_output(5)
    leaf = torch.from_numpy(output(replay)).requires_grad_(True)
    loss, _ = diffusion_loss(
        lambda x_t, t: leaf, x0, None, schedule, objective,
        generator=torch.Generator().manual_seed(5), learned_variance=True,
    )
    loss.backward()
    prediction_grad, variance_grad = leaf.grad.chunk(2, dim=1)
    np.testing.assert_allclose(prediction_grad.numpy(), 2 * error / error.size, rtol=1e-10)
    assert float(variance_grad.abs().sum()) > 0  # L_vlb does train the variance


def test_hybrid_loss_needs_integer_timesteps():
    schedule = diffkit.build("schedule", "linear")
    x0 = torch.zeros(SHAPE, dtype=torch.float64)
    model = lambda x_t, t: torch.zeros(SHAPE[0], 2 * SHAPE[1], *SHAPE[2:], dtype=torch.float64)  # noqa: E731
    with pytest.raises(ConfigError, match="uniform"):
        diffusion_loss(model, x0, None, schedule, Objective(timesteps="lognormal"), learned_variance=True)


@pytest.mark.parametrize(
    "learned,out_shape",
    [(False, (3, 4, 4, 4)), (True, (3, 2, 4, 4)), (False, (3, 2, 4, 5)), (False, (2, 2, 4, 4)), (True, (3, 2, 8, 4))],
)
def test_wrongly_shaped_output_is_a_shape_error(learned, out_shape):
    schedule = diffkit.build("schedule", "linear")
    x0 = torch.zeros(SHAPE, dtype=torch.float64)
    model = lambda x_t, t: torch.zeros(out_shape, dtype=torch.float64)  # noqa: E731
    expected = (3, 4 if learned else 2, 4, 4)
    with pytest.raises(ShapeError, match=str(expected).replace("(", r"\(").replace(")", r"\)")):
        diffusion_loss(model, x0, None, schedule, Objective(), learned_variance=learned)


def test_objective_validates_its_fields():
    with pytest.raises(UnknownNameError, match="did you mean 'min_snr'"):
        Objective(weighting="minsnr")
    with pytest.raises(UnknownNameError, match="'eps'"):
        Objective(prediction="epsilon")
    with pytest.raises(UnknownNameError, match="lognormal"):
        Objective(timesteps="log_normal")
    for field, bad in [("snr_gamma", 0.0), ("snr_gamma", True), ("lognormal_std", -1.0), ("vlb_weight", math.inf)]:
        with pytest.raises(ConfigError, match=field):
            Objective(**{field: bad})
    with pytest.raises(ConfigError, match="lognormal_mean"):
        Objective(lognormal_mean=math.nan)
    assert Objective(**Objective(prediction="v").to_dict()) == Objective(prediction="v")
