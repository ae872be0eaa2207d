"""euler, heun, dpm2 (EDM churn options) and lms against their numpy twins, invariants,
measured convergence orders and diffusers' Euler/Heun/KDPM2/LMS schedulers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import diffkit
import diffkit_reference as ref
from diffkit.errors import ConfigError
from diffkit.samplers.ddim import ddim
from diffkit.samplers.edm import dpm2, euler, heun
from diffkit.samplers.lms import lms, lms_coefficients
from diffkit.testing import check_sampler
from diffkit.testing.grids import karras_sigmas
from diffkit_reference import ode_samplers as twins
from diffkit_reference.analytic import GaussianData
from tests.analytic_models import denoiser_numpy, denoiser_torch
from tests.sweeps import SCHEDULES, SPACINGS

CHURNED = {
    "euler": (euler, twins.edm_euler_sample),
    "heun": (heun, twins.edm_heun_sample),
    "dpm2": (dpm2, twins.dpm2_sample),
}
ALL = {"euler": euler, "heun": heun, "dpm2": dpm2, "lms": lms}


class Feeder:
    """A noise_sampler handing out pre-drawn N(0, I) arrays in order, recording its calls."""

    def __init__(self, shape: tuple[int, ...], seed: int, as_torch: bool) -> None:
        self.rng, self.shape, self.as_torch, self.calls = np.random.default_rng(seed), shape, as_torch, []

    def __call__(self, sigma: float, sigma_hat: float):
        self.calls.append((sigma, sigma_hat))
        z = self.rng.standard_normal(self.shape)
        return torch.from_numpy(z) if self.as_torch else z


def start(sigmas: torch.Tensor, shape=(3, 2, 2), seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape) * float(sigmas[0])


# -- against the numpy twins ----------------------------------------------------------------


@given(
    name=st.sampled_from(sorted(CHURNED)),
    schedule=st.sampled_from(SCHEDULES),
    spacing=st.sampled_from(SPACINGS),
    steps=st.integers(1, 40),
    rescale=st.booleans(),
    s_churn=st.sampled_from([0.0, 0.5, 5.0, 80.0]),
    s_tmin=st.sampled_from([0.0, 0.3, 2.0]),
    s_tmax=st.sampled_from([math.inf, 5.0, 40.0]),
    s_noise=st.floats(0.0, 1.5),
    seed=st.integers(0, 2**16),
)
def test_churned_samplers_match_their_numpy_twins(
    name, schedule, spacing, steps, rescale, s_churn, s_tmin, s_tmax, s_noise, seed
):
    fn, twin = CHURNED[name]
    sigmas = diffkit.build("schedule", schedule, rescale_zero_terminal_snr=rescale).sigmas_for(steps, spacing)
    x = start(sigmas, seed=seed)
    options = {"s_churn": s_churn, "s_tmin": s_tmin, "s_tmax": s_tmax, "s_noise": s_noise}
    ours_noise, their_noise = Feeder(x.shape, seed + 1, True), Feeder(x.shape, seed + 1, False)
    ours = fn(denoiser_torch, torch.from_numpy(x), sigmas, noise_sampler=ours_noise, **options)
    theirs = twin(denoiser_numpy, x, sigmas.numpy(), noise_sampler=their_noise, **options)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-9, atol=1e-9)
    assert ours_noise.calls == their_noise.calls  # same draws, same order, same (σ, σ̂)


@given(
    schedule=st.sampled_from(SCHEDULES),
    spacing=st.sampled_from(SPACINGS),
    steps=st.integers(1, 60),
    order=st.integers(1, 6),
    rescale=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_lms_matches_its_numpy_twin(schedule, spacing, steps, order, rescale, seed):
    sigmas = diffkit.build("schedule", schedule, rescale_zero_terminal_snr=rescale).sigmas_for(steps, spacing)
    x = start(sigmas, seed=seed)
    ours = lms(denoiser_torch, torch.from_numpy(x), sigmas, order=order)
    theirs = twins.lms_sample(denoiser_numpy, x, sigmas.numpy(), order=order)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-9, atol=1e-9)


# -- exact identities -------------------------------------------------------------------------


@given(
    schedule=st.sampled_from(SCHEDULES),
    spacing=st.sampled_from(SPACINGS),
    steps=st.integers(1, 80),
    dtype=st.sampled_from([torch.float64, torch.float32, torch.float16]),
    rescale=st.booleans(),
)
def test_euler_is_ddim_with_eta_zero_bit_for_bit(schedule, spacing, steps, dtype, rescale):
    # DDIM η = 0 is Euler's method on dy/dσ = (y − D)/σ (Song et al. 2021, eq. 12 in σ form)
    sigmas = diffkit.build("schedule", schedule, rescale_zero_terminal_snr=rescale).sigmas_for(steps, spacing)
    x = torch.from_numpy(start(sigmas)).to(dtype)
    assert torch.equal(euler(denoiser_torch, x, sigmas), ddim(denoiser_torch, x, sigmas, eta=0.0))


def test_euler_matches_the_plain_euler_reference():
    sigmas = diffkit.build("schedule", "scaled_linear").sigmas_for(37, "trailing")
    x = start(sigmas)
    ours = euler(denoiser_torch, torch.from_numpy(x), sigmas)
    np.testing.assert_allclose(ours.numpy(), ref.euler_sample(denoiser_numpy, x, sigmas.numpy()), rtol=1e-12, atol=1e-12)


def test_lms_of_order_one_is_euler():
    sigmas = diffkit.build("schedule", "linear").sigmas_for(30, "linspace")
    x = torch.from_numpy(start(sigmas))
    expected = euler(denoiser_torch, x, sigmas)
    torch.testing.assert_close(lms(denoiser_torch, x, sigmas, order=1), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(ALL))
def test_a_single_step_into_zero_returns_the_denoiser_output(name):
    # the last step into σ = 0 is first order everywhere: y' = D(y, σ_max)
    sigmas = torch.tensor([14.6, 0.0], dtype=torch.float64)
    x = torch.from_numpy(start(sigmas))
    expected = denoiser_torch(x, sigmas[:1].expand(3))
    torch.testing.assert_close(ALL[name](denoiser_torch, x, sigmas), expected, rtol=1e-13, atol=1e-13)


@given(
    gaps=st.lists(st.floats(0.2, 2.0), min_size=1, max_size=8),
    back=st.integers(0, 2),
    k=st.integers(1, 6),
    scale=st.sampled_from([1e-3, 1.0, 80.0]),
)
def test_lms_coefficients_integrate_polynomials_of_degree_below_k_exactly(gaps, back, k, scale):
    levels = (np.cumsum(gaps[::-1])[::-1] * scale).tolist() + [0.0]  # decreasing, ending at 0
    i = max(len(levels) - 2 - back, 0)  # the step σ_i → σ_{i+1}
    k = min(k, i + 1)  # at most i + 1 past slopes exist
    b = np.array(lms_coefficients(levels, i, k))
    offsets = np.array([levels[i - j] - levels[i] for j in range(k)])  # σ_{i−j} − σ_i
    h = levels[i + 1] - levels[i]
    for m in range(k):  # Σ_j b_j (σ_{i−j} − σ_i)^m = ∫_{σ_i}^{σ_{i+1}} (s − σ_i)^m ds = h^{m+1}/(m + 1)
        terms = b * offsets**m
        assert abs(terms.sum() - h ** (m + 1) / (m + 1)) <= 1e-12 * np.abs(terms).sum(), (m, terms)
    np.testing.assert_allclose(b, twins.lms_coefficients(levels, i, k), rtol=1e-10, atol=1e-13 * abs(h))


def test_lms_coefficients_on_a_uniform_grid_are_adams_bashforth():
    levels = [5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.0]
    expected = {1: [-1.0], 2: [-3 / 2, 1 / 2], 3: [-23 / 12, 16 / 12, -5 / 12], 4: [-55 / 24, 59 / 24, -37 / 24, 9 / 24]}
    for k, b in expected.items():  # h = −1: AB_k weights times h
        np.testing.assert_allclose(lms_coefficients(levels, 3, k), b, rtol=1e-13)


# -- churn semantics (k-diffusion / EDM Alg. 2) -----------------------------------------------


@pytest.mark.parametrize("name", sorted(CHURNED))
def test_churn_raises_sigma_by_gamma_inside_the_window_only(name):
    sigmas = diffkit.build("schedule", "linear").sigmas_for(10, "trailing")
    x = torch.from_numpy(start(sigmas))
    seen, noise = [], Feeder(tuple(x.shape), 0, True)
    s_churn, s_tmin, s_tmax = 3.0, 0.5, 20.0
    CHURNED[name][0](denoiser_torch, x, sigmas, callback=seen.append, noise_sampler=noise,
                     s_churn=s_churn, s_tmin=s_tmin, s_tmax=s_tmax, s_noise=1.003)
    gamma = min(s_churn / 10, math.sqrt(2) - 1)
    expected = [s * (1 + gamma) if s_tmin <= s <= s_tmax else s for s in sigmas[:-1].tolist()]
    assert [info["sigma_hat"] for info in seen] == pytest.approx(expected, rel=1e-15)
    assert [info["sigma"] for info in seen] == sigmas[:-1].tolist()
    assert noise.calls == [(s, sh) for s, sh in zip(sigmas[:-1].tolist(), expected) if sh != s]


def test_gamma_is_capped_at_sqrt2_minus_1_and_s_noise_zero_draws_nothing():
    sigmas = diffkit.build("schedule", "linear").sigmas_for(4)
    x = torch.from_numpy(start(sigmas))
    seen = []
    euler(denoiser_torch, x, sigmas, s_churn=1e6, callback=seen.append, noise_sampler=Feeder(tuple(x.shape), 0, True))
    assert [info["sigma_hat"] / info["sigma"] for info in seen] == pytest.approx([math.sqrt(2)] * 4, rel=1e-15)
    quiet = Feeder(tuple(x.shape), 0, True)
    euler(denoiser_torch, x, sigmas, s_churn=10.0, s_noise=0.0, noise_sampler=quiet)
    assert quiet.calls == []


@pytest.mark.parametrize("name", sorted(ALL))
def test_same_generator_gives_bit_identical_results(name):
    sigmas = diffkit.build("schedule", "linear").sigmas_for(20)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])

    def run(seed, **options):
        return ALL[name](denoiser_torch, x, sigmas, generator=torch.Generator().manual_seed(seed), **options)

    assert torch.equal(run(7), run(8))  # default options: deterministic
    if name in CHURNED:
        churned = {"s_churn": 5.0}
        assert torch.equal(run(7, **churned), run(7, **churned)) and not torch.equal(run(7, **churned), run(8, **churned))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(ALL))
def test_low_precision_inputs_keep_their_dtype_without_nan(name, dtype):
    sigmas = diffkit.build("schedule", "scaled_linear", rescale_zero_terminal_snr=True).sigmas_for(30, "trailing")
    x = (torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1)) * float(sigmas[0])).to(dtype)
    options = {"s_churn": 2.0} if name in CHURNED else {}
    out = ALL[name](denoiser_torch, x, sigmas, generator=torch.Generator().manual_seed(0), **options)
    assert out.dtype == dtype and out.shape == x.shape and torch.isfinite(out).all()


# -- bad options ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options, message",
    [
        ({"s_churn": -1.0}, "s_churn must be a finite number ≥ 0"),
        ({"s_churn": math.nan}, "s_churn must be a finite number ≥ 0"),
        ({"s_churn": math.inf}, "s_churn must be a finite number ≥ 0"),
        ({"s_noise": -0.5}, "s_noise must be a finite number ≥ 0"),
        ({"s_tmin": -1.0}, "s_tmin must be a finite number ≥ 0"),
        ({"s_tmax": math.nan}, "s_tmax must be a number ≥ 0"),
        ({"s_tmin": 5.0, "s_tmax": 1.0}, r"s_tmax \(1.0\) must be ≥ s_tmin \(5.0\)"),
        ({"s_churn": "1"}, "s_churn must be a finite number ≥ 0"),
        ({"s_churn": True}, "s_churn must be a finite number ≥ 0"),
    ],
)
@pytest.mark.parametrize("name", sorted(CHURNED))
def test_bad_churn_options_are_rejected(name, options, message):
    with pytest.raises(ConfigError, match=message):
        CHURNED[name][0](denoiser_torch, torch.zeros(1, 2), torch.tensor([1.0, 0.0]), **options)
    with pytest.raises(ConfigError, match=message):
        diffkit.build("sampler", name, **options)  # refused when chosen, before any step


@pytest.mark.parametrize("order", [0, -2, 2.5, True, "4", None])
def test_bad_lms_order_is_rejected(order):
    with pytest.raises(ConfigError, match="order must be an integer ≥ 1"):
        lms(denoiser_torch, torch.zeros(1, 2), torch.tensor([1.0, 0.0]), order=order)
    with pytest.raises(ConfigError, match="order must be an integer ≥ 1"):
        diffkit.build("sampler", "lms", order=order)


def test_unknown_options_are_named_by_build():
    with pytest.raises(diffkit.errors.UnknownNameError, match="s_churn"):
        diffkit.build("sampler", "heun", s_chrun=1.0)


# -- measured convergence order on Gaussian data (exact ODE endpoint) -------------------------

DATA = GaussianData(np.array([0.3, -0.5]), np.array([[0.49, 0.1], [0.1, 0.25]]))


def _data_denoiser(y: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
    return torch.from_numpy(DATA.denoise(y.numpy(), sigma.numpy()))


def measured_order(fn, steps=(64, 128, 256), **options) -> tuple[float, list[float]]:
    """Slope of log(max error) vs log N on Karras ρ = 7 grids 80 → 1e-3 → 0 (fixed σ_min: the
    final jump's O(σ_min²) floor, ~1e-6, stays below the errors measured here)."""
    x = np.random.default_rng(0).standard_normal((16, 2)) * 80.0
    exact = DATA.ode_solution(x, 80.0, 0.0)
    errors = []
    for n in steps:
        out = fn(_data_denoiser, torch.from_numpy(x), karras_sigmas(n, 1e-3, 80.0), **options)
        errors.append(float(np.abs(out.numpy() - exact).max()))
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0], errors


@pytest.mark.parametrize(
    "name, options, theory",
    [
        ("euler", {}, 1), ("heun", {}, 2), ("dpm2", {}, 2),
        ("lms", {"order": 2}, 2), ("lms", {"order": 3}, 3), ("lms", {"order": 4}, 4),
    ],
)
def test_measured_convergence_order(name, options, theory):
    order, errors = measured_order(ALL[name], **options)
    assert abs(order - theory) <= 0.3, (order, errors)


@pytest.mark.parametrize("name, options", [("euler", {"s_churn": 20.0}), ("heun", {"s_churn": 20.0})])
def test_churned_samplers_pass_the_kit_as_stochastic_samplers(name, options):
    report = check_sampler(name, options=options, quick=True)
    assert report.ok, report.format()
    assert "stochastic" in report.notes


# -- side by side with diffusers (its σ grid, float64, the exact ε network) -------------------


def _eps_at(x_in: torch.Tensor, sigma: float) -> torch.Tensor:
    """The exact ε-network of tests/analytic_models.py, handed σ itself (no t ↔ σ round trip)."""
    abar = 1.0 / (1.0 + sigma**2)
    x0 = denoiser_torch(x_in / math.sqrt(abar), torch.full((x_in.shape[0],), sigma, dtype=torch.float64))
    return (x_in - math.sqrt(abar) * x0) / math.sqrt(1.0 - abar)


def _sigma_denoiser(y: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
    """diffkit's side: D = y − σ·ε̂(y/√(1+σ²), σ) through the same ε network."""
    s = float(sigma[0])
    return y - s * _eps_at(y / math.sqrt(1.0 + s * s), s)


def _peer(diffusers, cls_name, schedule, peer_schedule, spacing, steps, **config):
    betas = {k: getattr(schedule, k) for k in ("beta_start", "beta_end") if hasattr(schedule, k)}
    peer = getattr(diffusers, cls_name)(beta_schedule=peer_schedule, timestep_spacing=spacing, **betas, **config)
    peer.betas, peer.alphas_cumprod = schedule.betas.clone(), schedule.alphas_cumprod.clone()  # our float64 tables
    peer.set_timesteps(steps)
    # diffusers keeps σ in float32 and does its scalar σ arithmetic there; the same σ values in
    # float64 (midpoints recomputed with diffusers' own formula) make the comparison exact
    peer.sigmas = peer.sigmas.double()
    if hasattr(peer, "sigmas_interpol"):
        peer.sigmas_interpol = peer.sigmas.log().lerp(peer.sigmas.roll(1).log(), 0.5).exp()
    return peer


def _peer_sigma(peer) -> float:
    """The σ the scheduler's next model call is for (KDPM2's second call is at the midpoint)."""
    if getattr(peer, "sigmas_interpol", None) is not None and not peer.state_in_first_order:
        return float(peer.sigmas_interpol[peer.step_index])
    return float(peer.sigmas[peer.step_index])


def _peer_loop(peer, x: torch.Tensor, **step_kwargs) -> torch.Tensor:
    for t in peer.timesteps:
        x_in = peer.scale_model_input(x, t)
        x = peer.step(_eps_at(x_in, _peer_sigma(peer)), t, x, **step_kwargs).prev_sample
    return x


PEERS = {
    "euler": "EulerDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpm2": "KDPM2DiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
}
PEER_SCHEDULES = [("linear", "linear"), ("scaled_linear", "scaled_linear"), ("cosine", "squaredcos_cap_v2")]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' numpy calls on torch tensors
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("schedule_name, peer_schedule", PEER_SCHEDULES)
@pytest.mark.parametrize("name", sorted(PEERS))
def test_matches_the_diffusers_scheduler(name, schedule_name, peer_schedule, spacing):
    diffusers = pytest.importorskip("diffusers")
    if name == "lms":
        pytest.importorskip("scipy")  # LMSDiscreteScheduler integrates its coefficients with scipy.quad
    schedule = diffkit.build("schedule", schedule_name)
    peer = _peer(diffusers, PEERS[name], schedule, peer_schedule, spacing, 25)
    sigmas = torch.unique_consecutive(peer.sigmas)  # Heun/KDPM2 repeat each σ for their second call
    assert len(sigmas) == 26 and sigmas[-1] == 0
    x = torch.randn(3, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * sigmas[0]
    expected = _peer_loop(peer, x.clone())
    ours = ALL[name](_sigma_denoiser, x, sigmas)
    # diffusers' Euler step casts the sample to float32. From σ_max ≈ 2·10⁴ (cosine with
    # trailing/linspace) its first step cancels |x| ≈ 3σ_max down to ≈ 3σ_1 in float32, which
    # leaves ~5e-5 at the end; there the tolerance is float32's rounding of that |x|
    tol = 1e-6 if name != "euler" or float(sigmas[0]) < 1e3 else 2**-24 * float(x.abs().max())
    torch.testing.assert_close(ours, expected, rtol=0, atol=tol)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_euler_churn_matches_diffusers_on_a_constant_x0_model():
    # diffusers evaluates its model at (x, σ) BEFORE churning, then applies the output at
    # (x̂, σ̂); k-diffusion and diffkit evaluate D(x̂, σ̂). With an x0-model that ignores x and σ
    # the two agree, which checks γ, the (s_tmin, s_tmax) window, s_noise and the draws.
    diffusers = pytest.importorskip("diffusers")
    schedule = diffkit.build("schedule", "scaled_linear")
    peer = _peer(diffusers, "EulerDiscreteScheduler", schedule, "scaled_linear", "leading", 20, prediction_type="sample")
    sigmas = peer.sigmas.clone()
    x0 = torch.randn(3, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = torch.randn(3, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * sigmas[0]
    churn = {"s_churn": 8.0, "s_tmin": 0.5, "s_tmax": 5.0, "s_noise": 1.007}
    expected = x.clone()
    draws = torch.Generator().manual_seed(5)
    for t in peer.timesteps:
        peer.scale_model_input(expected, t)
        expected = peer.step(x0.clone(), t, expected, generator=draws, **churn).prev_sample
    same = torch.Generator().manual_seed(5)
    noise = lambda s, s_hat: torch.randn(x.shape, generator=same, dtype=torch.float64)  # noqa: E731
    ours = euler(lambda y, s, cond=None: x0.clone(), x, sigmas, noise_sampler=noise, **churn)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)  # diffusers' step runs in float32
