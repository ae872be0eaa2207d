"""The built-in samplers against the numpy reference (VP form), invariants and diffusers."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import diffkit
import diffkit_reference as ref
from diffkit.errors import ConfigError, DiffkitError, ShapeError, UnknownNameError
from diffkit.samplers import ddim, ddpm
from tests.analytic_models import ExactVPModel, denoiser_numpy, denoiser_torch
from tests.sweeps import SCHEDULES, SPACINGS


def noise_list(shape, count, seed=0):
    g = np.random.default_rng(seed)
    return [g.standard_normal(shape) for _ in range(count)]


def feeder(noises, as_torch):
    """A noise_sampler that hands out the pre-drawn noises in order."""
    it = iter(noises)
    return (lambda s, sn: torch.from_numpy(next(it))) if as_torch else (lambda s, sn: next(it))


@given(
    schedule=st.sampled_from(SCHEDULES),
    spacing=st.sampled_from(SPACINGS),
    steps=st.integers(1, 60),
    eta=st.floats(0, 1),  # η > 1 is outside DDIM eq. 16's domain; see the clamp test below
    rescale=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_ddim_matches_the_vp_reference(schedule, spacing, steps, eta, rescale, seed):
    sigmas = diffkit.build("schedule", schedule, rescale_zero_terminal_snr=rescale).sigmas_for(steps, spacing)
    x = np.random.default_rng(seed).standard_normal((3, 2, 2)) * float(sigmas[0])
    noises = noise_list(x.shape, steps, seed + 1)
    ours = ddim(denoiser_torch, torch.from_numpy(x), sigmas, eta=eta, noise_sampler=feeder(noises, True))
    theirs = ref.ddim_sample(denoiser_numpy, x, sigmas.numpy(), eta=eta, noise_sampler=feeder(noises, False))
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-9, atol=1e-9)


@given(
    schedule=st.sampled_from(SCHEDULES),
    spacing=st.sampled_from(SPACINGS),
    steps=st.integers(1, 60),
    variance=st.sampled_from(["small", "large"]),
    seed=st.integers(0, 2**16),
)
def test_ddpm_matches_the_vp_reference(schedule, spacing, steps, variance, seed):
    sigmas = diffkit.build("schedule", schedule).sigmas_for(steps, spacing)
    x = np.random.default_rng(seed).standard_normal((3, 2, 2)) * float(sigmas[0])
    noises = noise_list(x.shape, steps, seed + 1)
    ours = ddpm(denoiser_torch, torch.from_numpy(x), sigmas, variance=variance, noise_sampler=feeder(noises, True))
    theirs = ref.ddpm_sample(
        denoiser_numpy, x, sigmas.numpy(), variance=variance, noise_sampler=feeder(noises, False)
    )
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-9, atol=1e-9)


@given(steps=st.integers(1, 80), spacing=st.sampled_from(SPACINGS))
def test_ddim_eta0_is_euler_on_the_probability_flow_ode(steps, spacing):
    sigmas = diffkit.build("schedule", "linear").sigmas_for(steps, spacing)
    x = np.random.default_rng(steps).standard_normal((4, 3)) * float(sigmas[0])
    ours = ddim(denoiser_torch, torch.from_numpy(x), sigmas)
    np.testing.assert_allclose(ours.numpy(), ref.euler_sample(denoiser_numpy, x, sigmas.numpy()), rtol=1e-11, atol=1e-12)


def test_ddim_eta_above_one_clamps_the_noise_to_sigma_next():
    # DDIM eq. 12 needs 1 − ᾱ_prev − σ_t(η)² ≥ 0; past that σ_up is clamped to σ_next (σ_down = 0)
    sigmas = diffkit.build("schedule", "linear").sigmas_for(2)
    x = torch.randn(4, 3, dtype=torch.float64) * sigmas[0]
    noises = noise_list(x.shape, 2, 0)
    ours = ddim(denoiser_torch, x, sigmas, eta=5.0, noise_sampler=feeder(noises, True))
    denoised = denoiser_torch(x, sigmas[:1].expand(4))
    first = denoised + float(sigmas[1]) * torch.from_numpy(noises[0])  # σ_down = 0, σ_up = σ_next
    torch.testing.assert_close(ours, denoiser_torch(first, sigmas[1:2].expand(4)), rtol=1e-12, atol=1e-12)


def test_ddpm_small_variance_is_ddim_with_eta_one():
    sigmas = diffkit.build("schedule", "cosine").sigmas_for(25, "trailing")
    x = torch.randn(5, 3, dtype=torch.float64) * sigmas[0]
    a = ddpm(denoiser_torch, x, sigmas, generator=torch.Generator().manual_seed(1))
    b = ddim(denoiser_torch, x, sigmas, eta=1.0, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_ddim_with_the_exact_model_recovers_the_exact_ode_solution():
    # Gaussian data: the probability-flow ODE maps y at σ_max to μ + (y − μ)·s/√(s² + σ_max²)
    schedule = diffkit.build("schedule", "linear")
    errors = []
    for steps in (10, 20, 40, 80):
        sigmas = schedule.sigmas_for(steps, "trailing")
        x = torch.linspace(-3, 3, 7, dtype=torch.float64).reshape(7, 1) * sigmas[0]
        exact = 0.3 + (x - 0.3) * 0.7 / math.sqrt(0.49 + float(sigmas[0]) ** 2)
        errors.append(float((ddim(denoiser_torch, x, sigmas) - exact).abs().max()))
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(0.8 < p < 1.3 for p in orders), (errors, orders)  # Euler: first order


STOCHASTIC_CONFIGS = [
    ("ddim", {"eta": 0.7}),
    ("ddpm", {}),
    ("euler", {"s_churn": 10.0}),
    ("euler_ancestral", {}),
    ("dpmpp_2s_ancestral", {}),
    ("dpmpp_2m_sde", {}),
    ("dpmpp_3m_sde", {}),
]


@pytest.mark.parametrize("sampler, options", STOCHASTIC_CONFIGS)
def test_same_generator_gives_bit_identical_results(sampler, options):
    fn = diffkit.build("sampler", sampler, **options)
    sigmas = diffkit.build("schedule", "linear").sigmas_for(20)
    x = torch.randn(4, 3, 8, 8) * float(sigmas[0])
    a = fn(denoiser_torch, x, sigmas, generator=torch.Generator().manual_seed(7))
    b = fn(denoiser_torch, x, sigmas, generator=torch.Generator().manual_seed(7))
    c = fn(denoiser_torch, x, sigmas, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_a_sample_does_not_depend_on_batch_size_with_per_sample_generators(sampler):
    denoiser = diffkit.VPDenoiser(ExactVPModel(diffkit.build("schedule", "linear"), "eps"), diffkit.build("schedule", "linear"))
    options = {"eta": 1.0} if sampler == "ddim" else {}

    def run(seeds):
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        return diffkit.sample(
            denoiser, (len(seeds), 3, 4, 4), schedule="linear", sampler=sampler, steps=15,
            generator=gens, sampler_options=options, dtype=torch.float64,
        )

    batch = run([11, 12, 13, 14])
    single = run([13])
    torch.testing.assert_close(batch[2:3], single, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_low_precision_inputs_keep_their_dtype_without_nan(sampler, dtype):
    sigmas = diffkit.build("schedule", "scaled_linear", rescale_zero_terminal_snr=True).sigmas_for(30, "trailing")
    x = (torch.randn(2, 3, 4, 4) * float(sigmas[0])).to(dtype)
    out = diffkit.get("sampler", sampler)(denoiser_torch, x, sigmas, generator=torch.Generator().manual_seed(0))
    assert out.dtype == dtype and out.shape == x.shape and torch.isfinite(out).all()


def test_callback_is_called_once_per_step_with_kdiffusion_keys():
    sigmas = diffkit.build("schedule", "linear").sigmas_for(12)
    seen = []
    ddim(denoiser_torch, torch.randn(2, 3) * sigmas[0], sigmas, callback=seen.append)
    assert [info["i"] for info in seen] == list(range(12))
    assert set(seen[0]) == {"x", "i", "sigma", "sigma_hat", "denoised"}
    assert [info["sigma"] for info in seen] == sigmas[:-1].tolist()


@pytest.mark.parametrize(
    "sigmas, message",
    [
        ([5.0, 1.0, float("nan"), 0.0], "finite"),
        ([5.0, float("inf"), 0.0], "finite"),
        ([5.0, 1.0, 0.1], "end at 0"),
        ([5.0, 6.0, 0.0], "strictly decreasing"),
        ([5.0, 5.0, 0.0], "strictly decreasing"),
        ([0.0], "at least 2"),
    ],
)
@pytest.mark.parametrize("sampler", [ddim, ddpm])
def test_bad_sigmas_are_rejected(sampler, sigmas, message):
    with pytest.raises(ConfigError, match=message):
        sampler(denoiser_torch, torch.zeros(1, 2), torch.tensor(sigmas))


@pytest.mark.parametrize("eta", [-0.1, float("nan"), float("inf")])
def test_negative_or_non_finite_eta_is_rejected(eta):
    with pytest.raises(ConfigError, match="eta must be a finite number ≥ 0"):
        ddim(denoiser_torch, torch.zeros(1, 2), torch.tensor([1.0, 0.0]), eta=eta)


def test_unknown_ddpm_variance_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="did you mean 'small'"):
        ddpm(denoiser_torch, torch.zeros(1, 2), torch.tensor([1.0, 0.0]), variance="smal")


def test_denoiser_output_shape_mismatch_is_a_clear_error():
    def wrong(x, sigma, cond=None):
        return x[:, :1]

    with pytest.raises(ShapeError, match=r"shape \(2, 1\) for input of shape \(2, 3\)"):
        ddim(wrong, torch.zeros(2, 3), torch.tensor([1.0, 0.0]))


def test_generator_list_length_must_match_the_batch():
    gens = [torch.Generator() for _ in range(3)]
    with pytest.raises(ConfigError, match="3 generators for a batch of 2"):
        ddpm(denoiser_torch, torch.zeros(2, 3), torch.tensor([2.0, 1.0, 0.0]), generator=gens)


def test_sampling_loop_reads_sigmas_on_any_device_and_dtype():
    sigmas = diffkit.build("schedule", "linear").sigmas_for(10)
    x = torch.randn(2, 3, dtype=torch.float64) * sigmas[0]
    a = ddim(denoiser_torch, x, sigmas)
    b = ddim(denoiser_torch, x, sigmas.float())  # float32 sigmas, as k-diffusion passes them
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# -- side by side with diffusers (same σ grid, float64, the exact ε network) ---------------


def _diffusers_loop(scheduler, model, x_t, generator=None):
    for t in scheduler.timesteps:
        eps = model(x_t, t.reshape(1).expand(x_t.shape[0]).double())
        x_t = scheduler.step(eps, t, x_t, generator=generator).prev_sample
    return x_t


@pytest.mark.parametrize("schedule_name, peer_name", [("linear", "linear"), ("scaled_linear", "scaled_linear"), ("cosine", "squaredcos_cap_v2")])
@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers_ddim_scheduler(schedule_name, peer_name, eta):
    diffusers = pytest.importorskip("diffusers")
    schedule = diffkit.build("schedule", schedule_name)
    betas = {k: getattr(schedule, k) for k in ("beta_start", "beta_end") if hasattr(schedule, k)}
    peer = diffusers.DDIMScheduler(beta_schedule=peer_name, clip_sample=False, **betas)
    peer.betas = schedule.betas.clone()  # identical float64 tables on both sides
    peer.alphas_cumprod = schedule.alphas_cumprod.clone()
    peer.set_timesteps(25)
    model = ExactVPModel(schedule, "eps")
    x_t = torch.randn(3, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    expected = _diffusers_loop(peer, model, x_t.clone(), generator=torch.Generator().manual_seed(5)) if eta == 0 else None
    denoiser = diffkit.VPDenoiser(model, schedule, "eps")
    sigmas = schedule.sigmas_for(25, "leading")
    np.testing.assert_array_equal(schedule.timesteps(25, "leading").numpy(), peer.timesteps.numpy())
    if eta == 0:
        ours = ddim(denoiser, x_t * math.sqrt(1 + float(sigmas[0]) ** 2), sigmas)
        torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)
    else:  # diffusers draws its variance noise from the generator: draw the same sequence
        gen_a, gen_b = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        expected = x_t.clone()
        for t in peer.timesteps:
            eps = model(expected, t.reshape(1).expand(3).double())
            expected = peer.step(eps, t, expected, eta=1.0, generator=gen_a).prev_sample
        noise = lambda s, sn: torch.randn(x_t.shape, generator=gen_b, dtype=torch.float64)
        ours = ddim(denoiser, x_t * math.sqrt(1 + float(sigmas[0]) ** 2), sigmas, eta=1.0, noise_sampler=noise)
        torch.testing.assert_close(ours, expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("variance, peer_variance", [("small", "fixed_small"), ("large", "fixed_large")])
@pytest.mark.parametrize("steps", [1000, 40])
def test_ddpm_matches_diffusers_ddpm_scheduler(variance, peer_variance, steps):
    diffusers = pytest.importorskip("diffusers")
    schedule = diffkit.build("schedule", "linear")
    peer = diffusers.DDPMScheduler(clip_sample=False, variance_type=peer_variance)
    peer.betas, peer.alphas_cumprod = schedule.betas.clone(), schedule.alphas_cumprod.clone()
    peer.alphas = 1 - peer.betas
    peer.one = torch.tensor(1.0, dtype=torch.float64)
    peer.set_timesteps(steps)
    model = ExactVPModel(schedule, "eps")
    x_t = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = _diffusers_loop(peer, model, x_t.clone(), generator=torch.Generator().manual_seed(9))
    gen = torch.Generator().manual_seed(9)
    noise = lambda s, sn: torch.randn(x_t.shape, generator=gen, dtype=torch.float64)
    sigmas = schedule.sigmas_for(steps, "leading")
    ours = ddpm(diffkit.VPDenoiser(model, schedule), x_t * math.sqrt(1 + float(sigmas[0]) ** 2), sigmas, variance=variance, noise_sampler=noise)
    torch.testing.assert_close(ours, expected, rtol=1e-8, atol=1e-8)


def test_sigmas_given_as_a_python_list_stay_float64():
    from diffkit.samplers.common import sigma_levels

    assert sigma_levels([1.0, 0.1, 0.0]) == [1.0, 0.1, 0.0]


BUILTIN_SAMPLERS = [n for n in diffkit.names("sampler") if diffkit.get_entry("sampler", n).origin.builtin]


@pytest.mark.parametrize("name", BUILTIN_SAMPLERS)
def test_half_precision_inputs_are_integrated_in_float32(name):
    """1000 steps in bfloat16 used to stall (each step's change was below bf16's resolution)."""
    sigmas = diffkit.build("schedule", "linear").sigmas_for(1000, "trailing")
    x = torch.randn(256, 4, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])
    sampler = diffkit.get("sampler", name)
    half = sampler(denoiser_torch, x.to(torch.bfloat16), sigmas, generator=torch.Generator().manual_seed(1))
    full = sampler(denoiser_torch, x.to(torch.bfloat16).float(), sigmas, generator=torch.Generator().manual_seed(1))
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), full.to(torch.bfloat16).float(), rtol=0, atol=1e-6)


# one bad value per option of every built-in sampler: refused by diffkit.build (the registered
# check) and by the sampler itself, with the same message, before any denoiser call
BAD_OPTIONS = {
    "ddim": ({"eta": -1.0}, "eta must be a finite number ≥ 0"),
    "ddpm": ({"variance": "huge"}, "DDPM variance"),
    "euler": ({"s_noise": -1.0}, "s_noise must be a finite number ≥ 0"),
    "heun": ({"s_tmin": 2.0, "s_tmax": 1.0}, r"s_tmax \(1.0\) must be ≥ s_tmin \(2.0\)"),
    "dpm2": ({"s_churn": math.nan}, "s_churn must be a finite number ≥ 0"),
    "lms": ({"order": 0}, "order must be an integer ≥ 1"),
    "dpmpp_3m": ({"lower_order_final": 1}, "lower_order_final must be True or False"),
    "unipc": ({"order": 4}, "order must be one of 1, 2 or 3"),
    "euler_ancestral": ({"s_noise": math.inf}, "s_noise must be a finite number ≥ 0"),
    "dpmpp_2s_ancestral": ({"eta": "1"}, "eta must be a finite number ≥ 0"),
    "dpmpp_2m_sde": ({"solver_type": "rk4"}, "solver_type"),
    "dpmpp_3m_sde": ({"d2_weight": "half"}, r"unknown d2_weight 'half' \(valid: dpm_solver, taylor\)"),
}


@pytest.mark.parametrize("name", sorted(BAD_OPTIONS))
def test_a_bad_option_is_refused_when_the_sampler_is_chosen(name):
    options, message = BAD_OPTIONS[name]
    with pytest.raises(DiffkitError, match=message) as chosen:
        diffkit.build("sampler", name, **options)
    assert name in str(chosen.value)  # the message names the sampler

    def never(x, sigma, cond=None):
        raise AssertionError("the denoiser was called before the options were checked")

    with pytest.raises(DiffkitError, match=message):
        diffkit.get("sampler", name)(never, torch.zeros(1, 2), torch.tensor([1.0, 0.0]), **options)


def test_every_built_in_sampler_with_options_has_a_bad_value_case():
    with_options = {
        name for name in diffkit.names("sampler")
        if diffkit.get_entry("sampler", name).obj.__module__.startswith("diffkit.")
        and set(inspect.signature(diffkit.get("sampler", name)).parameters)
        - {"denoiser", "x", "sigmas", "cond", "generator", "callback", "noise_sampler"}
    }
    assert with_options == set(BAD_OPTIONS)


def test_the_check_sees_the_signature_defaults_for_options_not_given():
    # s_tmin alone above the default s_tmax = inf is fine; above a given s_tmax it is not
    diffkit.build("sampler", "heun", s_tmin=5.0)
    with pytest.raises(DiffkitError, match="s_tmax"):
        diffkit.build("sampler", "heun", s_tmax=1.0, s_tmin=5.0)
