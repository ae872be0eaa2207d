"""dpmpp_2m, dpmpp_3m and unipc against their VP/λ numpy twins, exactness of their update
weights, measured convergence orders, and side by side with diffusers' DPMSolverMultistep
and UniPCMultistep schedulers."""

from __future__ import annotations

import math
import types
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import diffkit
from diffkit.errors import ConfigError, UnknownNameError
from diffkit.samplers.ddim import ddim
from diffkit.samplers.dpmpp_multistep import dpmpp_2m, dpmpp_3m, dpmpp_weights, phi
from diffkit.samplers.unipc import unipc, unipc_weights
from diffkit.testing import check_sampler, problems
from diffkit.testing.grids import karras_sigmas
from diffkit_reference import multistep_samplers as twins
from tests.analytic_models import ExactVPModel, denoiser_numpy, denoiser_torch
from tests.sweeps import SCHEDULES, SPACINGS

# diffusers reads our float64 tables through np.array(tensor), which numpy 2 flags; not ours
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SAMPLERS = {
    "dpmpp_2m": (dpmpp_2m, twins.dpmpp_2m_sample),
    "dpmpp_3m": (dpmpp_3m, twins.dpmpp_3m_sample),
    "unipc": (unipc, twins.unipc_sample),
}
# (sampler, options): every option combination that changes the algorithm
CONFIGS = [
    ("dpmpp_2m", {}),
    ("dpmpp_3m", {}),
    ("dpmpp_3m", {"lower_order_final": False}),
    ("dpmpp_3m", {"d2_weight": "taylor"}),
    ("dpmpp_3m", {"d2_weight": "taylor", "lower_order_final": False}),
    ("unipc", {"order": 1}),
    ("unipc", {}),
    ("unipc", {"lower_order_final": False}),
    ("unipc", {"order": 3}),
    ("unipc", {"order": 3, "lower_order_final": False}),
]
CONFIG_IDS = [name + "".join(f"-{k}={v}" for k, v in options.items()) for name, options in CONFIGS]


def run(name: str, *args, **kwargs) -> torch.Tensor:
    return SAMPLERS[name][0](*args, **kwargs)


# -- against the numpy twins (VP form, λ, expm1) ---------------------------------------------


@given(
    config=st.sampled_from(CONFIGS),
    schedule=st.sampled_from(SCHEDULES),
    spacing=st.sampled_from(SPACINGS),
    steps=st.integers(1, 60),
    rescale=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_matches_the_vp_twin(config, schedule, spacing, steps, rescale, seed):
    name, options = config
    sigmas = diffkit.build("schedule", schedule, rescale_zero_terminal_snr=rescale).sigmas_for(steps, spacing)
    x = np.random.default_rng(seed).standard_normal((3, 2, 2)) * float(sigmas[0])
    ours = run(name, denoiser_torch, torch.from_numpy(x), sigmas, **options)
    theirs = SAMPLERS[name][1](denoiser_numpy, x, sigmas.numpy(), **options)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_one_or_two_steps_are_ddim(config):
    # step 1 is first order (DPM-Solver++(1) = UniP-1 = DDIM) and the last step returns D; UniC's
    # correction at σ_1 does not change D, which was evaluated at the predicted point
    name, options = config
    for steps in (1, 2):
        sigmas = karras_sigmas(steps, 0.5, 80.0)
        x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(steps)) * 80.0
        torch.testing.assert_close(run(name, denoiser_torch, x, sigmas, **options), ddim(denoiser_torch, x, sigmas),
                                   rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_the_last_step_returns_the_last_denoised_value(config):
    name, options = config
    sigmas = diffkit.build("schedule", "linear").sigmas_for(12, "trailing")
    seen = []
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * sigmas[0]
    out = run(name, denoiser_torch, x, sigmas, callback=seen.append, **options)
    assert [info["i"] for info in seen] == list(range(12))
    assert torch.equal(out, seen[-1]["denoised"])
    assert torch.equal(seen[0]["x"], x)  # the state entering step 0, as k-diffusion reports it


# -- the update weights: exactness and local order -------------------------------------------


def exact_increment(coeffs: list[float], lam_s: float, h: float) -> float:
    """σ_t ∫_{λ_s}^{λ_t} e^λ f(λ) dλ, λ_t = λ_s + h, for the polynomial f = Σ_k coeffs[k] λ^k.

    This is what a step adds to e^{−h} y when D = f(λ) exactly (DPM-Solver++ eq. 9, σ form);
    ∫ e^λ f = e^λ Σ_k (−1)^k f^{(k)}.
    """
    f = np.polynomial.Polynomial(coeffs)

    def antiderivative(lam: float) -> float:
        return math.exp(lam) * sum((-1) ** k * f.deriv(k)(lam) for k in range(len(coeffs)))

    return math.exp(-(lam_s + h)) * (antiderivative(lam_s + h) - antiderivative(lam_s))


def monomial(degree: int) -> list[float]:
    return [0.0] * degree + [1.0]


@pytest.mark.parametrize("lam_s, h, h_back", [(0.3, 0.4, [0.5, 0.2]), (-2.0, 1.7, [0.3, 2.0]), (4.0, 0.01, [0.02, 0.015])])
def test_dpmpp_3m_weights_integrate_quadratics_exactly(lam_s, h, h_back):
    # the Taylor form is exact when D is a quadratic in λ; diffusers' (half) D2 term is not
    nodes = [lam_s, lam_s - h_back[0], lam_s - h_back[0] - h_back[1]]
    for degree in range(3):
        values = [lam**degree for lam in nodes]
        exact = exact_increment(monomial(degree), lam_s, h)
        taylor = sum(w * v for w, v in zip(dpmpp_weights(3, h, h_back), values))
        assert taylor == pytest.approx(exact, rel=1e-9, abs=1e-13), degree
    halved = sum(w * lam**2 for w, lam in zip(dpmpp_weights(3, h, h_back, taylor=False), nodes))
    assert abs(halved - exact) > 0.01 * h**3


@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_weights_integrate_polynomials_exactly(order):
    # the order conditions R ρ = b make UniP-p exact for D of degree ≤ p − 1 in λ and UniC-p for
    # degree ≤ p; UniP-2 and UniC-1 use the authors' ρ = 1/2 instead, exact only for constants
    lam_s, h, back = -1.0, 0.6, [0.5, 0.8]
    nodes = [lam_s - sum(back[:k]) for k in range(order)]  # D_0, D_1, … at λ_s, λ_s − h_1, …
    predictor, corrector = unipc_weights(order, h, [(lam - lam_s) / h for lam in nodes[1:]])
    exact_p = 0 if order == 2 else order - 1
    exact_c = 0 if order == 1 else order
    for degree in range(order + 2):
        exact = exact_increment(monomial(degree), lam_s, h)
        got_p = sum(w * lam**degree for w, lam in zip(predictor, nodes))
        got_c = sum(w * lam**degree for w, lam in zip(corrector, [*nodes, lam_s + h]))
        assert (abs(got_p - exact) < 1e-12) == (degree <= exact_p), ("UniP", degree, got_p - exact)
        assert (abs(got_c - exact) < 1e-12) == (degree <= exact_c), ("UniC", degree, got_c - exact)


def test_weights_sum_to_the_ddim_coefficient():
    h = 0.37
    assert sum(dpmpp_weights(2, h, [0.2])) == pytest.approx(-math.expm1(-h), rel=1e-14)
    assert sum(dpmpp_weights(3, h, [0.2, 0.9])) == pytest.approx(-math.expm1(-h), rel=1e-14)
    for order in (1, 2, 3):
        predictor, corrector = unipc_weights(order, h, [-0.4, -1.1][: order - 1])
        assert sum(predictor) == pytest.approx(-math.expm1(-h), rel=1e-14)
        assert sum(corrector) == pytest.approx(-math.expm1(-h), rel=1e-14)


@pytest.mark.parametrize("z", [-30.0, -2.0, -1.0, -0.999, -0.3, -1e-3, -1e-9, 0.0, 0.5])
def test_phi_series_and_recursion_agree(z):
    # φ_k(z) = Σ_j z^j/(j+k)!: a long series where it converges fast, else the recursion from e^z
    for k in range(5):
        reference = sum(z**j / math.factorial(j + k) for j in range(80)) if abs(z) < 5 else None
        if reference is None:  # large |z|: the recursion from e^z is exact enough
            reference = math.exp(z)
            for j in range(k):
                reference = (reference - 1 / math.factorial(j)) / z
        assert phi(k, z) == pytest.approx(reference, rel=1e-13)


# -- convergence order on the analytic Gaussian (exact probability-flow ODE endpoint) --------

SIGMA_MIN = 1e-5  # the σ_min → 0 jump leaves an O(σ_min²) floor, ≈ 1e-10 here
ORDER_STEPS = (64, 128, 256)


def median_errors(name: str, options: dict, steps) -> list[float]:
    data = problems.data("gaussian")
    y0 = problems.noisy_starts("gaussian", 32)
    exact = data.ode_solution(y0, 80.0, 0.0)

    def denoiser(y, sigma, cond=None):
        return torch.from_numpy(data.denoise(y.numpy(), sigma.numpy()))

    errors = []
    for n in steps:
        out = run(name, denoiser, torch.from_numpy(y0), karras_sigmas(n, SIGMA_MIN, 80.0), **options).numpy()
        errors.append(float(np.median(np.linalg.norm(out - exact, axis=1))))
    return errors


@pytest.mark.parametrize(
    "name, options, order",
    [
        ("dpmpp_2m", {}, 2),
        ("dpmpp_3m", {"d2_weight": "taylor"}, 3),  # the full Taylor weight of Δ2
        ("unipc", {"order": 1}, 2),  # UniPC-p has order p + 1 (Zhao et al. 2023, Thm. 3.3)
        ("unipc", {}, 3),
        ("unipc", {"order": 3}, 4),
    ],
)
def test_measured_convergence_order(name, options, order):
    errors = median_errors(name, options, ORDER_STEPS)
    slope = -np.polyfit(np.log(ORDER_STEPS), np.log(errors), 1)[0]
    assert abs(slope - order) < 0.3, (errors, slope)


def test_the_default_dpm_solver_weight_is_a_second_order_method():
    # the default, diffusers'/k-diffusion's 3M, weights the D2 term by half the Taylor value: O(h³)
    # local error; its order shows as 2 only from about 256 steps (1.5 at 64–256 here)
    errors = median_errors("dpmpp_3m", {}, (256, 512))
    slope = math.log2(errors[0] / errors[1])
    assert 1.6 < slope < 2.3, (errors, slope)
    assert median_errors("dpmpp_3m", {"d2_weight": "dpm_solver"}, (256,)) == errors[:1]  # the default, spelled out


# -- options, dtypes, reruns -----------------------------------------------------------------


@pytest.mark.parametrize("order", [0, 4, 2.0, True, "2", None])
def test_unipc_rejects_bad_orders(order):
    with pytest.raises(ConfigError, match="order must be one of 1, 2 or 3"):
        unipc(denoiser_torch, torch.zeros(1, 2), torch.tensor([1.0, 0.0]), order=order)
    with pytest.raises(ConfigError, match="order must be one of 1, 2 or 3"):
        diffkit.build("sampler", "unipc", order=order)  # refused when chosen, before any step


@pytest.mark.parametrize(
    "option, value",
    # None is the deprecated alias' "not given"
    [("lower_order_final", v) for v in (1, 0, "yes", None)] + [("match_dpm_solver_code", v) for v in (1, 0, "yes")],
)
def test_boolean_options_must_be_booleans(option, value):
    with pytest.raises(ConfigError, match=f"{option} must be True or False"):
        dpmpp_3m(denoiser_torch, torch.zeros(1, 2), torch.tensor([1.0, 0.0]), **{option: value})
    with pytest.raises(ConfigError, match=f"{option} must be True or False"):
        diffkit.build("sampler", "dpmpp_3m", **{option: value})
    if option == "lower_order_final":
        with pytest.raises(ConfigError, match="lower_order_final must be True or False"):
            unipc(denoiser_torch, torch.zeros(1, 2), torch.tensor([1.0, 0.0]), lower_order_final=value)


@pytest.mark.parametrize("name", ["dpmpp_3m", "dpmpp_3m_sde"])
@pytest.mark.parametrize("value", ["half", "Taylor", "", None, 0.5, True])
def test_d2_weight_must_be_a_named_weight(name, value):
    message = r"unknown d2_weight .*\(valid: dpm_solver, taylor\)"
    with pytest.raises(UnknownNameError, match=message):
        diffkit.get("sampler", name)(denoiser_torch, torch.zeros(1, 2), torch.tensor([1.0, 0.0]), d2_weight=value)
    with pytest.raises(ConfigError, match=message):
        diffkit.build("sampler", name, d2_weight=value)  # refused when chosen, naming the valid weights


@pytest.mark.parametrize("name", ["dpmpp_3m", "dpmpp_3m_sde"])
def test_match_dpm_solver_code_is_a_deprecated_alias_of_d2_weight(name):
    sampler = diffkit.get("sampler", name)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 80

    def run(**options):
        return sampler(denoiser_torch, x, karras_sigmas(12, 0.01, 80.0), generator=torch.Generator().manual_seed(5),
                       **options)

    default, taylor = run(), run(d2_weight="taylor")
    assert (default - taylor).abs().max() > 1e-6  # two algorithms
    assert torch.equal(run(d2_weight="dpm_solver"), default)
    for flag, expected, weight in ((True, default, "dpm_solver"), (False, taylor, "taylor")):
        with pytest.warns(DeprecationWarning, match=f"match_dpm_solver_code is deprecated: use d2_weight='{weight}'"):
            assert torch.equal(run(match_dpm_solver_code=flag), expected)
        with pytest.warns(DeprecationWarning):
            assert torch.equal(run(match_dpm_solver_code=flag, d2_weight=weight), expected)  # both, agreeing
    # both, contradicting: refused by the sampler and when chosen
    with pytest.raises(ConfigError, match="match_dpm_solver_code=True .* contradicts d2_weight='taylor'"):
        run(match_dpm_solver_code=True, d2_weight="taylor")
    with pytest.raises(ConfigError, match="contradicts d2_weight='taylor'"):
        diffkit.build("sampler", name, match_dpm_solver_code=True, d2_weight="taylor")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # choosing a sampler with the alias is checked, not warned twice
        diffkit.build("sampler", name, match_dpm_solver_code=False)
        run(d2_weight="taylor")  # the new spelling never warns


@pytest.mark.parametrize("name", ["dpmpp_3m", "dpmpp_3m_sde"])
def test_the_registry_declares_the_default_s_order(name):
    # the kit holds every option set to the declared order; it describes the default (second order)
    assert diffkit.registry.get_entry("sampler", name).metadata["order"] == 2


def test_unknown_options_are_rejected_with_the_valid_ones():
    with pytest.raises(UnknownNameError, match="did you mean 'order'"):
        diffkit.build("sampler", "unipc", ordr=3)
    with pytest.raises(UnknownNameError):
        diffkit.build("sampler", "dpmpp_2m", order=2)  # 2M has no options
    with pytest.raises(TypeError):
        dpmpp_2m(denoiser_torch, torch.zeros(1, 2), torch.tensor([1.0, 0.0]), lower_order_final=True)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_bad_sigmas_are_rejected(name):
    for sigmas, message in [([5.0, 1.0, 0.1], "end at 0"), ([5.0, 6.0, 0.0], "strictly decreasing"),
                            ([5.0, float("nan"), 0.0], "finite")]:
        with pytest.raises(ConfigError, match=message):
            run(name, denoiser_torch, torch.zeros(1, 2), torch.tensor(sigmas))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_low_precision_inputs_keep_their_dtype_without_nan(config, dtype):
    name, options = config
    schedule = diffkit.build("schedule", "scaled_linear", rescale_zero_terminal_snr=True)  # σ_max ≈ 4096
    for steps in (30, 1000):
        sigmas = schedule.sigmas_for(steps, "trailing")
        x = (torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * float(sigmas[0])).to(dtype)
        out = run(name, denoiser_torch, x, sigmas, **options)
        assert out.dtype == dtype and out.shape == x.shape and torch.isfinite(out).all()
        if steps == 30:  # rounding only, no other answer (DDIM: 3e-3 in float16, 4e-2 in bfloat16)
            gap = (out.double() - run(name, denoiser_torch, x.double(), sigmas, **options)).abs().max()
            assert gap < {torch.float16: 0.01, torch.bfloat16: 0.1, torch.float32: 1e-5}[dtype]


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_reruns_are_bit_identical_and_ignore_the_generator(config):
    name, options = config
    sigmas = diffkit.build("schedule", "linear").sigmas_for(20)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * float(sigmas[0])
    a = run(name, denoiser_torch, x, sigmas, generator=torch.Generator().manual_seed(7), **options)
    b = run(name, denoiser_torch, x, sigmas, generator=torch.Generator().manual_seed(7), **options)
    c = run(name, denoiser_torch, x, sigmas, generator=torch.Generator().manual_seed(8), **options)
    assert torch.equal(a, b) and torch.equal(a, c)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c[1]], ids=[i for i, c in zip(CONFIG_IDS, CONFIGS) if c[1]])
def test_non_default_options_pass_the_kit(config):
    # the defaults are checked by tests/testing/test_registered.py
    name, options = config
    report = check_sampler(name, options=options, quick=True)
    assert report.ok, report.format()


# -- side by side with diffusers (its σ grid, float64 tables, the exact ε network) -----------

PEERS = [("linear", "linear", "linspace"), ("scaled_linear", "scaled_linear", "leading"),
         ("cosine", "squaredcos_cap_v2", "trailing")]


def make_peer(cls_name: str, schedule_name: str, peer_name: str, spacing: str, steps: int, **config):
    """diffusers' scheduler on our float64 tables; returns (schedule, peer, σ grid ending at 0).

    diffusers keeps σ in float32; both sides get the float64 σ of its integer timesteps instead,
    so the model (fed those timesteps) and both samplers see identical σ values.
    """
    diffusers = pytest.importorskip("diffusers")
    schedule = diffkit.build("schedule", schedule_name)
    betas = {k: getattr(schedule, k) for k in ("beta_start", "beta_end") if hasattr(schedule, k)}
    offset = {"steps_offset": 1} if spacing == "leading" else {}
    peer = getattr(diffusers, cls_name)(beta_schedule=peer_name, timestep_spacing=spacing, final_sigmas_type="zero",
                                        **offset, **betas, **config)
    peer.betas, peer.alphas_cumprod = schedule.betas.clone(), schedule.alphas_cumprod.clone()
    peer.set_timesteps(steps)
    sigmas = schedule.sigmas_from_timesteps(peer.timesteps)  # float64, with the final 0
    peer.sigmas = sigmas.clone()
    return schedule, peer, sigmas


def peer_loop(peer, model, x_t: torch.Tensor, steps: int | None = None) -> list[torch.Tensor]:
    """diffusers' sampling loop; returns prev_sample after each step (VP form)."""
    outs = []
    for t in peer.timesteps[:steps]:
        eps = model(x_t, t.reshape(1).expand(x_t.shape[0]))
        x_t = peer.step(eps, t, x_t).prev_sample
        outs.append(x_t)
    return outs


@pytest.fixture
def dpmsolver_in_float64(monkeypatch):
    """DPMSolverMultistepScheduler.step() casts the sample to float32 ("upcast"), which costs
    ~1e-7 per step; seen through this module proxy its torch.float32 is float64."""
    module = pytest.importorskip("diffusers.schedulers.scheduling_dpmsolver_multistep")
    proxy = types.ModuleType("torch")
    proxy.__getattr__ = lambda name: getattr(torch, name)  # type: ignore[method-assign]
    proxy.float32 = torch.float64
    monkeypatch.setattr(module, "torch", proxy)


def start_point(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_T in VP form for diffusers, the same point in σ form for diffkit)."""
    x_t = torch.randn(3, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    return x_t, x_t * math.sqrt(1 + float(sigmas[0]) ** 2)


@pytest.mark.parametrize("lower_order_final", [True, False])
@pytest.mark.parametrize("steps", [5, 12, 20])
@pytest.mark.parametrize("solver_order", [2, 3])
@pytest.mark.parametrize("schedule_name, peer_name, spacing", PEERS)
def test_dpmpp_matches_diffusers_dpmsolver_multistep(
    dpmsolver_in_float64, schedule_name, peer_name, spacing, solver_order, steps, lower_order_final
):
    schedule, peer, sigmas = make_peer(
        "DPMSolverMultistepScheduler", schedule_name, peer_name, spacing, steps, algorithm_type="dpmsolver++",
        solver_order=solver_order, lower_order_final=lower_order_final, euler_at_final=False,
    )
    model = ExactVPModel(schedule, "eps")
    x_t, y = start_point(sigmas)
    expected = peer_loop(peer, model, x_t)[-1]
    denoiser = diffkit.VPDenoiser(model, schedule)
    if solver_order == 2:  # lower_order_final changes nothing here: the step into σ = 0 is first order
        ours = dpmpp_2m(denoiser, y, sigmas)
    else:
        ours = dpmpp_3m(denoiser, y, sigmas, lower_order_final=lower_order_final)  # the default weight
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


def test_dpmpp_3m_taylor_differs_from_diffusers_only_once_third_order_steps_start(dpmsolver_in_float64):
    for steps in (2, 3, 4, 5):  # with lower_order_final, 4 steps take orders 1, 2, 2, 1
        schedule, peer, sigmas = make_peer("DPMSolverMultistepScheduler", "linear", "linear", "linspace", steps,
                                           algorithm_type="dpmsolver++", solver_order=3)
        model = ExactVPModel(schedule, "eps")
        x_t, y = start_point(sigmas)
        taylor = dpmpp_3m(diffkit.VPDenoiser(model, schedule), y, sigmas, d2_weight="taylor")
        gap = (taylor - peer_loop(peer, model, x_t)[-1]).abs().max()
        assert (gap < 1e-10) == (steps <= 4), (steps, gap)


def test_dpmpp_2m_matches_stock_diffusers_to_1e6():
    # no float64 patch: diffusers' float32 upcast inside step() is the only gap
    schedule, peer, sigmas = make_peer("DPMSolverMultistepScheduler", "scaled_linear", "scaled_linear", "leading", 25,
                                       algorithm_type="dpmsolver++", solver_order=2)
    model = ExactVPModel(schedule, "eps")
    x_t, y = start_point(sigmas)
    ours = dpmpp_2m(diffkit.VPDenoiser(model, schedule), y, sigmas)
    torch.testing.assert_close(ours, peer_loop(peer, model, x_t)[-1], rtol=0, atol=1e-6)


@pytest.mark.parametrize("steps", [5, 12, 20])
@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("schedule_name, peer_name, spacing", PEERS)
def test_unipc_matches_diffusers_unipc_multistep(schedule_name, peer_name, spacing, order, steps):
    schedule, peer, sigmas = make_peer(
        "UniPCMultistepScheduler", schedule_name, peer_name, spacing, steps, solver_type="bh2", solver_order=order,
        predict_x0=True, lower_order_final=True,
    )
    model = ExactVPModel(schedule, "eps")
    x_t, y = start_point(sigmas)
    expected = peer_loop(peer, model, x_t)[-1]
    ours = unipc(diffkit.VPDenoiser(model, schedule), y, sigmas, order=order)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("order", [2, 3])
def test_unipc_without_lower_order_final_matches_diffusers_up_to_the_final_step(order):
    # diffusers keeps order p on the step into σ = 0, where r_k = 0 (λ = ∞): −inf (p = 2) or a
    # singular solve (p = 3). diffkit takes that step at first order; every earlier step agrees.
    steps = 10
    schedule, peer, sigmas = make_peer("UniPCMultistepScheduler", "linear", "linear", "linspace", steps,
                                       solver_type="bh2", solver_order=order, lower_order_final=False)
    model = ExactVPModel(schedule, "eps")
    x_t, y = start_point(sigmas)
    expected = peer_loop(peer, model, x_t, steps - 1)
    seen = []
    unipc(diffkit.VPDenoiser(model, schedule), y, sigmas, order=order, lower_order_final=False,
          callback=lambda info: seen.append(info["x"]))
    for i, x_vp in enumerate(expected):  # the x entering step i + 1 is the predicted state, as prev_sample
        torch.testing.assert_close(seen[i + 1], x_vp * math.sqrt(1 + float(sigmas[i + 1]) ** 2), rtol=1e-10, atol=1e-10)
