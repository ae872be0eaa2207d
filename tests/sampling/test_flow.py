"""Flow matching through the σ-form contract: the schedule's grids, FlowDenoiser, and the samplers
on it, against diffusers' flow schedulers and the float64 reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import diffkit
import diffkit_reference.flow as ref
from diffkit.errors import ConfigError
from diffkit.schedules import FLOW_SIGMA_MAX, places_timesteps
from tests.sweeps import conforming_samplers

SHAPE = (3, 2, 4, 4)


class Velocity(torch.nn.Module):
    """A fixed smooth velocity field v(x_t, t·T): any deterministic network serves for parity."""

    def __init__(self, channels: int = 2, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.mix = torch.nn.Parameter(torch.randn(channels, channels, generator=g, dtype=torch.float64) / 2)
        self.bias = torch.nn.Parameter(torch.randn(channels, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        t = (timestep.to(x.dtype) / 1000).reshape(-1, 1, 1, 1)
        mixed = torch.einsum("oc,bchw->bohw", self.mix.to(x.dtype), x)
        return torch.tanh(mixed + t * self.bias.to(x.dtype).reshape(1, -1, 1, 1)) + x * (1 - t)


def noise(dtype=torch.float64) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(dtype)


def run_sampler(name: str, schedule, grid: torch.Tensor, model=None, dtype=torch.float64, **options) -> torch.Tensor:
    denoiser = diffkit.FlowDenoiser(Velocity() if model is None else model, schedule)
    with torch.no_grad():
        return diffkit.get("sampler", name)(denoiser, noise(dtype) * float(grid[0]), grid, **options)


def run_diffusers(scheduler, steps: int, model=None, **set_timesteps) -> torch.Tensor:
    model = Velocity() if model is None else model
    scheduler.set_timesteps(steps, **set_timesteps)
    x = noise(torch.float32)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t.expand(x.shape[0])), t, x).prev_sample
    return x


# -- the schedule --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [1, 4, 20, 50])
def test_uniform_grid_is_diffusers_flow_match_euler_grid(shift, steps):
    diffusers = pytest.importorskip("diffusers")
    theirs = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)
    theirs.set_timesteps(steps)
    schedule = diffkit.build("schedule", "flow", shift=shift)
    grid = schedule.sigmas_for(steps)
    np.testing.assert_allclose(schedule.sigma_to_t(grid[:-1]).numpy(), theirs.timesteps.numpy(), rtol=1e-6)
    assert grid[0] == FLOW_SIGMA_MAX and grid[-1] == 0 and bool((grid[1:] < grid[:-1]).all())


@pytest.mark.parametrize("image_seq_len", [256, 1024, 4096])
def test_dynamic_shift_grid_is_diffusers_grid(image_seq_len):
    diffusers = pytest.importorskip("diffusers")
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    theirs = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    theirs.set_timesteps(12, mu=calculate_shift(image_seq_len))
    schedule = diffkit.build("schedule", "flow", use_dynamic_shifting=True)
    grid = schedule.sigmas_for(12, image_seq_len=image_seq_len)
    np.testing.assert_allclose(schedule.sigma_to_t(grid[:-1]).numpy(), theirs.timesteps.numpy(), rtol=1e-6)


def test_bad_flow_options_are_refused_before_any_work():
    with pytest.raises(ConfigError, match="shift must be"):
        diffkit.build("schedule", "flow", shift=0.0)
    with pytest.raises(ConfigError, match="shift must be"):
        diffkit.build("schedule", "flow", shift=math.nan)
    with pytest.raises(ConfigError, match="max_image_seq_len"):
        diffkit.build("schedule", "flow", base_image_seq_len=4096, max_image_seq_len=256)
    dynamic = diffkit.build("schedule", "flow", use_dynamic_shifting=True)
    with pytest.raises(ConfigError, match="needs mu= or image_seq_len="):
        dynamic.sigmas_for(10)
    with pytest.raises(ConfigError, match="not both"):
        dynamic.sigmas_for(10, mu=1.0, image_seq_len=1024)
    with pytest.raises(ConfigError, match="image_seq_len must be"):
        dynamic.sigmas_for(10, image_seq_len=-3)
    with pytest.raises(ConfigError, match="only apply with spacing='uniform'"):
        dynamic.sigmas_for(10, "karras", mu=1.0)
    with pytest.raises(ConfigError, match="strictly decreasing"):
        dynamic.sigmas_from_timesteps([500.0, 800.0])
    with pytest.raises(ConfigError, match=r"lie in \(0, 1000\]"):
        dynamic.sigmas_from_timesteps([1200.0, 800.0])
    with pytest.raises(ConfigError, match="use diffkit.FlowDenoiser"):
        diffkit.VPDenoiser(Velocity(), dynamic, "v")
    with pytest.raises(ConfigError, match="needs a FlowSchedule"):
        diffkit.FlowDenoiser(Velocity(), diffkit.build("schedule", "linear"))
    with pytest.raises(diffkit.UnknownNameError, match="velocity"):
        diffkit.FlowDenoiser(Velocity(), dynamic, prediction="v")


def test_sigma_spacings_place_a_grid_on_the_flow_table_and_timestep_spacings_are_refused():
    schedule = diffkit.build("schedule", "flow", shift=3.0)
    for spacing in diffkit.names("spacing"):
        if places_timesteps(spacing):
            with pytest.raises(ConfigError, match="continuous: use 'uniform'"):
                schedule.sigmas_for(8, spacing)
            continue
        grid = schedule.sigmas_for(8, spacing)
        assert grid.shape == (9,) and grid[-1] == 0 and bool((grid[1:] < grid[:-1]).all()), spacing
        assert grid[0] == pytest.approx(FLOW_SIGMA_MAX) and grid[-2] == pytest.approx(schedule.sigma_min), spacing


# -- FlowDenoiser -------------------------------------------------------------------------------------


@pytest.mark.parametrize("prediction", ["velocity", "x0", "epsilon"])
def test_flow_denoiser_recovers_x0_from_an_exact_network(prediction):
    """A network that returns the true target of its prediction type gives D(y, σ) = x0 exactly."""
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(SHAPE, generator=g, dtype=torch.float64), torch.randn(SHAPE, generator=g, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.93], dtype=torch.float64)
    target = {"velocity": eps - x0, "x0": x0, "epsilon": eps}[prediction]
    schedule = diffkit.build("schedule", "flow")

    def exact(x_t, timestep):
        np.testing.assert_allclose(timestep.numpy(), t.numpy() * 1000, rtol=1e-12)
        tt = t.reshape(-1, 1, 1, 1)
        torch.testing.assert_close(x_t, ref_x_t(x0, eps, tt))
        return target

    sigma = t / (1 - t)
    y = x0 + sigma.reshape(-1, 1, 1, 1) * eps
    torch.testing.assert_close(diffkit.FlowDenoiser(exact, schedule, prediction)(y, sigma), x0)


def ref_x_t(x0, eps, t):
    return torch.from_numpy(ref.flow_forward(x0.numpy(), eps.numpy(), t.numpy()))


# -- samplers on flow = diffusers' flow schedulers ------------------------------------------------------


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [4, 20])
def test_euler_on_flow_is_flow_match_euler(shift, steps):
    diffusers = pytest.importorskip("diffusers")
    theirs = run_diffusers(diffusers.FlowMatchEulerDiscreteScheduler(shift=shift), steps)
    schedule = diffkit.build("schedule", "flow", shift=shift)
    ours = run_sampler("euler", schedule, schedule.sigmas_for(steps))
    torch.testing.assert_close(ours.float(), theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("image_seq_len", [256, 4096])
def test_euler_with_dynamic_shift_is_flow_match_euler(image_seq_len):
    diffusers = pytest.importorskip("diffusers")
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    scheduler = diffusers.FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    theirs = run_diffusers(scheduler, 10, mu=calculate_shift(image_seq_len))
    schedule = diffkit.build("schedule", "flow", use_dynamic_shifting=True)
    ours = run_sampler("euler", schedule, schedule.sigmas_for(10, image_seq_len=image_seq_len))
    torch.testing.assert_close(ours.float(), theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shift", [1.0, 3.0])
@pytest.mark.parametrize("steps", [4, 12])
def test_heun_on_flow_is_flow_match_heun(shift, steps):
    """``heun`` on a FlowDenoiser takes the trapezoid in flow time t (``time="auto"`` → ``"flow"``):
    diffusers' FlowMatchHeunDiscreteScheduler, 2N − 1 network calls, Euler into t = 0."""
    diffusers = pytest.importorskip("diffusers")
    theirs = run_diffusers(diffusers.FlowMatchHeunDiscreteScheduler(shift=shift), steps)
    schedule = diffkit.build("schedule", "flow", shift=shift)
    grid = schedule.sigmas_for(steps)
    ours = run_sampler("heun", schedule, grid)
    torch.testing.assert_close(ours.float(), theirs, rtol=1e-5, atol=1e-5)
    assert torch.equal(run_sampler("heun", schedule, grid, time="flow"), ours)
    sigma_trapezoid = run_sampler("heun", schedule, grid, time="sigma")  # EDM's: another method
    assert (sigma_trapezoid.float() - theirs).abs().max() > 1e-3


def test_flow_heun_equals_its_reference_twin_and_guidance_keeps_the_path():
    """torch heun(time="flow") = the float64 twin (written with v = ε̂ − x̂0); CFGDenoiser around a
    FlowDenoiser reports path "flow", so heun's auto choice is the same under guidance."""
    from diffkit.samplers.edm import heun_time
    from diffkit.sampling import CFGDenoiser
    from diffkit_reference.ode_samplers import edm_heun_sample

    schedule = diffkit.build("schedule", "flow", shift=3.0)
    grid = schedule.sigmas_for(10)
    denoiser = diffkit.FlowDenoiser(Velocity(), schedule)

    def numpy_denoiser(y, sigma, cond=None):
        with torch.no_grad():
            return denoiser(torch.from_numpy(y), torch.from_numpy(sigma)).numpy()

    start = noise() * float(grid[0])
    twin = edm_heun_sample(numpy_denoiser, start.numpy(), grid.numpy(), time="flow")
    ours = run_sampler("heun", schedule, grid)
    np.testing.assert_allclose(ours.numpy(), twin, rtol=1e-9, atol=1e-9)
    guided = CFGDenoiser(denoiser, 1.0, uncond=None)
    assert guided.path == "flow" and heun_time(guided, "auto") == "flow"
    assert heun_time(lambda y, s, c=None: y, "auto") == "sigma"


def test_a_bad_heun_time_is_named_when_the_sampler_is_chosen():
    from diffkit.errors import UnknownNameError

    with pytest.raises((ConfigError, UnknownNameError), match="'flow'"):
        diffkit.build("sampler", "heun", time="flwo")


def test_flow_euler_is_ddim_is_sigma_form_euler():
    """x_t' = x_t + (t' − t)·v is σ-form Euler is DDIM (η = 0) on the same grid, in float64."""
    schedule = diffkit.build("schedule", "flow", shift=3.0)
    grid = schedule.sigmas_for(12)
    model = Velocity()
    euler, ddim = run_sampler("euler", schedule, grid, model), run_sampler("ddim", schedule, grid, model)
    ts = ref.t_from_sigma(grid.numpy())
    ts[0] = 1.0  # the exact start, which the σ grid holds as FLOW_SIGMA_MAX

    def velocity(x, t):
        return model(torch.from_numpy(x), torch.full((SHAPE[0],), t * 1000, dtype=torch.float64)).detach().numpy()

    flow = ref.flow_euler_sample(velocity, noise().numpy(), ts)
    np.testing.assert_allclose(euler.numpy(), flow, rtol=0, atol=1e-7)
    np.testing.assert_allclose(ddim.numpy(), euler.numpy(), rtol=0, atol=1e-10)


def test_the_t_equals_one_start_is_exact_to_round_off():
    """Starting at FLOW_SIGMA_MAX ends within 1e-7 of flow Euler from t = 1 exactly, where VP's
    zero-terminal-SNR floor σ = 4096 would be ~1e-3 away (shift 3, 20 steps)."""
    schedule = diffkit.build("schedule", "flow", shift=3.0)
    model = Velocity()
    grid = schedule.sigmas_for(20)
    ts = ref.t_from_sigma(grid.numpy())
    ts[0] = 1.0

    def velocity(x, t):
        return model(torch.from_numpy(x), torch.full((SHAPE[0],), t * 1000, dtype=torch.float64)).detach().numpy()

    exact = ref.flow_euler_sample(velocity, noise().numpy(), ts)
    ours = run_sampler("euler", schedule, grid, model).numpy()
    floored = grid.clone()
    floored[0] = 4096.0
    coarse = run_sampler("euler", schedule, floored, model).numpy()
    assert np.abs(ours - exact).max() < 1e-7
    assert np.abs(coarse - exact).max() > 1e3 * np.abs(ours - exact).max()


STOCHASTIC = [("euler_ancestral", {}), ("dpmpp_2s_ancestral", {}), ("dpmpp_2m_sde", {}), ("dpmpp_3m_sde", {}),
              ("ddpm", {}), ("ddim", {"eta": 1.0}), ("euler", {"s_churn": 40.0}), ("heun", {"s_churn": 40.0})]


@pytest.mark.parametrize(
    "name, options", STOCHASTIC, ids=[n + ("+churn" if "s_churn" in o else "") for n, o in STOCHASTIC]
)
def test_stochastic_samplers_reach_the_data_law_on_a_flow_model(name, options):
    """Gaussian data N(μ, diag s²) under the flow path (shift 3), the exact flow denoiser, 400
    steps from t = 1: the samples' mean and standard deviation are the data's (not "noisy").

    Measured (std / s per coordinate at 10, 50, 200 steps): euler_ancestral 0.54 → 0.83 → 0.95
    (the same as on the linear VP table), dpmpp_2s_ancestral 0.62 → 0.95 → 0.99, dpmpp_2m_sde
    1.52 → 1.27 → 1.02 and dpmpp_3m_sde 7.7 → 3.1 → 1.03 (worse than on VP: 0.62/0.67 at 10
    steps), heun with churn (flow trapezoid) 1.05 → 1.01 → 1.00 (docs/samplers.md)."""
    schedule = diffkit.build("schedule", "flow", shift=3.0)
    mean = torch.tensor([0.5, -1.0], dtype=torch.float64)
    std = torch.tensor([0.3, 1.2], dtype=torch.float64)

    def flow_gaussian(y, sigma, cond=None):  # E[x0 | y = x0 + σε], the exact σ-form denoiser
        return mean + std**2 / (std**2 + sigma.reshape(-1, 1) ** 2) * (y - mean)

    denoiser = diffkit.FlowDenoiser(_VelocityOf(flow_gaussian, schedule), schedule)
    grid = schedule.sigmas_for(400)
    x = torch.randn(20000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * float(grid[0])
    with torch.no_grad():
        out = diffkit.get("sampler", name)(denoiser, x, grid, generator=torch.Generator().manual_seed(2), **options)
    # standard errors at n = 20000: mean 0.007·s, std 0.005·s; the first-order samplers' 400-step
    # discretisation error in the std is ≈ 3 %
    assert ((out.mean(0) - mean) / std).abs().max() < 0.05
    assert ((out.std(0) / std) - 1).abs().max() < 0.05


class _VelocityOf(torch.nn.Module):
    """The velocity network v(x_t, t·T) = (x_t − D(y, σ))/t of an exact σ-form denoiser D."""

    def __init__(self, denoiser, schedule) -> None:
        super().__init__()
        self.denoiser, self.schedule = denoiser, schedule

    def forward(self, x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        t = (timestep.to(torch.float64) / self.schedule.num_train_timesteps).reshape(-1, 1)
        sigma = self.schedule.t_to_sigma(timestep).reshape(-1, 1)
        y = x_t / (1 - t).clamp(min=1 / (1 + FLOW_SIGMA_MAX))
        return (x_t - self.denoiser(y, sigma.flatten())) / t


@pytest.mark.parametrize("name", sorted(conforming_samplers()))
def test_every_sampler_runs_on_a_flow_model_and_stays_finite(name):
    schedule = diffkit.build("schedule", "flow", shift=3.0)
    out = run_sampler(name, schedule, schedule.sigmas_for(8), dtype=torch.float32)
    assert out.shape == SHAPE and bool(torch.isfinite(out).all())


def test_sample_uses_the_flow_schedules_own_spacing():
    """With no spacing named, diffkit.sample places the flow schedule's diffusers-uniform grid."""
    schedule = diffkit.build("schedule", "flow", shift=3.0)
    denoiser = diffkit.FlowDenoiser(Velocity(), schedule)
    start = torch.randn(SHAPE, generator=torch.Generator().manual_seed(0)) * FLOW_SIGMA_MAX
    with torch.no_grad():
        got = diffkit.sample(denoiser, SHAPE, sampler="euler", schedule=schedule, steps=6, generator=0)
        want = diffkit.get("sampler", "euler")(denoiser, start, schedule.sigmas_for(6, "uniform"))
    torch.testing.assert_close(got, want.to(got.dtype))



class TruncatedTime(Velocity):
    """The field at the integer time diffusers' multistep schedulers pass with ``use_flow_sigmas``
    (``timesteps`` are t·T cast to int64, truncated, while the step uses the exact t)."""

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return super().forward(x, torch.floor(timestep.to(torch.float64) + 1e-6).to(x.dtype))


MULTISTEP_PEERS = [
    ("dpmpp_2m", {}, "DPMSolverMultistepScheduler", {}),
    ("unipc", {}, "UniPCMultistepScheduler", {}),
    # diffusers' third-order term is DPM-Solver's code's (half the Taylor weight): dpmpp_3m's default
    ("dpmpp_3m", {}, "DPMSolverMultistepScheduler", {"solver_order": 3}),
    ("unipc", {"order": 3}, "UniPCMultistepScheduler", {"solver_order": 3}),
]


@pytest.mark.parametrize(
    "name, options, class_name, settings", MULTISTEP_PEERS,
    ids=[f"{n}-order{s.get('solver_order', 2)}" for n, _, _, s in MULTISTEP_PEERS],
)
@pytest.mark.parametrize("steps", [5, 12, 25])
def test_multistep_samplers_on_flow_match_diffusers_flow_sigmas(name, options, class_name, settings, steps):
    """dpmpp_2m, dpmpp_3m and unipc (orders 2 and 3) on diffusers' own flow grid = DPMSolverMultistep /
    UniPCMultistep with use_flow_sigmas, flow_shift=3, prediction_type='flow_prediction' and the
    same solver_order, to float32 round-off.

    Two diffusers conventions are matched on our side, not copied into diffkit: the network
    sees the truncated integer t·T (TruncatedTime), and the loop starts from x = ε at the grid's
    first t = shift(1 − 1/T) < 1, i.e. y = (1 + σ₀)·ε, not σ₀·ε.
    """
    diffusers = pytest.importorskip("diffusers")
    scheduler = getattr(diffusers, class_name)(
        use_flow_sigmas=True, flow_shift=3.0, prediction_type="flow_prediction", **settings
    )
    theirs = run_diffusers(scheduler, steps, model=TruncatedTime())
    t = scheduler.sigmas.to(torch.float64)  # diffusers' flow t, last 0
    grid = t / (1 - t)
    denoiser = diffkit.FlowDenoiser(TruncatedTime(), diffkit.build("schedule", "flow", shift=3.0))
    with torch.no_grad():
        ours = diffkit.get("sampler", name)(denoiser, noise() * (1 + float(grid[0])), grid, **options)
    torch.testing.assert_close(ours.float(), theirs, rtol=0, atol=2e-6)
