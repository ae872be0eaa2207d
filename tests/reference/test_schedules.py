"""Schedule invariants (hypothesis) and agreement with diffusers' DDPMScheduler betas."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import diffkit_reference as ref


@st.composite
def schedules(draw):
    """(kind, betas, rescaled) for a random schedule kind, length and beta range."""
    kind = draw(st.sampled_from(["linear", "scaled_linear", "cosine", "sigmoid"]))
    T = draw(st.integers(2, 1000))
    beta_start = draw(st.floats(1e-5, 1e-2))
    beta_end = beta_start + draw(st.floats(0.0, 0.2))
    if kind == "linear":
        betas = ref.betas_linear(T, beta_start, beta_end)
    elif kind == "scaled_linear":
        betas = ref.betas_scaled_linear(T, beta_start, beta_end)
    elif kind == "sigmoid":
        betas = ref.betas_sigmoid(T, beta_start, beta_end)
    else:
        betas = ref.betas_cosine(T, s=draw(st.floats(1e-3, 0.02)))
    rescale = draw(st.booleans())
    if rescale:
        betas = ref.rescale_zero_terminal_snr(betas)
    return kind, betas, rescale


@given(schedules())
def test_beta_and_alpha_bar_invariants(sched):
    kind, betas, rescaled = sched
    assert betas.dtype == np.float64
    assert np.all(betas > 0) and np.all(betas <= 1)
    abar = ref.alphas_cumprod(betas)
    assert np.all(np.diff(abar) < 0), "abar must be strictly decreasing"
    assert abar[0] <= 1
    if rescaled:
        assert betas[-1] == 1.0 and abar[-1] == 0.0
        assert np.all(betas[:-1] < 1) and np.all(abar[:-1] > 0)
    else:
        assert np.all(betas < 1) and np.all(abar > 0)
        if kind == "cosine":
            assert np.all(betas <= 0.999)
    # x_t's signal and noise coefficients are a unit vector (variance preserving).
    np.testing.assert_allclose(np.sqrt(abar) ** 2 + np.sqrt(1 - abar) ** 2, 1.0, rtol=0, atol=1e-15)


@given(schedules())
def test_rescale_keeps_first_alpha_bar_and_zeroes_the_last(sched):
    _, betas, rescaled = sched
    if rescaled:
        return
    abar = ref.alphas_cumprod(betas)
    abar_new = ref.alphas_cumprod(ref.rescale_zero_terminal_snr(betas))
    np.testing.assert_allclose(abar_new[0], abar[0], rtol=1e-12)
    assert abar_new[-1] == 0.0
    # Alg. 1 is affine in sqrt(abar): the shifted/scaled curve is a positive multiple of sqrt(abar) - sqrt(abar_T).
    ratio = np.sqrt(abar_new[:-1]) / (np.sqrt(abar[:-1]) - np.sqrt(abar[-1]))
    np.testing.assert_allclose(ratio, ratio[0], rtol=1e-9)


@given(schedules(), st.data())
def test_posterior_variance_between_zero_and_beta(sched, data):
    _, betas, _ = sched
    abar = ref.alphas_cumprod(betas)
    t = data.draw(st.integers(1, len(abar) - 1))
    prev = data.draw(st.integers(0, t - 1))  # any earlier timestep: skipped steps allowed
    _, var = ref.q_posterior(0.0, 0.0, abar[t], abar[prev])
    beta = 1 - abar[t] / abar[prev]
    assert 0 <= var <= beta


@given(schedules())
def test_sigma_alpha_bar_round_trip(sched):
    _, betas, _ = sched
    abar = ref.alphas_cumprod(betas)
    sigmas = ref.sigmas_from_alphas_cumprod(abar)
    assert np.all(np.diff(sigmas) > 0)
    np.testing.assert_allclose(ref.alphas_cumprod_from_sigmas(sigmas), abar, rtol=1e-12, atol=0)


@given(st.floats(1e-2, 1e3))
def test_sigma_round_trip_from_sigma(sigma):
    back = ref.sigmas_from_alphas_cumprod(ref.alphas_cumprod_from_sigmas(sigma))
    np.testing.assert_allclose(back, sigma, rtol=1e-9)


def test_sigma_of_zero_alpha_bar_is_inf_without_warning():
    with np.errstate(all="raise"):
        s = ref.sigmas_from_alphas_cumprod(np.array([1.0, 0.5, 0.0]))
    assert s[0] == 0.0 and s[1] == 1.0 and np.isinf(s[2])
    assert ref.alphas_cumprod_from_sigmas(np.inf) == 0.0


def test_hand_checked_small_schedules():
    # linear: evenly spaced; scaled_linear: sqrt evenly spaced
    np.testing.assert_allclose(ref.betas_linear(3, 0.1, 0.3), [0.1, 0.2, 0.3])
    np.testing.assert_allclose(ref.betas_scaled_linear(3, 0.01, 0.09), [0.01, 0.04, 0.09])
    # sigmoid with low = high = 0 would be constant; with symmetric ends its midpoint is the mean
    b = ref.betas_sigmoid(3, 0.1, 0.3)
    np.testing.assert_allclose(b[1], 0.2)
    np.testing.assert_allclose(b[0] + b[2], 0.4)
    # cosine: abar = f(t)/f(0) telescopes, so prod(1 - beta) over all T equals f(1)/f(0) unless clipped
    T, s = 4, 0.008
    f = lambda u: np.cos((u + s) / (1 + s) * np.pi / 2) ** 2  # noqa: E731
    b = ref.betas_cosine(T, s=s, max_beta=1.0)
    np.testing.assert_allclose(ref.alphas_cumprod(b), f(np.arange(1, T + 1) / T) / f(0.0), rtol=1e-12, atol=1e-15)


# --- agreement with diffusers (float32, so 1e-6) ---------------------------------------------

KINDS = {
    "linear": (ref.betas_linear, dict(beta_start=1e-4, beta_end=0.02)),
    "scaled_linear": (ref.betas_scaled_linear, dict(beta_start=0.00085, beta_end=0.012)),
    "squaredcos_cap_v2": (ref.betas_cosine, dict()),
    "sigmoid": (ref.betas_sigmoid, dict(beta_start=1e-4, beta_end=0.02)),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("T", [10, 1000])
@pytest.mark.parametrize("rescale", [False, True])
def test_betas_match_diffusers(kind, T, rescale):
    diffusers = pytest.importorskip("diffusers")
    fn, kw = KINDS[kind]
    sched = diffusers.DDPMScheduler(
        num_train_timesteps=T, beta_schedule=kind, rescale_betas_zero_snr=rescale, **kw
    )
    betas = fn(T, **kw)
    if rescale:
        betas = ref.rescale_zero_terminal_snr(betas)
    theirs = sched.betas.double().numpy()
    # the zero-SNR rescale divides nearly equal float32 numbers near t = T, so allow 1e-5 there
    np.testing.assert_allclose(betas, theirs, rtol=0, atol=1e-5 if rescale else 1e-6)
    np.testing.assert_allclose(ref.alphas_cumprod(betas), sched.alphas_cumprod.double().numpy(), atol=1e-5 if rescale else 1e-6)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_rescale_matches_diffusers_in_float64(kind):
    """diffusers' rescale_zero_terminal_snr fed float64 must agree to rounding."""
    pytest.importorskip("diffusers")
    torch = pytest.importorskip("torch")
    from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr

    fn, kw = KINDS[kind]
    betas = fn(1000, **kw)
    theirs = rescale_zero_terminal_snr(torch.tensor(betas, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(ref.rescale_zero_terminal_snr(betas), theirs, rtol=0, atol=1e-12)
