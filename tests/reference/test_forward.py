"""Forward process: worked example, parameterisation round trips, posterior vs Gaussian conditioning."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

import diffkit_reference as ref

abar_open = st.floats(1e-4, 1 - 1e-4)  # strictly inside (0, 1): both eps and x0 recoverable
seeds = st.integers(0, 2**32 - 1)


def _pair(seed: int, shape=(3, 4)) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape), rng.standard_normal(shape)


def test_worked_example():
    # sqrt(0.8) = 0.894427, sqrt(0.2) = 0.447214:
    #   1 * 0.894427 + 0.5 * 0.447214 = 1.118034;  2 * 0.894427 - 0.3 * 0.447214 = 1.654690
    x_t = ref.q_sample(np.array([1.0, 2.0]), np.array([0.5, -0.3]), 0.8)
    np.testing.assert_allclose(x_t, [1.118, 1.654], atol=1e-3)
    assert x_t.dtype == np.float64


@given(seeds, abar_open)
def test_eps_x0_round_trip(seed, abar):
    x0, eps = _pair(seed)
    x_t = ref.q_sample(x0, eps, abar)
    np.testing.assert_allclose(ref.x0_from_eps(x_t, eps, abar), x0, atol=1e-9)
    np.testing.assert_allclose(ref.eps_from_x0(x_t, x0, abar), eps, atol=1e-9)


@given(seeds, st.floats(0.0, 1.0))
def test_v_round_trips(seed, abar):
    """v-parameterisation conversions are exact rotations, valid on all of [0, 1]."""
    x0, eps = _pair(seed)
    x_t = ref.q_sample(x0, eps, abar)
    v = ref.v_from_x0_eps(x0, eps, abar)
    np.testing.assert_allclose(ref.x0_from_v(x_t, v, abar), x0, atol=1e-12)
    np.testing.assert_allclose(ref.eps_from_v(x_t, v, abar), eps, atol=1e-12)
    # (x_t, v) is a rotation of (x0, eps): norms are preserved
    np.testing.assert_allclose(x_t**2 + v**2, x0**2 + eps**2, rtol=1e-12)


def test_per_sample_alpha_bar_broadcasts():
    x0, eps = _pair(0, (2, 3))
    abar = np.array([[0.3], [0.9]])
    x_t = ref.q_sample(x0, eps, abar)
    for i in range(2):
        np.testing.assert_allclose(x_t[i], ref.q_sample(x0[i], eps[i], abar[i, 0]))


@given(st.floats(1e-4, 1 - 1e-3), st.floats(0.0, 1.0), st.floats(-3, 3), st.floats(-3, 3))
def test_q_posterior_is_the_gaussian_conditional(abar_prev, frac, x0, x_t):
    """Independent derivation: condition the joint Gaussian (x_prev, x_t) | x_0 on x_t.

    x_prev | x0 ~ N(sqrt(abar_prev) x0, 1 - abar_prev)
    x_t | x_prev ~ N(sqrt(a) x_prev, 1 - a),   a = abar_t / abar_prev
    """
    abar_t = abar_prev * (1e-3 + (1 - 1e-3) * frac) * (1 - 1e-9)  # 0 < abar_t < abar_prev
    a = abar_t / abar_prev
    mu = np.array([np.sqrt(abar_prev) * x0, np.sqrt(abar_t) * x0])  # joint mean of (x_prev, x_t)
    v_prev = 1 - abar_prev
    cov = np.array(
        [
            [v_prev, np.sqrt(a) * v_prev],
            [np.sqrt(a) * v_prev, a * v_prev + (1 - a)],
        ]
    )
    # standard formula: E = mu1 + S12 S22^-1 (x_t - mu2), Var = S11 - S12 S22^-1 S21
    cond_mean = mu[0] + cov[0, 1] / cov[1, 1] * (x_t - mu[1])
    cond_var = cov[0, 0] - cov[0, 1] ** 2 / cov[1, 1]

    mean, var = ref.q_posterior(x0, x_t, abar_t, abar_prev)
    np.testing.assert_allclose(mean, cond_mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(var, cond_var, rtol=1e-9, atol=1e-12)


def test_q_posterior_to_x0_is_a_point_mass():
    mean, var = ref.q_posterior(np.array([0.7, -1.2]), np.array([3.0, 4.0]), 0.4, 1.0)
    np.testing.assert_allclose(mean, [0.7, -1.2], atol=1e-15)
    assert var == 0.0
