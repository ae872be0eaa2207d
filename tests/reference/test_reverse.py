"""One-step reverse updates: DDIM exactness, inversion, DDIM(eta=1) == DDPM posterior, DDPM variances."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import diffkit_reference as ref

seeds = st.integers(0, 2**32 - 1)


def _pair(seed: int, shape=(2, 5)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape), rng.standard_normal(shape)


@st.composite
def abar_pair(draw):
    """0 < abar_t < abar_prev < 1."""
    abar_prev = draw(st.floats(1e-3, 0.999))
    abar_t = abar_prev * draw(st.floats(1e-3, 0.999))
    return abar_t, abar_prev


@given(seeds, st.floats(1e-3, 0.999))
def test_ddim_eta0_true_eps_recovers_x0_in_one_step(seed, abar_t):
    x0, eps = _pair(seed)
    x_t = ref.q_sample(x0, eps, abar_t)
    np.testing.assert_allclose(ref.ddim_step(x_t, eps, abar_t, 1.0), x0, atol=1e-12)


@given(seeds, st.sampled_from(["leading", "trailing", "linspace"]), st.integers(1, 50))
def test_ddim_eta0_true_eps_stays_on_the_forward_trajectory(seed, spacing, steps):
    """With the true eps, every DDIM step lands exactly on q_sample(x0, eps, abar_prev)."""
    x0, eps = _pair(seed)
    abar = ref.alphas_cumprod(ref.betas_linear(1000))
    ts = ref.timesteps(1000, steps, spacing)
    levels = list(abar[ts]) + [1.0]  # ... -> x_0
    x = ref.q_sample(x0, eps, levels[0])
    for abar_t, abar_prev in zip(levels[:-1], levels[1:]):
        x = ref.ddim_step(x, eps, abar_t, abar_prev)
        np.testing.assert_allclose(x, ref.q_sample(x0, eps, abar_prev), atol=1e-10)
    np.testing.assert_allclose(x, x0, atol=1e-10)


@given(seeds, abar_pair())
def test_ddim_inversion_round_trip(seed, pair):
    abar_next, abar_t = pair  # inversion moves to more noise: abar_next < abar_t
    x_t, eps = _pair(seed)
    x_next = ref.ddim_invert_step(x_t, eps, abar_t, abar_next)
    np.testing.assert_allclose(ref.ddim_step(x_next, eps, abar_next, abar_t), x_t, atol=1e-10)


@given(seeds, st.integers(1, 999))
def test_ddim_eta1_consecutive_equals_ddpm_posterior(seed, t):
    """eta = 1, consecutive steps: sigma^2 = beta~ and the mean is the DDPM posterior mean of x0_hat."""
    abar = ref.alphas_cumprod(ref.betas_linear(1000))
    abar_t, abar_prev = abar[t], abar[t - 1]
    x_t, eps = _pair(seed)
    x0_hat = ref.x0_from_eps(x_t, eps, abar_t)
    mean, var = ref.q_posterior(x0_hat, x_t, abar_t, abar_prev)

    sigma = ref.ddim_sigma(abar_t, abar_prev, 1.0)
    np.testing.assert_allclose(sigma**2, var, rtol=1e-10)
    ddim_mean = ref.ddim_step(x_t, eps, abar_t, abar_prev, eta=1.0, noise=np.zeros_like(x_t))
    np.testing.assert_allclose(ddim_mean, mean, atol=1e-10)
    # the same noise gives the same sample as DDPM "small"
    z = np.random.default_rng(seed + 1).standard_normal(x_t.shape)
    np.testing.assert_allclose(
        ref.ddim_step(x_t, eps, abar_t, abar_prev, eta=1.0, noise=z),
        ref.ddpm_step(x_t, x0_hat, abar_t, abar_prev, z, variance="small"),
        atol=1e-10,
    )


@given(seeds, abar_pair(), st.floats(0.0, 1.0))
def test_ddpm_step_variances(seed, pair, v):
    abar_t, abar_prev = pair
    x_t, x0 = _pair(seed)
    z = np.random.default_rng(seed + 1).standard_normal(x_t.shape)
    mean, beta_tilde = ref.q_posterior(x0, x_t, abar_t, abar_prev)
    beta = 1 - abar_t / abar_prev

    def scale(variance, **kw):
        # the noise enters as sqrt(var) * z, so (x_prev - mean) / z recovers sqrt(var)
        out = ref.ddpm_step(x_t, x0, abar_t, abar_prev, z, variance=variance, **kw)
        return np.median((out - mean) / z)

    np.testing.assert_allclose(scale("small"), np.sqrt(beta_tilde), rtol=1e-8)
    np.testing.assert_allclose(scale("large"), np.sqrt(beta), rtol=1e-8)
    np.testing.assert_allclose(scale("learned", v=0.0), np.sqrt(beta_tilde), rtol=1e-8)
    np.testing.assert_allclose(scale("learned", v=1.0), np.sqrt(beta), rtol=1e-8)
    learned = scale("learned", v=v) ** 2
    assert beta_tilde * (1 - 1e-9) <= learned <= beta * (1 + 1e-9)  # log-interpolation lies between


@pytest.mark.parametrize("variance, kw", [("small", {}), ("large", {}), ("learned", {"v": 0.3})])
def test_ddpm_final_step_adds_no_noise(variance, kw):
    x_t, x0 = _pair(0)
    out = ref.ddpm_step(x_t, x0, 0.9, 1.0, 100 * np.ones_like(x_t), variance=variance, **kw)
    np.testing.assert_allclose(out, x0, atol=1e-15)
    out = ref.ddpm_step(x_t, x0, 0.9, 1.0, None, variance=variance, **kw)
    np.testing.assert_allclose(out, x0, atol=1e-15)


def test_errors():
    x, e = _pair(0)
    with pytest.raises(ValueError, match="eta"):
        ref.ddim_step(x, e, 0.5, 0.7, eta=-0.1)
    with pytest.raises(ValueError, match="noise"):
        ref.ddim_step(x, e, 0.5, 0.7, eta=0.5)
    with pytest.raises(ValueError, match="noise"):
        ref.ddpm_step(x, e, 0.5, 0.7, None)
    with pytest.raises(ValueError, match="learned"):
        ref.ddpm_step(x, e, 0.5, 0.7, x, variance="learned")
    with pytest.raises(ValueError, match="variance"):
        ref.ddpm_step(x, e, 0.5, 0.7, x, variance="medium")
    # eta = 0 needs no noise
    ref.ddim_step(x, e, 0.5, 0.7, eta=0.0)


def test_ddim_sigma_limits():
    assert ref.ddim_sigma(0.3, 0.6, 0.0) == 0.0
    assert ref.ddim_sigma(0.3, 1.0, 1.0) == 0.0  # final step into x_0
    # eta scales sigma linearly
    np.testing.assert_allclose(ref.ddim_sigma(0.3, 0.6, 0.5), 0.5 * ref.ddim_sigma(0.3, 0.6, 1.0))
