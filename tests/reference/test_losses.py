"""Training losses of the reference: targets, Min-SNR-γ, Gaussian KL, discretized decoder, L_t.

Independent yardsticks: hand-derived values, scipy.stats / scipy.integrate (a peer numerical
library), Monte-Carlo estimates, and DDPM's own ε-form of L_t (Ho et al. 2020, eq. 12).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from scipy import integrate, stats

import diffkit_reference as ref

seeds = st.integers(0, 2**32 - 1)
abar_open = st.floats(1e-4, 1 - 1e-4)
predictions = st.sampled_from(["eps", "x0", "v"])
GRID = np.linspace(-1.0, 1.0, 256)  # the 256 data levels -1 + 2k/255
LN2 = math.log(2.0)


def _pair(seed: int, shape=(3, 4)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape), rng.standard_normal(shape)


# -- targets ------------------------------------------------------------------------------


def test_target_worked_example():
    # abar = 0.64: sqrt(abar) = 0.8, sqrt(1 - abar) = 0.6; v = 0.8 * 2 - 0.6 * 1 = 1.0
    x0, eps = np.array([1.0]), np.array([2.0])
    assert ref.training_target(x0, eps, 0.64, "eps") == pytest.approx([2.0])
    assert ref.training_target(x0, eps, 0.64, "x0") == pytest.approx([1.0])
    assert ref.training_target(x0, eps, 0.64, "v") == pytest.approx([1.0])
    with pytest.raises(ValueError, match="valid"):
        ref.training_target(x0, eps, 0.64, "velocity")


@given(seeds, st.floats(0.0, 1.0))
def test_v_target_gives_back_x0_and_eps(seed, abar):
    """(x_t, v) is (x0, eps) rotated by the angle phi, cos phi = sqrt(abar): rotating back recovers both.

    x0 = sqrt(abar) x_t - sqrt(1 - abar) v,   eps = sqrt(1 - abar) x_t + sqrt(abar) v.
    """
    x0, eps = _pair(seed)
    a, s = math.sqrt(abar), math.sqrt(1 - abar)
    x_t = a * x0 + s * eps
    v = ref.training_target(x0, eps, abar, "v")
    np.testing.assert_allclose(a * x_t - s * v, x0, atol=1e-12)
    np.testing.assert_allclose(s * x_t + a * v, eps, atol=1e-12)


def test_target_broadcasts_per_sample_alpha_bar():
    x0, eps = _pair(1, (2, 3))
    abar = np.array([[0.25], [0.81]])
    for prediction in ("eps", "x0", "v"):
        out = ref.training_target(x0, eps, abar, prediction)
        assert out.shape == (2, 3)
        for i in range(2):
            np.testing.assert_allclose(out[i], ref.training_target(x0[i], eps[i], abar[i, 0], prediction))


# -- Min-SNR-γ ----------------------------------------------------------------------------


@given(seeds, abar_open, st.floats(0.1, 20.0))
def test_min_snr_weights_are_the_x0_space_weight(seed, abar, gamma):
    """A prediction x0_hat at x_t has errors in each space; weighting each space's MSE with
    min_snr_weight gives min(SNR, gamma) * x0-MSE, the paper's x0-space weight.

    Derivation (fixed x_t): eps = (x_t - sqrt(abar) x0)/sqrt(1 - abar), so
    eps_hat - eps = -sqrt(abar/(1 - abar)) (x0_hat - x0) and eps-MSE = SNR * x0-MSE;
    v = (sqrt(abar) x_t - x0)/sqrt(1 - abar) (eliminate eps from v with x_t), so
    v_hat - v = -(x0_hat - x0)/sqrt(1 - abar) and v-MSE = x0-MSE/(1 - abar) = (SNR + 1) x0-MSE.
    """
    x0, eps = _pair(seed)
    x0_hat = x0 + np.random.default_rng(seed + 1).standard_normal(x0.shape)
    x_t = ref.q_sample(x0, eps, abar)
    snr = abar / (1 - abar)
    eps_hat = ref.eps_from_x0(x_t, x0_hat, abar)
    v_hat = ref.v_from_x0_eps(x0_hat, eps_hat, abar)
    mse = {
        "x0": np.mean((x0_hat - x0) ** 2),
        "eps": np.mean((eps_hat - eps) ** 2),
        "v": np.mean((v_hat - ref.training_target(x0, eps, abar, "v")) ** 2),
    }
    np.testing.assert_allclose(mse["eps"], snr * mse["x0"], rtol=1e-8)
    np.testing.assert_allclose(mse["v"], (snr + 1) * mse["x0"], rtol=1e-8)
    for prediction in ("eps", "x0", "v"):
        weighted = ref.min_snr_weight(snr, prediction, gamma) * mse[prediction]
        np.testing.assert_allclose(weighted, min(snr, gamma) * mse["x0"], rtol=1e-8)


def test_min_snr_weight_values():
    snr = np.array([0.5, 5.0, 50.0])
    np.testing.assert_allclose(ref.min_snr_weight(snr, "x0", 5.0), [0.5, 5.0, 5.0])
    np.testing.assert_allclose(ref.min_snr_weight(snr, "eps", 5.0), [1.0, 1.0, 0.1])
    np.testing.assert_allclose(ref.min_snr_weight(snr, "v", 5.0), [0.5 / 1.5, 5.0 / 6.0, 5.0 / 51.0])
    # at SNR = 0 (pure noise) the x0 and v weights vanish; the eps weight is a 0/0 the reference refuses
    np.testing.assert_allclose(ref.min_snr_weight(0.0, "v", 5.0), 0.0)
    with pytest.raises(ValueError, match="SNR > 0"):
        ref.min_snr_weight(np.array([0.0, 1.0]), "eps", 5.0)
    with pytest.raises(ValueError, match="gamma"):
        ref.min_snr_weight(snr, "eps", 0.0)


# -- Gaussian KL --------------------------------------------------------------------------

finite = st.floats(-5, 5)


def test_kl_worked_example():
    # KL(N(0, 1) || N(1, 4)) = log 2 + (1 + 1)/(2 * 4) - 1/2
    kl = ref.normal_kl(0.0, 0.0, 1.0, math.log(4.0))
    assert kl == pytest.approx(math.log(2.0) + 0.25 - 0.5, rel=1e-14)


@given(finite, finite, finite, finite)
def test_kl_is_nonnegative_and_zero_only_for_equal_gaussians(m1, lv1, m2, lv2):
    assert ref.normal_kl(m1, lv1, m2, lv2) >= -1e-15
    assert ref.normal_kl(m1, lv1, m1, lv1) == 0.0
    assume(abs(m1 - m2) > 1e-3 or abs(lv1 - lv2) > 1e-3)
    assert ref.normal_kl(m1, lv1, m2, lv2) > 0


def test_kl_agrees_with_monte_carlo():
    """KL(p || q) = E_p[log p(x) - log q(x)], estimated from 400 000 seeded draws."""
    rng = np.random.default_rng(0)
    for m1, lv1, m2, lv2 in [(0.3, -0.5, -0.2, 0.4), (1.0, 0.7, 0.0, 0.0), (-2.0, -1.0, -1.5, -1.3)]:
        x = m1 + math.exp(lv1 / 2) * rng.standard_normal(400_000)
        log_ratio = stats.norm.logpdf(x, m1, math.exp(lv1 / 2)) - stats.norm.logpdf(x, m2, math.exp(lv2 / 2))
        standard_error = log_ratio.std() / math.sqrt(x.size)
        assert abs(log_ratio.mean() - ref.normal_kl(m1, lv1, m2, lv2)) < 5 * standard_error


def test_kl_is_elementwise():
    m1, m2 = _pair(3, (2, 3))
    lv1, lv2 = _pair(4, (2, 3))
    out = ref.normal_kl(m1, lv1, m2, lv2)
    assert out.shape == (2, 3)
    assert out[1, 2] == pytest.approx(ref.normal_kl(m1[1, 2], lv1[1, 2], m2[1, 2], lv2[1, 2]), rel=1e-14)


# -- discretized Gaussian decoder ---------------------------------------------------------


@given(st.floats(-1.5, 1.5), st.floats(-7.0, 1.0))
def test_discretized_bins_sum_to_one(mean, log_scale):
    probs = np.exp(ref.discretized_gaussian_log_likelihood(GRID, mean, log_scale))
    assert probs.shape == (256,)
    assert np.all(probs >= 0)
    np.testing.assert_allclose(probs.sum(), 1.0, rtol=1e-12)


@given(st.integers(1, 254), st.floats(-1.2, 1.2), st.floats(-4.0, 0.5))
def test_discretized_inner_bin_is_the_integral_of_the_density(k, mean, log_scale):
    """An inner bin is the Gaussian density integrated over [x - 1/255, x + 1/255] (scipy quad)."""
    x = GRID[k]
    scale = math.exp(log_scale)
    mass, _ = integrate.quad(stats.norm(mean, scale).pdf, x - 1 / 255, x + 1 / 255, epsabs=0, epsrel=1e-11)
    assume(mass > 1e-200)
    got = ref.discretized_gaussian_log_likelihood(x, mean, log_scale)
    np.testing.assert_allclose(got, math.log(mass), rtol=1e-8, atol=1e-9)


@given(st.floats(-1.2, 1.2), st.floats(-4.0, 0.5))
def test_discretized_edge_bins_extend_to_infinity(mean, log_scale):
    """The first bin is (-inf, -1 + 1/255], the last [1 - 1/255, +inf) (Ho et al. 2020, eq. 13)."""
    scale = math.exp(log_scale)
    expected = [stats.norm.logcdf(-1 + 1 / 255, mean, scale), stats.norm.logsf(1 - 1 / 255, mean, scale)]
    assume(min(expected) > -700)  # below e^-745 a float64 mass underflows to 0 (log -inf)
    got = ref.discretized_gaussian_log_likelihood(np.array([-1.0, 1.0]), mean, log_scale)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_discretized_is_accurate_far_in_the_tails():
    """Bins ~16 standard deviations out have masses ~1e-58: no cancellation of two numbers near 1."""
    mean, scale = 0.0, 0.05
    for x in (GRID[230], GRID[25]):  # far above and far below the mean
        lo, hi = (x - 1 / 255 - mean) / scale, (x + 1 / 255 - mean) / scale
        exact = stats.norm.sf(lo) - stats.norm.sf(hi) if lo > 0 else stats.norm.cdf(hi) - stats.norm.cdf(lo)
        assert exact < 1e-40
        got = ref.discretized_gaussian_log_likelihood(x, mean, math.log(scale))
        np.testing.assert_allclose(got, math.log(exact), rtol=1e-9)


def test_discretized_requires_grid_data():
    with pytest.raises(ValueError, match="grid"):
        ref.discretized_gaussian_log_likelihood(0.5, 0.0, 0.0)  # 0.5 is not -1 + 2k/255
    with pytest.raises(ValueError, match="grid"):
        ref.discretized_gaussian_log_likelihood(1.0 + 2 / 255, 0.0, 0.0)


# -- learned variance and L_t -------------------------------------------------------------


@given(st.floats(0.0, 1.0), st.floats(1e-5, 0.5), st.floats(0.01, 1.0))
def test_learned_variance_interpolates_log_beta_and_log_beta_tilde(frac, beta, ratio):
    beta_tilde = beta * ratio  # beta~ <= beta always
    np.testing.assert_allclose(ref.learned_variance_log(1.0, beta, beta_tilde), math.log(beta), rtol=1e-14)
    np.testing.assert_allclose(ref.learned_variance_log(0.0, beta, beta_tilde), math.log(beta_tilde), rtol=1e-14)
    # eq. 15 is a geometric interpolation: Sigma = beta^frac * beta~^(1 - frac)
    got = math.exp(ref.learned_variance_log(frac, beta, beta_tilde))
    assert got == pytest.approx(beta**frac * beta_tilde ** (1 - frac), rel=1e-12)
    assert beta_tilde * (1 - 1e-12) <= got <= beta * (1 + 1e-12)


BETAS = ref.betas_linear(1000)
ABAR = ref.alphas_cumprod(BETAS)


@given(seeds, st.integers(1, 999))
def test_vlb_term_is_ddpm_eq12_with_sigma_squared_beta_tilde(seed, t):
    """With Sigma = beta~_t (frac = 0) L_t is Ho et al. eq. 12's weighted ε error:

        L_t = beta_t^2 / (2 sigma^2 alpha_t (1 - abar_t)) * ||eps - eps_hat||^2 ,  sigma^2 = beta~_t,

    per dimension and in bits here.
    """
    x0, eps = _pair(seed)
    eps_hat = eps + 0.3 * np.random.default_rng(seed + 7).standard_normal(eps.shape)
    x_t = ref.q_sample(x0, eps, ABAR[t])
    x0_hat = ref.x0_from_eps(x_t, eps_hat, ABAR[t])
    beta, alpha = BETAS[t], 1 - BETAS[t]
    beta_tilde = (1 - ABAR[t - 1]) / (1 - ABAR[t]) * beta
    expected = beta**2 / (2 * beta_tilde * alpha * (1 - ABAR[t])) * np.mean((eps - eps_hat) ** 2) / LN2
    got = ref.vlb_term(x0, x_t, t, x0_hat, 0.0, BETAS)
    np.testing.assert_allclose(got, expected, rtol=1e-7)


@given(seeds, st.integers(1, 999), st.floats(0.0, 1.0))
def test_vlb_term_is_zero_only_at_the_true_posterior(seed, t, frac):
    x0, eps = _pair(seed)
    x_t = ref.q_sample(x0, eps, ABAR[t])
    assert ref.vlb_term(x0, x_t, t, x0, 0.0, BETAS) == pytest.approx(0.0, abs=1e-12)
    assert ref.vlb_term(x0, x_t, t, x0 + 0.1, frac, BETAS) > 0


@given(seeds, st.floats(0.0, 1.0))
def test_vlb_term_at_t0_is_the_decoder_nll(seed, frac):
    """L_0 = -log p(x0 | x1): bins of the data x0 under N(x0_hat, beta_0^frac beta~_1^(1 - frac)), via scipy."""
    rng = np.random.default_rng(seed)
    x0 = GRID[rng.integers(0, 256, size=(3, 4))]
    x_t = ref.q_sample(x0, rng.standard_normal(x0.shape), ABAR[0])
    x0_hat = np.clip(x0 + 0.01 * rng.standard_normal(x0.shape), -1, 1)
    beta_tilde_1 = (1 - ABAR[0]) / (1 - ABAR[1]) * BETAS[1]
    scale = math.sqrt(BETAS[0] ** frac * beta_tilde_1 ** (1 - frac))
    lo = np.where(x0 == -1.0, -np.inf, x0 - 1 / 255)
    hi = np.where(x0 == 1.0, np.inf, x0 + 1 / 255)
    mass = stats.norm.cdf(hi, x0_hat, scale) - stats.norm.cdf(lo, x0_hat, scale)
    assume(np.all(mass > 1e-12))  # where two cdfs near 1 are subtracted scipy itself loses digits
    expected = -np.mean(np.log(mass)) / LN2
    np.testing.assert_allclose(ref.vlb_term(x0, x_t, 0, x0_hat, frac, BETAS), expected, rtol=1e-6)


def test_vlb_term_rejects_bad_timesteps():
    x = np.zeros(3)
    with pytest.raises(ValueError, match="t must be"):
        ref.vlb_term(x, x, 1000, x, 0.0, BETAS)
    with pytest.raises(ValueError, match="t must be"):
        ref.vlb_term(x, x, 1.0, x, 0.0, BETAS)
