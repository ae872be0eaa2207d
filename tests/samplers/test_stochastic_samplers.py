"""Ancestral and SDE samplers (euler_ancestral, dpmpp_2s_ancestral, dpmpp_2m_sde, dpmpp_3m_sde):
against their VP-form numpy twins, invariants, convergence orders at η = 0, and diffusers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import diffkit
from diffkit.errors import ConfigError, UnknownNameError
from diffkit.samplers.ancestral import dpmpp_2s_ancestral, euler_ancestral
from diffkit.samplers.common import ancestral_sigmas
from diffkit.samplers.dpmpp_sde import dpmpp_2m_sde, dpmpp_3m_sde
from diffkit.testing.grids import karras_sigmas
from diffkit_reference import stochastic_samplers as ref
from tests.analytic_models import MU, ExactVPModel, S, denoiser_numpy, denoiser_torch
from tests.sweeps import SCHEDULES, SPACINGS

SAMPLERS = {
    "euler_ancestral": (euler_ancestral, ref.euler_ancestral_sample),
    "dpmpp_2s_ancestral": (dpmpp_2s_ancestral, ref.dpmpp_2s_ancestral_sample),
    "dpmpp_2m_sde": (dpmpp_2m_sde, ref.dpmpp_2m_sde_sample),
    "dpmpp_3m_sde": (dpmpp_3m_sde, ref.dpmpp_3m_sde_sample),
}


class Feeder:
    """A noise_sampler handing out pre-drawn N(0, I) arrays in call order, counting the calls."""

    def __init__(self, shape: tuple[int, ...], seed: int, as_torch: bool) -> None:
        self.rng, self.shape, self.as_torch, self.calls = np.random.default_rng(seed), shape, as_torch, 0

    def __call__(self, sigma: float, sigma_next: float):
        self.calls += 1
        z = self.rng.standard_normal(self.shape)
        return torch.from_numpy(z) if self.as_torch else z


def _extra_options(name: str, data) -> dict:
    if name == "dpmpp_2m_sde":
        return {"solver_type": data.draw(st.sampled_from(["midpoint", "heun"]))}
    if name == "dpmpp_3m_sde":
        return {"d2_weight": data.draw(st.sampled_from(["dpm_solver", "taylor"]))}
    return {}


# -- the numpy twins (VP form) ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(SAMPLERS))
@given(
    schedule=st.sampled_from(SCHEDULES),
    spacing=st.sampled_from(SPACINGS),
    steps=st.integers(1, 40),
    # η > 1 exercises the σ_up ≤ σ' clamp; subnormal η (σ_up underflowing to 0) is left out
    eta=st.one_of(st.just(0.0), st.floats(1e-3, 1.5)),
    s_noise=st.sampled_from([0.0, 0.5, 1.0]),
    rescale=st.booleans(),
    seed=st.integers(0, 2**16),
    data=st.data(),
)
def test_matches_the_vp_reference_with_the_same_noise(name, schedule, spacing, steps, eta, s_noise, rescale, seed, data):
    fn, twin = SAMPLERS[name]
    options = {"eta": eta, "s_noise": s_noise, **_extra_options(name, data)}
    sigmas = diffkit.build("schedule", schedule, rescale_zero_terminal_snr=rescale).sigmas_for(steps, spacing)
    x = np.random.default_rng(seed).standard_normal((3, 2, 2)) * float(sigmas[0])
    ours_noise, twin_noise = Feeder(x.shape, seed + 1, True), Feeder(x.shape, seed + 1, False)
    ours = fn(denoiser_torch, torch.from_numpy(x), sigmas, noise_sampler=ours_noise, **options)
    theirs = twin(denoiser_numpy, x, sigmas.numpy(), noise_sampler=twin_noise, **options)
    assert ours_noise.calls == twin_noise.calls  # the same draws, in the same order
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_noise_is_drawn_once_per_step_except_the_last(name):
    fn, _ = SAMPLERS[name]
    sigmas = karras_sigmas(9, 0.05, 80.0)
    feeder = Feeder((2, 3), 0, True)
    fn(denoiser_torch, torch.randn(2, 3, dtype=torch.float64) * 80, sigmas, noise_sampler=feeder)
    assert feeder.calls == 8
    silent = Feeder((2, 3), 0, True)  # η = 0 or s_noise = 0: no noise asked for at all
    fn(denoiser_torch, torch.randn(2, 3, dtype=torch.float64) * 80, sigmas, noise_sampler=silent, eta=0.0)
    fn(denoiser_torch, torch.randn(2, 3, dtype=torch.float64) * 80, sigmas, noise_sampler=silent, s_noise=0.0)
    assert silent.calls == 0


# -- identities with the other samplers ---------------------------------------------------------


def test_euler_ancestral_is_ddim_with_the_same_eta():
    # Euler to σ_down then σ_up·z is DDIM eq. 12/16 in σ form; η = 0 is plain DDIM/Euler
    sigmas = diffkit.build("schedule", "scaled_linear").sigmas_for(25, "trailing")
    x = torch.randn(4, 3, dtype=torch.float64) * sigmas[0]
    for eta in (0.0, 0.6, 1.0):
        a = euler_ancestral(denoiser_torch, x, sigmas, eta=eta, generator=torch.Generator().manual_seed(2))
        b = diffkit.get("sampler", "ddim")(denoiser_torch, x, sigmas, eta=eta, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_dpmpp_2m_sde_with_eta_zero_is_dpmpp_2m():
    sigmas = diffkit.build("schedule", "linear").sigmas_for(20, "trailing")
    x = torch.randn(5, 3, dtype=torch.float64) * sigmas[0]
    a = dpmpp_2m_sde(denoiser_torch, x, sigmas, eta=0.0)
    b = diffkit.get("sampler", "dpmpp_2m")(denoiser_torch, x, sigmas)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_s_noise_scales_only_the_added_noise():
    # one noisy step then the last: y' = (deterministic part) + s_noise·σ_up·z, and D is affine in y here,
    # so the output is affine in s_noise
    sigmas = torch.tensor([5.0, 1.0, 0.0], dtype=torch.float64)
    x = torch.randn(3, 2, dtype=torch.float64) * 5
    z = torch.randn(3, 2, dtype=torch.float64)
    for fn in (euler_ancestral, dpmpp_2s_ancestral, dpmpp_2m_sde, dpmpp_3m_sde):
        outs = [fn(denoiser_torch, x, sigmas, s_noise=s, noise_sampler=lambda a, b: z) for s in (0.0, 1.0, 2.0)]
        torch.testing.assert_close(outs[2] - outs[1], outs[1] - outs[0], rtol=1e-12, atol=1e-12)
        assert not torch.equal(outs[1], outs[0])


# -- the σ_up clamp (no √ of a negative number) -------------------------------------------------


def _diffusers_style_cosine_grid(steps: int) -> torch.Tensor:
    """The cosine (squaredcos_cap_v2) σ grid as diffusers builds it: ᾱ = cumprod(1 − β) in float32."""
    schedule = diffkit.build("schedule", "cosine")
    abar = torch.cumprod(1 - schedule.betas.float(), 0)
    table = ((1 - abar) / abar) ** 0.5
    return torch.cat([table[schedule.timesteps(steps, "linspace")], torch.zeros(1)])


def test_cosine_schedule_with_few_steps_gives_no_nan_where_the_unclamped_formula_does():
    sigmas = _diffusers_style_cosine_grid(4)  # float32, σ_max ≈ 2.0e4, then 1.75, 0.59, 0
    frm, to = sigmas[:-2], sigmas[1:-1]
    # k-diffusion / diffusers: σ_up = √(σ'²(σ² − σ'²)/σ²), σ_down = √(σ'² − σ_up²): rounding makes σ_up > σ'
    sigma_up = (to**2 * (frm**2 - to**2) / frm**2) ** 0.5
    assert torch.isnan((to**2 - sigma_up**2) ** 0.5).any()
    for s, s_next in zip(sigmas[:-1].tolist(), sigmas[1:].tolist()):
        down, up = ancestral_sigmas(s, s_next, 1.0)
        assert 0 <= up <= s_next and down >= 0 and math.isclose(down**2 + up**2, s_next**2, rel_tol=1e-12)
    for fn in (euler_ancestral, dpmpp_2s_ancestral):
        for dtype in (torch.float32, torch.bfloat16):  # (float16 cannot hold x = 2e4·z itself)
            x = (torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * sigmas[0]).to(dtype)
            out = fn(denoiser_torch, x, sigmas, generator=torch.Generator().manual_seed(1))
            assert out.dtype == dtype and torch.isfinite(out).all()


def test_eta_above_one_clamps_sigma_up_to_sigma_next():
    # η = 3: η·σ'√(σ² − σ'²)/σ > σ', so σ_up = σ' and σ_down = 0: y' = D + σ'·z, then the last step gives D
    sigmas = torch.tensor([8.0, 2.0, 0.0], dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64) * 8
    z = torch.randn(4, 3, dtype=torch.float64)
    middle = denoiser_torch(x, sigmas[:1].expand(4)) + 2.0 * z
    expected = denoiser_torch(middle, sigmas[1:2].expand(4))
    for fn in (euler_ancestral, dpmpp_2s_ancestral):
        out = fn(denoiser_torch, x, sigmas, eta=3.0, noise_sampler=lambda a, b: z)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


# -- convergence order at η = 0 (deterministic ODE solvers) --------------------------------------

ORDER_STEPS = (80, 160, 320)
ORDER_SIGMA_MIN = 1e-4  # the final jump σ_min → 0 misses the flow by O(σ_min²) ≈ 1e-8, below every error here


def _observed_order(fn, **options) -> float:
    """Slope of −log(max error) vs log N on Gaussian data against the exact ODE endpoint."""
    x = torch.linspace(-3, 3, 13, dtype=torch.float64).reshape(13, 1) * 80.0
    exact = MU + (x - MU) * S / math.sqrt(S**2 + 80.0**2)  # the probability-flow map from σ = 80 to 0
    errors = [float((fn(denoiser_torch, x, karras_sigmas(n, ORDER_SIGMA_MIN, 80.0), eta=0.0, **options) - exact)
                    .abs().max()) for n in ORDER_STEPS]
    slope = np.polyfit(np.log(ORDER_STEPS), np.log(errors), 1)[0]
    return float(-slope)


@pytest.mark.parametrize(
    "fn, options, order",
    [
        (euler_ancestral, {}, 1),
        (dpmpp_2s_ancestral, {}, 2),
        (dpmpp_2m_sde, {"solver_type": "midpoint"}, 2),
        (dpmpp_2m_sde, {"solver_type": "heun"}, 2),
        (dpmpp_3m_sde, {}, 2),  # the default: k-diffusion's half-weight Δ2, second order
        (dpmpp_3m_sde, {"d2_weight": "taylor"}, 3),  # the full Taylor weight: third order
    ],
    ids=["euler_ancestral", "dpmpp_2s_ancestral", "dpmpp_2m_sde-midpoint", "dpmpp_2m_sde-heun", "dpmpp_3m_sde",
         "dpmpp_3m_sde-taylor"],
)
def test_with_eta_zero_the_solver_converges_with_its_order(fn, options, order):
    observed = _observed_order(fn, **options)
    assert abs(observed - order) <= 0.3, observed


# -- options, dtypes, reproducibility -----------------------------------------------------------


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize(
    "option, value, message",
    [
        ("eta", -0.5, "eta must be a finite number ≥ 0"),
        ("eta", float("nan"), "eta must be a finite number ≥ 0"),
        ("s_noise", -1.0, "s_noise must be a finite number ≥ 0"),
        ("s_noise", float("inf"), "s_noise must be a finite number ≥ 0"),
        ("s_noise", True, "s_noise must be a finite number ≥ 0"),
    ],
)
def test_bad_options_are_rejected(name, option, value, message):
    fn, _ = SAMPLERS[name]
    with pytest.raises(ConfigError, match=message):
        fn(denoiser_torch, torch.zeros(1, 2), torch.tensor([1.0, 0.0]), **{option: value})
    with pytest.raises(ConfigError, match=message):  # the registered check refuses it when chosen
        diffkit.build("sampler", name, **{option: value})


def test_bad_solver_type_and_flag_are_rejected():
    with pytest.raises(UnknownNameError, match="did you mean 'heun'"):
        dpmpp_2m_sde(denoiser_torch, torch.zeros(1, 2), torch.tensor([1.0, 0.0]), solver_type="huen")
    with pytest.raises(ConfigError, match="did you mean 'midpoint'|valid: .*midpoint"):
        diffkit.build("sampler", "dpmpp_2m_sde", solver_type="euler")
    with pytest.raises(UnknownNameError, match=r"unknown d2_weight 'tailor'; did you mean 'taylor'\?"):
        dpmpp_3m_sde(denoiser_torch, torch.zeros(1, 2), torch.tensor([1.0, 0.0]), d2_weight="tailor")
    with pytest.raises(ConfigError, match="match_dpm_solver_code must be True or False"):
        dpmpp_3m_sde(denoiser_torch, torch.zeros(1, 2), torch.tensor([1.0, 0.0]), match_dpm_solver_code=1)
    with pytest.raises(UnknownNameError, match="unknown option .* 'solver_type'"):
        diffkit.build("sampler", "dpmpp_3m_sde", solver_type="heun")  # 3M SDE has no solver_type


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(SAMPLERS))
def test_low_precision_inputs_keep_their_dtype_without_nan(name, dtype):
    sigmas = diffkit.build("schedule", "scaled_linear", rescale_zero_terminal_snr=True).sigmas_for(30, "trailing")
    x = (torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])).to(dtype)
    out = SAMPLERS[name][0](denoiser_torch, x, sigmas, generator=torch.Generator().manual_seed(0))
    assert out.dtype == dtype and out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_a_sample_does_not_depend_on_batch_size_with_per_sample_generators(name):
    schedule = diffkit.build("schedule", "linear")
    denoiser = diffkit.VPDenoiser(ExactVPModel(schedule, "eps"), schedule)

    def run(seeds):
        return diffkit.sample(denoiser, (len(seeds), 3, 4, 4), schedule=schedule, sampler=name, steps=15,
                              generator=[torch.Generator().manual_seed(s) for s in seeds], dtype=torch.float64)

    torch.testing.assert_close(run([11, 12, 13])[1:2], run([12]), rtol=1e-12, atol=1e-12)


def test_callback_reports_the_first_denoiser_call_of_each_step():
    sigmas = karras_sigmas(6, 0.05, 80.0)
    x = torch.randn(2, 3, dtype=torch.float64) * 80
    for fn in (dpmpp_2s_ancestral, dpmpp_3m_sde):
        seen, calls = [], []

        def recording(y, sigma, cond=None):
            calls.append(float(sigma[0]))
            return denoiser_torch(y, sigma)

        fn(recording, x, sigmas, callback=seen.append, generator=torch.Generator().manual_seed(0))
        assert [info["sigma"] for info in seen] == sigmas[:-1].tolist()
        assert all(float(info["sigma"]) in calls for info in seen)


# -- side by side with diffusers (its σ grid in float64, the exact ε network, the same draws) -----


def _peer_sigmas64(peer, schedule) -> torch.Tensor:
    """diffusers' σ grid recomputed in float64: the σ table interpolated linearly (np.interp, as
    diffusers does) at the scheduler's timesteps, then 0."""
    table = schedule.sigmas.numpy()
    t = peer.timesteps.numpy().astype(np.float64)
    return torch.from_numpy(np.append(np.interp(t, np.arange(len(table)), table), 0.0))


def _peer(cls, schedule_name, peer_name, **config):
    schedule = diffkit.build("schedule", schedule_name)
    betas = {k: getattr(schedule, k) for k in ("beta_start", "beta_end") if hasattr(schedule, k)}
    peer = cls(beta_schedule=peer_name, **betas, **config)
    peer.betas = schedule.betas.clone()  # identical float64 tables on both sides
    peer.alphas_cumprod = schedule.alphas_cumprod.clone()
    return peer, schedule


@pytest.mark.parametrize(
    "schedule_name, peer_name",
    [("linear", "linear"), ("scaled_linear", "scaled_linear"), ("cosine", "squaredcos_cap_v2")],
)
@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("steps", [4, 25])
def test_euler_ancestral_matches_diffusers(schedule_name, peer_name, spacing, steps):
    diffusers = pytest.importorskip("diffusers")
    peer, schedule = _peer(diffusers.EulerAncestralDiscreteScheduler, schedule_name, peer_name,
                           timestep_spacing=spacing)
    peer.set_timesteps(steps)
    sigmas = _peer_sigmas64(peer, schedule)
    # diffusers computes σ_up/σ_down from float32 σ (NaN for cosine at 4 steps, see the clamp test):
    # give it the same grid in float64, so both sides differ only by the sampler
    peer.sigmas = sigmas.clone()
    model = ExactVPModel(schedule, "eps")
    x = torch.randn(3, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * float(sigmas[0])
    gen_peer, gen_ours = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    expected = x.clone()
    for i, t in enumerate(peer.timesteps):
        # the model sees σ_i exactly (t recomputed in float64 from it), not the float32 timestep
        eps = model(peer.scale_model_input(expected, t), schedule.sigma_to_t(sigmas[i : i + 1]).expand(3))
        expected = peer.step(eps, t, expected, generator=gen_peer).prev_sample  # one draw per step, the last unused
    noise = lambda s, s_next: torch.randn(x.shape, generator=gen_ours, dtype=torch.float64)
    ours = euler_ancestral(diffkit.VPDenoiser(model, schedule), x.clone(), sigmas, noise_sampler=noise)
    # diffusers rounds the sample to float32 inside step(): an error ≈ 2⁻²⁴·|x| at σ_max, shrunk by σ_down/σ
    tolerance = 1e-6 if float(sigmas[0]) < 200 else 2e-4
    torch.testing.assert_close(ours, expected, rtol=0, atol=tolerance)


@pytest.mark.parametrize("schedule_name", ["linear", "scaled_linear"])
@pytest.mark.parametrize("solver_type", ["midpoint", "heun"])
@pytest.mark.parametrize("steps", [10, 25])
def test_dpmpp_2m_sde_matches_diffusers_sde_dpmsolver(schedule_name, solver_type, steps):
    diffusers = pytest.importorskip("diffusers")
    peer, schedule = _peer(diffusers.DPMSolverMultistepScheduler, schedule_name, schedule_name,
                           algorithm_type="sde-dpmsolver++", solver_order=2, solver_type=solver_type)
    peer.set_timesteps(steps)
    sigmas = _peer_sigmas64(peer, schedule)
    peer.sigmas = sigmas.clone()  # float64 coefficients on diffusers' side too
    model = ExactVPModel(schedule, "eps")
    x_t = torch.randn(3, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    gen_peer, gen_ours = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    expected = x_t.clone()
    for i, t in enumerate(peer.timesteps):
        eps = model(expected, schedule.sigma_to_t(sigmas[i : i + 1]).expand(3))
        expected = peer.step(eps, t, expected, generator=gen_peer).prev_sample
    # diffusers draws float32 noise every step (the last one multiplied by σ' = 0): the same draws here
    noise = lambda s, s_next: torch.randn(x_t.shape, generator=gen_ours, dtype=torch.float32).double()
    ours = dpmpp_2m_sde(diffkit.VPDenoiser(model, schedule), x_t * math.sqrt(1 + float(sigmas[0]) ** 2), sigmas,
                        solver_type=solver_type, noise_sampler=noise)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-6)
