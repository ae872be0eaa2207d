"""``as_sampler``: diffusers' schedulers as diffkit samplers, checked against diffusers' own loop and analytic answers.

The data are an isotropic Gaussian x0 ~ N(m, s²·I), whose exact denoiser is D(y, σ) = m + s²/(s² + σ²)·(y − m).
The hand-driven loops below are what a diffusers pipeline does — ``set_timesteps(N)`` on the scheduler's
own grid, ``scale_model_input``, a network in the scheduler's own variables (VP: x_t and ε̂ from
x_t = α·x0 + s_t·ε; flow: x_t = (1 − t)·x0 + t·ε and v = ε − x0), ``step`` — written without the adapter.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

from diffkit.errors import ConfigError, UnknownNameError
from diffkit.integrations.diffusers.sampler_adapter import (
    OutOfRangeError,
    as_sampler,
    claimed_order,
    representable_range,
    scheduler_options,
)
from diffkit.schedules.flow import FLOW_SIGMA_MAX
from diffkit.testing.grids import flow_sigmas, karras_sigmas

# diffusers' schedulers hand torch tensors to numpy, which numpy 2 flags; not ours, and not what is tested
pytestmark = [pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")]

MEAN, STD = 0.3, 0.5
WIDE_TABLE = {"beta_start": 1e-6, "beta_end": 0.0201}  # σ ∈ [0.001, 157.5]: the kit's grids fit


def exact_x0(y: torch.Tensor, sigma: float | torch.Tensor) -> torch.Tensor:
    """E[x0 | y] for x0 ~ N(MEAN, STD²·I) seen at noise level σ (σ a float or a [B] tensor)."""
    s = torch.as_tensor(sigma, dtype=y.dtype).reshape(-1, *([1] * (y.ndim - 1)))
    return MEAN + STD**2 / (STD**2 + s * s) * (y - MEAN)


class Counting:
    """The exact denoiser, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, y: torch.Tensor, sigma: torch.Tensor, cond=None) -> torch.Tensor:
        self.calls += 1
        return exact_x0(y, sigma)


def noise(shape=(2, 3, 4, 4), seed=0) -> torch.Tensor:
    return torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# -- the hand-driven diffusers loop on the scheduler's own grid ------------------------------------------------


def hand_loop(scheduler, form: str, steps: int, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' own loop from the noise z; returns (the start in diffkit's σ form, the result in σ form).

    ``form``: "sigma" (the sample is y), "vp" (x_t = y/√(1 + σ²)), "flow" (x_t = (1 − t)·x0 + t·ε), "ddim"
    (VP with σ read from ᾱ at the integer timestep).
    """
    scheduler.set_timesteps(steps)
    sigmas = scheduler.sigmas.double() if hasattr(scheduler, "sigmas") else None
    if form == "sigma":
        sample = z * float(sigmas[0])
        start = sample.clone()
    elif form == "flow":  # x_1 = ε: y = x_t·(1 + σ) at t = sigmas[0] (t = 1 is diffkit's σ = 2³⁰)
        sample = z.clone()
        start = z * (1 + flow_sigma(float(sigmas[0])))
    else:  # VP: x_T = ε; y = x_T·√(1 + σ_0²)
        sample = z.clone()
        s0 = float(sigmas[0]) if form == "vp" else vp_sigma(scheduler, scheduler.timesteps[0])
        start = z * math.sqrt(1 + s0 * s0)
    interpol = getattr(scheduler, "sigmas_interpol", None)
    for k, t in enumerate(scheduler.timesteps):
        if form == "ddim":
            sigma = vp_sigma(scheduler, t)
        elif interpol is not None and not scheduler.state_in_first_order:
            sigma = float(interpol[k])
        else:
            sigma = float(sigmas[k])
        if hasattr(scheduler, "scale_model_input"):
            scheduler.scale_model_input(sample, t)
        sample = scheduler.step(network(sample, sigma, form), t, sample).prev_sample
    if form == "sigma":
        return start, sample
    if form == "flow":
        return start, sample  # t = 0 at the end: x_0 is y
    last = 0.0 if form == "ddim" else float(sigmas[-1])
    return start, sample * math.sqrt(1 + last * last)


def vp_sigma(scheduler, t) -> float:
    a = float(scheduler.alphas_cumprod[int(t)])
    return math.sqrt((1 - a) / a)


def network(sample: torch.Tensor, level: float, form: str) -> torch.Tensor:
    """An exact ε-network in the scheduler's own variables (a velocity network for flow)."""
    if form == "sigma":  # the sample is y = x0 + σ·ε
        return (sample - exact_x0(sample, level)) / level if level > 0 else torch.zeros_like(sample)
    if form == "flow":  # level is t; x_t = (1 − t)·x0 + t·ε, v = ε − x0 = (x_t − x0)/t
        if level == 1.0:  # pure noise: x̂0 = E[x0]
            return sample - MEAN
        return (sample - exact_x0(sample / (1 - level), level / (1 - level))) / level
    alpha, s_t = 1 / math.sqrt(1 + level * level), level / math.sqrt(1 + level * level)  # x_t = α·x0 + s_t·ε
    return (sample - alpha * exact_x0(sample / alpha, level)) / s_t


def flow_sigma(t: float) -> float:
    """σ = t/(1 − t), with t = 1 read as diffkit's FLOW_SIGMA_MAX."""
    return FLOW_SIGMA_MAX if t >= 1.0 else t / (1 - t)


def own_levels(scheduler, steps: int, final_zero: bool = True) -> torch.Tensor:
    """The scheduler's own distinct σ levels (float64 of its float32 values), ending at 0."""
    scheduler.set_timesteps(steps)
    levels = torch.unique_consecutive(scheduler.sigmas.double())
    if float(levels[-1]) != 0:  # DEIS ends at σ_min: the adapter puts that level back itself
        levels = torch.cat([levels[:-1], levels.new_zeros(1)])
    return levels


PARITY = [  # (class, config, form)
    ("EulerDiscreteScheduler", {}, "sigma"),
    ("EulerDiscreteScheduler", {"prediction_type": "epsilon", "timestep_spacing": "trailing"}, "sigma"),
    ("HeunDiscreteScheduler", {}, "sigma"),
    ("KDPM2DiscreteScheduler", {}, "sigma"),
    ("LMSDiscreteScheduler", {}, "sigma"),
    ("DPMSolverMultistepScheduler", {}, "vp"),
    ("DPMSolverMultistepScheduler", {"solver_order": 3}, "vp"),
    ("DPMSolverSinglestepScheduler", {}, "vp"),
    ("UniPCMultistepScheduler", {}, "vp"),
    ("DEISMultistepScheduler", {}, "vp"),
    ("FlowMatchEulerDiscreteScheduler", {"shift": 3.0}, "flow"),
    ("FlowMatchHeunDiscreteScheduler", {"shift": 3.0}, "flow"),
]


@pytest.mark.parametrize("steps", [4, 11])
@pytest.mark.parametrize("name, config, form", PARITY, ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(PARITY)])
def test_equals_diffusers_own_loop_on_its_own_grid(name, config, form, steps):
    cls = getattr(diffusers, name)
    start, expected = hand_loop(cls(**config), form, steps, noise())
    levels = own_levels(cls(**config), steps)
    if form == "flow":  # the scheduler's levels are flow times t; the adapter takes σ = t/(1 − t)
        levels = torch.tensor([flow_sigma(t) for t in levels[:-1].tolist()] + [0.0], dtype=torch.float64)
    grid_config = {k: v for k, v in config.items() if k not in ("timestep_spacing", "shift")}
    got = as_sampler(cls, **grid_config)(Counting(), start, levels)
    gap = float((got - expected).abs().max() / expected.abs().max())
    assert gap <= 1e-6, gap  # float32 round-off; most classes agree bit for bit


@pytest.mark.parametrize("steps", [3, 10])
def test_ddim_equals_diffusers_own_loop_on_its_table(steps):
    # DDIM steps between integer timesteps of its β table; on that grid the adapter is diffusers' loop
    cls = diffusers.DDIMScheduler
    start, expected = hand_loop(cls(clip_sample=False), "ddim", steps, noise())
    peer = cls(clip_sample=False)
    peer.set_timesteps(steps)
    levels = torch.tensor([vp_sigma(peer, t) for t in peer.timesteps] + [0.0], dtype=torch.float64)
    got = as_sampler(cls, clip_sample=False)(Counting(), start, levels)
    assert float((got - expected).abs().max() / expected.abs().max()) <= 1e-6


# -- conversions: σ form ↔ the scheduler's sample, x0 ↔ the network output ------------------------------------


def euler_recursion(y: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """The σ-form Euler / DDIM(η = 0) step y' = x̂0 + (σ'/σ)(y − x̂0), which every first-order method here is."""
    for sigma, nxt in zip(levels[:-1].tolist(), levels[1:].tolist()):
        x0 = exact_x0(y, sigma)
        y = x0 + (nxt / sigma) * (y - x0)
    return y


FIRST_ORDER = [
    ("EulerDiscreteScheduler", "epsilon"), ("EulerDiscreteScheduler", "v_prediction"),
    ("DDIMScheduler", "epsilon"), ("DDIMScheduler", "v_prediction"), ("DDIMScheduler", "sample"),
    ("DPMSolverMultistepScheduler", "epsilon"), ("DPMSolverMultistepScheduler", "v_prediction"),
    ("DPMSolverMultistepScheduler", "sample"), ("EDMEulerScheduler", "epsilon"), ("EDMEulerScheduler", "v_prediction"),
]


@pytest.mark.parametrize("name, prediction", FIRST_ORDER)
def test_first_order_steps_are_the_sigma_form_euler_step(name, prediction):
    # y ↔ x_t = y/√(1 + σ²) (VP) and x̂0 ↔ ε, v or x0 must cancel exactly: DDIM, DPM-Solver(1) and
    # Euler are one method, y' = x̂0 + (σ'/σ)(y − x̂0), on any grid, whatever the network predicts
    cls = getattr(diffusers, name)
    config = {"prediction_type": prediction}
    if name == "DDIMScheduler":
        config["clip_sample"] = False
    if name == "DPMSolverMultistepScheduler":
        config["solver_order"] = 1
    levels = karras_sigmas(7, 0.05, 80.0)
    y = noise() * 80.0
    got = as_sampler(cls, **config)(Counting(), y, levels)
    expected = euler_recursion(y, levels)
    assert float((got - expected).abs().max() / expected.abs().max()) <= 2e-6


def test_flow_euler_from_t_equal_one_is_the_sigma_form_euler_step():
    # the flow form x_t = y/(1 + σ) and the velocity v = (y − (1 + σ)·x̂0)/σ, from σ = 2³⁰ (t = 1)
    levels = flow_sigmas(9)
    y = noise() * float(levels[0])
    got = as_sampler(diffusers.FlowMatchEulerDiscreteScheduler)(Counting(), y, levels)
    expected = euler_recursion(y, levels)
    assert float((got - expected).abs().max() / expected.abs().max()) <= 2e-6


def test_one_step_to_zero_returns_the_denoiser_x0():
    y, levels = noise() * 10.0, torch.tensor([10.0, 0.0], dtype=torch.float64)
    for name in ("EulerDiscreteScheduler", "HeunDiscreteScheduler", "UniPCMultistepScheduler", "DDIMScheduler"):
        config = {"clip_sample": False} if name == "DDIMScheduler" else {}
        got = as_sampler(getattr(diffusers, name), **config)(Counting(), y, levels)
        torch.testing.assert_close(got, exact_x0(y, 10.0), rtol=2e-6, atol=2e-6)


# -- the noise table ---------------------------------------------------------------------------------------------


def test_a_grid_outside_the_beta_table_is_refused_before_any_work():
    lo, hi = representable_range(diffusers.EulerDiscreteScheduler)
    assert lo == pytest.approx(0.01, rel=1e-3) and hi == pytest.approx(157.4, rel=1e-3)  # the default linear table
    denoiser = Counting()
    sampler = as_sampler(diffusers.EulerDiscreteScheduler)
    with pytest.raises(OutOfRangeError, match=r"σ ∈ \[0\.01, 157\.4\].*sigmas\[0\] = 1000"):
        sampler(denoiser, noise(), karras_sigmas(5, 0.1, 1000.0))
    with pytest.raises(OutOfRangeError, match=r"sigmas\[4\] = 0\.001"):
        sampler(denoiser, noise(), karras_sigmas(5, 0.001, 80.0))
    assert denoiser.calls == 0
    # a β table that reaches further takes the same grids
    wide = as_sampler(diffusers.EulerDiscreteScheduler, **WIDE_TABLE)
    assert torch.isfinite(wide(denoiser, noise(), karras_sigmas(5, 0.001, 80.0))).all()


def test_flow_and_edm_schedulers_take_any_sigma_but_not_two_levels_float32_cannot_tell_apart():
    assert representable_range(diffusers.FlowMatchEulerDiscreteScheduler) == (0.0, math.inf)
    assert representable_range(diffusers.EDMEulerScheduler) == (0.0, math.inf)
    sampler = as_sampler(diffusers.FlowMatchEulerDiscreteScheduler)
    with pytest.raises(ConfigError, match="one level in diffusers' float32 time"):
        sampler(Counting(), noise(), torch.tensor([2.0**30, 2.0**29, 1.0, 0.0], dtype=torch.float64))


def test_deis_ends_at_the_tables_sigma_min_and_says_so():
    # DEIS's ε-form step cannot reach σ = 0: diffusers ends it at σ_min, and so does the adapter
    sampler = as_sampler(diffusers.DEISMultistepScheduler)
    seen = []
    sampler(Counting(), noise() * 80, karras_sigmas(6, 0.05, 80.0), callback=seen.append)
    last = seen[-1]
    assert last["i"] == 5 and last["sigma"] == pytest.approx(0.05)
    with pytest.raises(ConfigError, match="ends this configuration at σ = 0.01"):
        sampler(Counting(), noise(), karras_sigmas(6, 0.01, 80.0))


# -- randomness --------------------------------------------------------------------------------------------------

STOCHASTIC = [
    ("EulerAncestralDiscreteScheduler", {}),
    ("KDPM2AncestralDiscreteScheduler", {"beta_schedule": "linear", **WIDE_TABLE}),
    ("DDPMScheduler", {"clip_sample": False}),
    ("DDIMScheduler", {"clip_sample": False, "eta": 1.0}),
    ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}),
    ("EulerDiscreteScheduler", {"s_churn": 2.0}),
]


@pytest.mark.parametrize("name, config", STOCHASTIC, ids=[c for c, _ in STOCHASTIC])
def test_stochastic_schedulers_draw_only_from_the_generator_or_noise_sampler(name, config):
    sampler = as_sampler(getattr(diffusers, name), **config)
    levels = karras_sigmas(8, 0.05, 80.0)
    y = noise((3, 2, 4)) * 80.0

    def run(seed, **kwargs):
        torch.manual_seed(1234 + seed)  # the global RNG must not matter
        return sampler(Counting(), y, levels, generator=torch.Generator().manual_seed(seed), **kwargs)

    assert torch.equal(run(1), run(1))
    assert not torch.equal(run(1), run(2))
    # one generator per sample: sample k does not depend on the batch
    batch = sampler(Counting(), y, levels, generator=[torch.Generator().manual_seed(10 + k) for k in range(3)])
    for k in range(3):
        alone = sampler(Counting(), y[k : k + 1], levels, generator=[torch.Generator().manual_seed(10 + k)])
        assert torch.equal(batch[k : k + 1], alone)

    # with noise_sampler, the generator is not used, and noise_sampler sees the step's levels
    def stream():
        g, calls = torch.Generator().manual_seed(99), []

        def draw(sigma, sigma_next):
            calls.append((sigma, sigma_next))
            return torch.randn(y.shape, generator=g, dtype=y.dtype)

        return draw, calls

    (a, calls), (b, _) = stream(), stream()
    assert torch.equal(run(1, noise_sampler=a), run(2, noise_sampler=b))
    grid = levels.tolist()
    assert calls and all((s, n) in itertools.pairwise(grid) for s, n in calls)


def test_kdpm2_ancestral_asks_about_sigma_zero_and_still_finishes():
    # its last evaluation is at σ_interpol = 0, where x0 = y: the adapter answers without the denoiser
    sampler = as_sampler(diffusers.KDPM2AncestralDiscreteScheduler, beta_schedule="linear", **WIDE_TABLE)
    denoiser = Counting()
    out = sampler(denoiser, noise() * 80, karras_sigmas(5, 0.05, 80.0), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all() and denoiser.calls == 2 * 5 - 2


# -- the contract ------------------------------------------------------------------------------------------------


def test_the_callback_is_called_once_per_grid_step_for_two_evaluation_schedulers():
    levels = karras_sigmas(6, 0.05, 80.0)
    for name in ("HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "FlowMatchHeunDiscreteScheduler"):
        seen, denoiser = [], Counting()
        as_sampler(getattr(diffusers, name), **({} if name.startswith("Flow") else {"beta_schedule": "linear", **WIDE_TABLE}))(
            denoiser, noise() * 80, levels, callback=seen.append)
        assert [info["i"] for info in seen] == list(range(6)), name
        assert [info["sigma"] for info in seen] == pytest.approx(levels[:-1].tolist()), name
        assert denoiser.calls == 2 * 6 - 1, name  # the step into σ = 0 is Euler


def test_calls_are_stateless_and_dtypes_are_kept():
    sampler = as_sampler(diffusers.UniPCMultistepScheduler, solver_order=3)
    levels, y = karras_sigmas(9, 0.05, 80.0), noise() * 80
    first, second = sampler(Counting(), y, levels), sampler(Counting(), y, levels)
    assert torch.equal(first, second)  # a fresh scheduler each call: no multistep history carried over
    for dtype in (torch.float32, torch.float16, torch.bfloat16):
        out = sampler(Counting(), y.to(dtype), levels)
        assert out.dtype == dtype and torch.isfinite(out).all()
    assert float((sampler(Counting(), y.float(), levels).double() - first).abs().max()) < 1e-5


def test_options_are_the_config_keys_and_step_keywords_and_are_checked():
    options = scheduler_options(diffusers.LMSDiscreteScheduler)
    assert options["order"] == 4 and options["beta_schedule"] == "linear"  # step() keyword and config key
    euler = as_sampler(diffusers.EulerDiscreteScheduler)
    import inspect

    signature = inspect.signature(euler).parameters
    assert {"s_churn", "beta_start", "prediction_type", "noise_sampler"} <= set(signature)
    with pytest.raises(UnknownNameError, match="did you mean 's_churn'"):
        euler(Counting(), noise(), karras_sigmas(3, 0.1, 10.0), s_chrun=1.0)
    with pytest.raises(ConfigError, match="use_karras_sigmas=True chooses diffusers' own σ grid"):
        as_sampler(diffusers.EulerDiscreteScheduler, use_karras_sigmas=True)
    with pytest.raises(ConfigError, match="variance_type 'learned'"):
        as_sampler(diffusers.DDPMScheduler, variance_type="learned")
    with pytest.raises(ConfigError, match="refused the configuration"):
        as_sampler(diffusers.DPMSolverMultistepScheduler, algorithm_type="dpmsolver+++")
    with pytest.raises(UnknownNameError, match="PNDMScheduler"):
        as_sampler(diffusers.PNDMScheduler)


def test_claimed_orders_follow_diffusers_documentation():
    assert claimed_order(diffusers.DPMSolverMultistepScheduler, solver_order=3) == 3
    assert claimed_order(diffusers.DPMSolverMultistepScheduler, algorithm_type="sde-dpmsolver++") is None
    assert claimed_order(diffusers.UniPCMultistepScheduler, solver_order=2) == 3  # UniC adds one
    assert claimed_order(diffusers.UniPCMultistepScheduler, solver_order=2, disable_corrector=[0, 1, 2]) == 2
    assert claimed_order(diffusers.LMSDiscreteScheduler) == 4
    assert claimed_order(diffusers.HeunDiscreteScheduler) == 2


def test_a_class_may_be_named():
    sampler = as_sampler("LMSDiscreteScheduler", order=2)
    assert sampler.scheduler_class is diffusers.LMSDiscreteScheduler
    with pytest.raises(UnknownNameError, match="did you mean 'LMSDiscreteScheduler'"):
        as_sampler("LMSDiscreteSchedulr")
