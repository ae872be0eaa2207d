"""Every registered schedule against invariants, and the built-ins against the numpy reference."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import diffkit
import diffkit_reference as ref
from diffkit.errors import ConfigError, UnknownNameError
from diffkit.registry import PluginHost

# The numpy twin of each built-in β table: name -> (reference function, config keys it takes)
REFERENCE_BETAS = {
    "linear": lambda c: ref.betas_linear(c.num_train_timesteps, c.beta_start, c.beta_end),
    "scaled_linear": lambda c: ref.betas_scaled_linear(c.num_train_timesteps, c.beta_start, c.beta_end),
    "cosine": lambda c: ref.betas_cosine(c.num_train_timesteps, c.offset, c.max_beta),
    "sigmoid": lambda c: ref.betas_sigmoid(c.num_train_timesteps, c.beta_start, c.beta_end, c.low, c.high),
}

ALL_SCHEDULES = PluginHost(environ={}).names("schedule")  # built-ins plus installed plugins
# the β/ᾱ-table schedules, which take the zero-terminal-SNR rescale (the flow schedule's table always
# ends at zero SNR: tests/sampling/test_flow.py)
VP_SCHEDULES = [
    name for name in ALL_SCHEDULES
    if "rescale_zero_terminal_snr" in inspect.signature(diffkit.get("schedule", name)).parameters
]


def reference_betas(name: str, schedule) -> np.ndarray:
    betas = REFERENCE_BETAS[name](schedule)
    return ref.rescale_zero_terminal_snr(betas) if schedule.rescale_zero_terminal_snr else betas


@pytest.mark.parametrize("name", VP_SCHEDULES)
@pytest.mark.parametrize("rescale", [False, True])
def test_every_schedule_satisfies_the_invariants(name, rescale):
    schedule = diffkit.build("schedule", name, rescale_zero_terminal_snr=rescale)
    abar = schedule.alphas_cumprod.numpy()
    assert abar.dtype == np.float64
    assert np.all(np.diff(abar) < 0), "ᾱ must be strictly decreasing"
    assert 0 < abar[0] <= 1
    assert abar[-1] == 0 if rescale else abar[-1] > 0
    np.testing.assert_allclose(np.sqrt(abar) ** 2 + np.sqrt(1 - abar) ** 2, 1, rtol=0, atol=1e-15)
    sigmas = schedule.sigmas.numpy()
    assert np.all(np.isfinite(sigmas)) and np.all(np.diff(sigmas) > 0)


@pytest.mark.parametrize("name", sorted(REFERENCE_BETAS))
@pytest.mark.parametrize("rescale", [False, True])
def test_builtin_tables_match_the_reference(name, rescale):
    schedule = diffkit.build("schedule", name, rescale_zero_terminal_snr=rescale)
    betas = reference_betas(name, schedule)
    np.testing.assert_allclose(schedule.betas.numpy(), betas, rtol=1e-12, atol=1e-15)
    abar = ref.alphas_cumprod(betas)
    np.testing.assert_allclose(schedule.alphas_cumprod.numpy(), abar, rtol=1e-12, atol=1e-15)
    finite = abar > 0
    np.testing.assert_allclose(
        schedule.sigmas.numpy()[finite], ref.sigmas_from_alphas_cumprod(abar[finite]), rtol=1e-10
    )


@given(
    name=st.sampled_from(sorted(REFERENCE_BETAS)),
    T=st.integers(2, 2000),
    rescale=st.booleans(),
    data=st.data(),
)
def test_builtin_tables_match_the_reference_for_any_config(name, T, rescale, data):
    schedule = diffkit.build("schedule", name, num_train_timesteps=T, rescale_zero_terminal_snr=rescale)
    np.testing.assert_allclose(schedule.betas.numpy(), reference_betas(name, schedule), rtol=1e-11, atol=1e-14)


@given(
    T=st.integers(2, 1200),
    spacing=st.sampled_from(["leading", "trailing", "linspace"]),
    data=st.data(),
)
def test_spacings_match_the_reference(T, spacing, data):
    steps = data.draw(st.integers(1, T))
    schedule = diffkit.build("schedule", "linear", num_train_timesteps=T)
    ours = schedule.timesteps(steps, spacing).numpy()
    np.testing.assert_array_equal(ours, ref.timesteps(T, steps, spacing))
    assert len(ours) == steps and np.all(np.diff(ours) < 0) and 0 <= ours.min() and ours.max() <= T - 1
    sigmas = schedule.sigmas_for(steps, spacing)
    assert sigmas.dtype == torch.float64 and sigmas.shape == (steps + 1,) and sigmas[-1] == 0
    assert torch.all(sigmas[1:] < sigmas[:-1])
    np.testing.assert_array_equal(sigmas[:-1].numpy(), schedule.sigmas.numpy()[ours])


def test_leading_spacing_with_offset_matches_stable_diffusion_convention():
    schedule = diffkit.build("schedule", "scaled_linear")
    t = schedule.timesteps(50, "leading", steps_offset=1)
    np.testing.assert_array_equal(t.numpy(), ref.timesteps(1000, 50, "leading", steps_offset=1))
    assert t[0] == 981 and t[-1] == 1


@pytest.mark.parametrize("name", sorted(REFERENCE_BETAS))
def test_sigma_to_t_inverts_the_table_and_t_to_sigma(name):
    schedule = diffkit.build("schedule", name)
    t = torch.arange(schedule.num_train_timesteps, dtype=torch.float64)
    np.testing.assert_allclose(schedule.sigma_to_t(schedule.sigmas).numpy(), t.numpy(), atol=1e-9)
    fractional = torch.linspace(0, schedule.num_train_timesteps - 1, 777, dtype=torch.float64)
    roundtrip = schedule.sigma_to_t(schedule.t_to_sigma(fractional))
    np.testing.assert_allclose(roundtrip.numpy(), fractional.numpy(), atol=1e-8)
    # outside the table: clamp, never NaN
    extremes = schedule.sigma_to_t(torch.tensor([0.0, 1e-9, 1e9]))
    assert extremes.tolist() == [0.0, 0.0, float(schedule.num_train_timesteps - 1)]


def test_zero_terminal_snr_keeps_sigma_finite():
    schedule = diffkit.build("schedule", "scaled_linear", rescale_zero_terminal_snr=True)
    assert schedule.alphas_cumprod[-1] == 0
    assert schedule.sigma_max >= 4095  # ᾱ_T counted as ≤ 2⁻²⁴ → σ ≥ 4096
    assert schedule.sigma_max > float(schedule.sigmas[-2])
    sigmas = schedule.sigmas_for(10, "trailing")
    assert torch.isfinite(sigmas).all() and sigmas[0] == schedule.sigma_max


@pytest.mark.parametrize("steps", [0, -1, 1001, 2.5, "10", True, None])
def test_bad_step_counts_name_the_valid_range(steps):
    schedule = diffkit.build("schedule", "linear")
    with pytest.raises(ConfigError, match=r"1\.\.1000"):
        schedule.sigmas_for(steps)


@pytest.mark.parametrize(
    "spacing, offset, error, words",
    [
        ("leadin", 0, UnknownNameError, "did you mean 'leading'"),
        ("trailing", 1, ConfigError, "only applies to .*'leading'"),
        ("leading", 200, ConfigError, "past the last training timestep"),
        ("leading", -1, ConfigError, "≥ 0"),
    ],
)
def test_bad_spacing_and_offset_are_clear_errors(spacing, offset, error, words):
    with pytest.raises(error, match=words):
        diffkit.build("schedule", "linear").sigmas_for(10, spacing, steps_offset=offset)


@pytest.mark.parametrize(
    "timesteps, message",
    [
        ([10, 20, 5], "strictly decreasing"),
        ([10, 10, 5], "strictly decreasing"),
        ([1000, 5], r"0\.\.999"),
        ([5, -1], r"0\.\.999"),
        ([5.5, 1.0], "integers"),
        ([], "non-empty"),
    ],
)
def test_user_timesteps_are_validated(timesteps, message):
    schedule = diffkit.build("schedule", "linear")
    with pytest.raises(ConfigError, match=message):
        schedule.sigmas_from_timesteps(timesteps)


def test_user_timesteps_give_their_table_sigmas():
    schedule = diffkit.build("schedule", "linear")
    sigmas = schedule.sigmas_from_timesteps([999, 500, 3])
    np.testing.assert_array_equal(sigmas.numpy(), [*schedule.sigmas[[999, 500, 3]].numpy(), 0.0])


@pytest.mark.parametrize(
    "config, message",
    [
        ({"beta_start": 0.02, "beta_end": 0.01}, "greater than beta_start"),
        ({"beta_end": 1.5}, r"in \(0, 1\)"),
        ({"num_train_timesteps": 1}, "in 2 … 100000"),
        ({"num_train_timesteps": 10.0}, "integer"),
        ({"rescale_zero_terminal_snr": "yes"}, "bool"),
    ],
)
def test_bad_schedule_config_is_a_clear_error(config, message):
    with pytest.raises((ConfigError, TypeError), match=message):
        diffkit.build("schedule", "linear", **config)


def test_schedule_config_round_trips_through_a_dict():
    schedule = diffkit.build("schedule", "cosine", num_train_timesteps=500, rescale_zero_terminal_snr=True)
    again = type(schedule)(**schedule.to_dict())
    assert again == schedule
    assert torch.equal(again.alphas_cumprod, schedule.alphas_cumprod)


def test_schedules_match_diffusers():
    diffusers = pytest.importorskip("diffusers")
    names = {"linear": "linear", "scaled_linear": "scaled_linear", "cosine": "squaredcos_cap_v2", "sigmoid": "sigmoid"}
    for ours, theirs in names.items():
        for rescale in (False, True):
            schedule = diffkit.build("schedule", ours, rescale_zero_terminal_snr=rescale)
            betas = {k: getattr(schedule, k) for k in ("beta_start", "beta_end") if hasattr(schedule, k)}
            peer = diffusers.DDPMScheduler(beta_schedule=theirs, rescale_betas_zero_snr=rescale, **betas)
            if rescale:  # diffusers rescales in float32: ᾱ agrees to float32 precision
                peer_abar = peer.alphas_cumprod.double().numpy()
                np.testing.assert_allclose(schedule.alphas_cumprod.numpy(), peer_abar, rtol=0, atol=2e-6)
            else:
                np.testing.assert_allclose(schedule.betas.numpy(), peer.betas.double().numpy(), rtol=2e-6)
            for spacing in ("leading", "trailing", "linspace"):
                offset = 1 if spacing == "leading" else 0
                peer = diffusers.DDPMScheduler(beta_schedule=theirs, timestep_spacing=spacing, steps_offset=offset)
                peer.set_timesteps(37)
                ours_t = schedule.timesteps(37, spacing, steps_offset=offset)
                np.testing.assert_array_equal(ours_t.numpy(), peer.timesteps.numpy())
