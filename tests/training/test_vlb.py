"""The improved-DDPM bound L_vlb (diffkit.training.vlb) against the float64 reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import diffkit
import diffkit_reference as ref
from diffkit.training.vlb import discretized_gaussian_log_likelihood, normal_kl, posterior_mean_logvar, vlb_loss
from tests.sweeps import SCHEDULES

seeds = st.integers(0, 2**31 - 1)
predictions = st.sampled_from(["eps", "x0", "v"])
schedule_specs = st.tuples(st.sampled_from(SCHEDULES), st.booleans())  # (name, zero terminal SNR)
GRID = np.linspace(-1.0, 1.0, 256)
SHAPE = (4, 2, 3, 3)  # [B, C, H, W]
FLOOR = math.log(1e-12)  # the torch decoder's floor on a bin's mass


def build_schedule(spec):
    name, zero_snr = spec
    return diffkit.build("schedule", name, rescale_zero_terminal_snr=zero_snr)


def t64(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))


@given(seeds)
def test_normal_kl_matches_reference(seed):
    rng = np.random.default_rng(seed)
    m1, m2 = rng.normal(0, 2, (2, 7)), rng.normal(0, 2, (2, 7))
    lv1, lv2 = rng.uniform(-12, 2, (2, 7)), rng.uniform(-12, 2, (2, 7))
    got = normal_kl(t64(m1), t64(lv1), t64(m2), t64(lv2))
    np.testing.assert_allclose(got.numpy(), ref.normal_kl(m1, lv1, m2, lv2), rtol=1e-12, atol=1e-13)


@given(seeds, st.floats(-4.0, 0.5))
def test_discretized_log_likelihood_matches_reference(seed, log_scale):
    """Equal where a bin holds ≥ 1e-8 of the mass; the torch code floors a bin's mass at 1e-12."""
    rng = np.random.default_rng(seed)
    x = GRID[rng.integers(0, 256, 64)]
    mean = np.clip(x + rng.normal(0, 3 * math.exp(log_scale), 64), -1.3, 1.3)
    expected = ref.discretized_gaussian_log_likelihood(x, mean, log_scale)
    got = discretized_gaussian_log_likelihood(t64(x), t64(mean), torch.full((64,), log_scale, dtype=torch.float64))
    got = got.numpy()
    exact = expected > math.log(1e-8)
    np.testing.assert_allclose(got[exact], expected[exact], rtol=1e-7, atol=1e-8)
    assert np.all(np.isfinite(got)) and np.all(got >= FLOOR - 1e-9)
    far = expected < FLOOR - 1  # a negligible bin: the floor, never −∞
    np.testing.assert_allclose(got[far], FLOOR, rtol=1e-9)


@given(st.floats(-1.2, 1.2), st.floats(-5.0, 0.5))
def test_discretized_bins_sum_to_one(mean, log_scale):
    probs = discretized_gaussian_log_likelihood(
        t64(GRID), torch.full((256,), mean, dtype=torch.float64), torch.full((256,), log_scale, dtype=torch.float64)
    ).exp()
    # each floored bin (≤ 1e-12) can add at most 1e-12 to the sum
    assert abs(float(probs.sum()) - 1) < 256e-12 + 1e-12


@given(seeds, schedule_specs)
def test_posterior_mean_logvar_matches_reference(seed, spec):
    """μ̃_t and log β̃_t from the reference's q_posterior (DDPM eqs. 6–7), log β_t from the table;
    at t = 0 log β̃_0 = log 0 is replaced by log β̃_1 (improved DDPM)."""
    schedule = build_schedule(spec)
    T = schedule.num_train_timesteps
    rng = np.random.default_rng(seed)
    t = np.concatenate([[0, 1, T - 1], rng.integers(0, T, 5)])
    x0, x_t = rng.standard_normal((8, 3)), rng.standard_normal((8, 3))
    mean, log_tilde, log_beta = posterior_mean_logvar(schedule, t64(x0), t64(x_t), torch.from_numpy(t))
    assert mean.shape == (8, 3) and log_tilde.shape == log_beta.shape == (8, 1)
    betas = schedule.betas.numpy()
    abar = ref.alphas_cumprod(betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])[t]
    ref_mean, ref_var = ref.q_posterior(x0, x_t, abar[t][:, None], abar_prev[:, None])
    _, var_1 = ref.q_posterior(0.0, 0.0, abar[1], abar[0])
    ref_log_tilde = np.where(t == 0, np.log(var_1), np.log(np.where(t == 0, 1.0, ref_var[:, 0])))
    np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(log_tilde.numpy()[:, 0], ref_log_tilde, rtol=1e-9)
    np.testing.assert_allclose(log_beta.numpy()[:, 0], np.log(betas[t]), rtol=1e-12)
    np.testing.assert_allclose(mean.numpy()[0], x0[0], rtol=1e-12)  # t = 0: the posterior mean is x0


def _vlb_case(seed: int, schedule, prediction: str, dtype=np.float64, last: bool = True):
    """A batch with t = 0, 1 and (if ``last``) T − 1 always present; predictions = exact target + error.

    Returns ([x0, x_t], t, [prediction, v_raw], ᾱ_t [B, 1, 1, 1], the reference's mean L_t).
    """
    rng = np.random.default_rng(seed)
    T = schedule.num_train_timesteps
    t = np.concatenate([[0, 1, T - 1 if last else 2], rng.integers(0, T - 1, SHAPE[0] - 3)])
    abar = schedule.alphas_cumprod.numpy()[t].reshape(-1, 1, 1, 1)
    x0 = GRID[rng.integers(0, 256, SHAPE)]
    eps = rng.standard_normal(SHAPE)
    x_t = ref.q_sample(x0, eps, abar)
    # errors of 0.05, but 0.002 at t = 0 (index 0): the decoder's std there is ~0.005-0.01, and a
    # bin mass below 1e-12 would meet the torch floor the reference does not have
    error_scale = np.where(t == 0, 0.002, 0.05).reshape(-1, 1, 1, 1)
    prediction_out = ref.training_target(x0, eps, abar, prediction) + error_scale * rng.standard_normal(SHAPE)
    v_raw = rng.uniform(-1, 1, SHAPE)
    if prediction == "eps":
        x0_hat = ref.x0_from_eps(x_t, prediction_out, abar)
    elif prediction == "x0":
        x0_hat = prediction_out
    else:
        x0_hat = ref.x0_from_v(x_t, prediction_out, abar)
    frac = ref.learned_variance_frac(v_raw)
    betas = schedule.betas.numpy()
    expected = np.mean([ref.vlb_term(x0[i], x_t[i], int(t[i]), x0_hat[i], frac[i], betas) for i in range(SHAPE[0])])
    args = [torch.from_numpy(a.astype(dtype)) for a in (x0, x_t)]
    rest = [torch.from_numpy(a.astype(dtype)) for a in (prediction_out, v_raw)]
    return args, torch.from_numpy(t), rest, torch.from_numpy(abar.astype(dtype)), expected


@given(seeds, predictions, st.sampled_from(SCHEDULES))
def test_vlb_loss_matches_reference(seed, prediction, name):
    """Batch mean of L_t in bits/dim: KL for t > 0, decoder NLL for t = 0 (t = 0 in every batch).

    ε-prediction at t ≈ T with a zero-terminal-SNR table divides by √ᾱ = 0, so only the plain tables here.
    """
    schedule = diffkit.build("schedule", name)
    (x0, x_t), t, (out, v_raw), abar, expected = _vlb_case(seed, schedule, prediction)
    got = vlb_loss(schedule, x0, x_t, t, out, v_raw, prediction, abar)
    assert got.shape == () and got.dtype == torch.float64
    np.testing.assert_allclose(float(got), expected, rtol=1e-8)
    assert expected > 0.1  # the decoder and t = 1 terms are far from 0: a real comparison


@given(seeds, predictions)
def test_vlb_loss_of_zero_terminal_snr_tables_matches_reference(seed, prediction):
    """ᾱ_{T−1} = 0 (β_{T−1} = 1): x0 and v predictions stay finite there and are tested at T − 1;
    ε is not (x0 = (x_t − ε)/√ᾱ divides by 0), so its batches stop at T − 2."""
    schedule = build_schedule(("scaled_linear", True))
    (x0, x_t), t, (out, v_raw), abar, expected = _vlb_case(seed, schedule, prediction, last=prediction != "eps")
    got = vlb_loss(schedule, x0, x_t, t, out, v_raw, prediction, abar)
    np.testing.assert_allclose(float(got), expected, rtol=1e-8)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_vlb_loss_in_float32_is_close_to_the_float64_reference(prediction):
    schedule = diffkit.build("schedule", "linear")
    (x0, x_t), t, (out, v_raw), abar, expected = _vlb_case(11, schedule, prediction, dtype=np.float32)
    got = vlb_loss(schedule, x0, x_t, t, out, v_raw, prediction, abar)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(float(got), expected, rtol=2e-3)


def test_vlb_loss_is_zero_at_the_true_posterior():
    """Exact prediction and Σ = β̃_t (v_raw = −1) give L_t = 0 for every t > 0."""
    schedule = diffkit.build("schedule", "cosine")
    rng = np.random.default_rng(0)
    t = torch.arange(1, 1000, 111)
    abar = schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1)
    x0 = t64(rng.standard_normal((len(t), 2, 3, 3)))
    x_t = abar.sqrt() * x0 + (1 - abar).sqrt() * t64(rng.standard_normal(x0.shape))
    got = vlb_loss(schedule, x0, x_t, t, x0, -torch.ones_like(x0), "x0", abar)
    assert abs(float(got)) < 1e-12
