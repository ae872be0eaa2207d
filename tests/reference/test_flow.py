"""The float64 flow-matching reference: its identities, and diffkit's torch flow schedule against it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import diffkit
import diffkit_reference.flow as ref

times = st.floats(1e-6, 1 - 1e-6)
shifts = st.floats(0.05, 20.0)


@given(t=times, seed=st.integers(0, 2**32 - 1))
def test_velocity_recovers_x0_and_eps(t, seed):
    rng = np.random.default_rng(seed)
    x0, eps = rng.standard_normal(8), rng.standard_normal(8)
    x_t, v = ref.flow_forward(x0, eps, t), ref.flow_velocity(x0, eps)
    np.testing.assert_allclose(ref.x0_from_velocity(x_t, t, v), x0, atol=1e-12)
    np.testing.assert_allclose(ref.eps_from_velocity(x_t, t, v), eps, atol=1e-12)


@given(t=times, seed=st.integers(0, 2**32 - 1))
def test_sigma_form_is_x0_plus_sigma_eps(t, seed):
    """y = x_t/(1 − t) = x0 + σ·ε with σ = t/(1 − t), and λ = −log σ = logit(1 − t)."""
    rng = np.random.default_rng(seed)
    x0, eps = rng.standard_normal(8), rng.standard_normal(8)
    sigma = float(ref.sigma_from_t(t))
    np.testing.assert_allclose(ref.flow_forward(x0, eps, t) / (1 - t), x0 + sigma * eps, rtol=1e-9, atol=1e-9)
    assert float(ref.t_from_sigma(sigma)) == pytest.approx(t, rel=1e-12)
    assert -np.log(sigma) == pytest.approx(np.log((1 - t) / t), rel=1e-9, abs=1e-9)


def test_pure_noise_is_sigma_infinity():
    assert np.isinf(ref.sigma_from_t(1.0)) and ref.t_from_sigma(np.inf) == 1.0
    assert ref.sigma_from_t(0.0) == 0.0


@given(t=times, s=shifts)
def test_sd3_shift_is_flux_shift_with_mu_log_s(t, s):
    np.testing.assert_allclose(ref.shift_time(t, s), ref.shift_time_exponential(t, np.log(s)), rtol=1e-12)


@given(a=times, b=times, s=shifts)
def test_shift_keeps_the_ends_and_the_order(a, b, s):
    assert ref.shift_time(0.0, s) == 0.0 and ref.shift_time(1.0, s) == pytest.approx(1.0, rel=1e-14)
    if a < b:
        assert ref.shift_time(a, s) < ref.shift_time(b, s)
    shifted = float(ref.shift_time(a, s))
    assert shifted >= a * (1 - 1e-12) if s >= 1 else shifted <= a * (1 + 1e-12)  # s > 1 moves t towards noise


def test_dynamic_mu_passes_through_its_two_points():
    assert ref.dynamic_mu(256) == pytest.approx(0.5) and ref.dynamic_mu(4096) == pytest.approx(1.15)


@given(t=st.lists(times, min_size=1, max_size=16), s=shifts)
def test_torch_schedule_shift_matches_the_reference(t, s):
    schedule = diffkit.build("schedule", "flow", shift=s)
    got = schedule.shift_time(torch.tensor(t, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, ref.shift_time(np.array(t), s), rtol=1e-13)


@given(t=st.lists(times, min_size=1, max_size=16), seq=st.integers(1, 10_000))
def test_torch_dynamic_shift_matches_the_reference(t, seq):
    schedule = diffkit.build("schedule", "flow", use_dynamic_shifting=True)
    mu = schedule.mu_for(seq)
    assert mu == pytest.approx(ref.dynamic_mu(seq), rel=1e-12, abs=1e-12)
    got = schedule.shift_time(torch.tensor(t, dtype=torch.float64), mu).numpy()
    np.testing.assert_allclose(got, ref.shift_time_exponential(np.array(t), mu), rtol=1e-12)


@given(t=st.lists(times, min_size=1, max_size=16))
def test_torch_sigma_time_maps_match_the_reference(t):
    schedule = diffkit.build("schedule", "flow")
    t = np.array(t)
    sigma = schedule.t_to_sigma(torch.tensor(t * 1000, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(sigma, ref.sigma_from_t(t), rtol=1e-9)
    np.testing.assert_allclose(schedule.sigma_to_t(torch.from_numpy(sigma)).numpy(), t * 1000, rtol=1e-12)
