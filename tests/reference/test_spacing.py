"""Inference timestep spacings: hand-checked cases, structure, and diffusers agreement."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from diffkit_reference import timesteps


# Hand checks, T = 10, steps = 3:
#   leading:  ratio = 10 // 3 = 3, [0, 3, 6] reversed                       -> [6, 3, 0]
#   trailing: 10 - [0, 10/3, 20/3] = [10, 6.67, 3.33] -> [10, 7, 3] - 1       -> [9, 6, 2]
#   linspace: linspace(0, 9, 3) = [0, 4.5, 9] -> half-to-even [0, 4, 9], rev. -> [9, 4, 0]
@pytest.mark.parametrize(
    "spacing, expected",
    [("leading", [6, 3, 0]), ("trailing", [9, 6, 2]), ("linspace", [9, 4, 0])],
)
def test_hand_checked_T10_steps3(spacing, expected):
    t = timesteps(10, 3, spacing)
    assert t.dtype == np.int64
    assert t.tolist() == expected


def test_hand_checked_more():
    # leading with offset 1 (Stable Diffusion's setting): ratio 250 -> [750, 500, 250, 0] + 1
    assert timesteps(1000, 4, "leading", steps_offset=1).tolist() == [751, 501, 251, 1]
    # offset is ignored by trailing / linspace, as in diffusers
    assert timesteps(1000, 4, "trailing", steps_offset=1).tolist() == [999, 749, 499, 249]
    # linspace(0, 999, 4) = [0, 333, 666, 999], exact
    assert timesteps(1000, 4, "linspace").tolist() == [999, 666, 333, 0]
    # trailing, exact tie: T=7, steps=6: 7 - 3*7/6 = 3.5 -> 4 (half to even) -> 3
    assert timesteps(7, 6, "trailing").tolist() == [6, 5, 4, 3, 1, 0]
    # steps = T gives every timestep for all three spacings
    for spacing in ("leading", "trailing", "linspace"):
        assert timesteps(5, 5, spacing).tolist() == [4, 3, 2, 1, 0]


@given(st.integers(1, 2000), st.data(), st.sampled_from(["leading", "trailing", "linspace"]))
def test_structure(T, data, spacing):
    steps = data.draw(st.integers(1, T))
    t = timesteps(T, steps, spacing)
    assert t.dtype == np.int64 and t.shape == (steps,)
    assert np.all(np.diff(t) < 0)
    assert t.min() >= 0 and t.max() <= T - 1
    if spacing == "trailing":
        assert t[0] == T - 1
    else:
        assert t[-1] == 0
    if spacing == "linspace" and steps > 1:  # numpy.linspace(0, T-1, 1) is [0]
        assert t[0] == T - 1


def test_errors():
    with pytest.raises(ValueError, match="leading.*trailing.*linspace"):
        timesteps(1000, 10, "karras")
    for bad in (0, 1001, -3):
        with pytest.raises(ValueError, match="leading"):
            timesteps(1000, bad, "trailing")


@pytest.mark.parametrize(
    "T, steps, spacing, offset",
    [
        (10, 3, "leading", 0), (10, 3, "trailing", 0), (10, 3, "linspace", 0),
        (1000, 50, "leading", 1), (1000, 3, "leading", 0),
        (1000, 3, "trailing", 0), (1000, 7, "trailing", 0), (1000, 30, "trailing", 0), (1000, 50, "trailing", 0),
        (1000, 7, "linspace", 0), (1000, 50, "linspace", 0),
        (1000, 1000, "trailing", 0),
    ],
)
def test_matches_diffusers(T, steps, spacing, offset):
    diffusers = pytest.importorskip("diffusers")
    sched = diffusers.DDPMScheduler(num_train_timesteps=T, timestep_spacing=spacing, steps_offset=offset)
    sched.set_timesteps(steps)
    assert timesteps(T, steps, spacing, steps_offset=offset).tolist() == sched.timesteps.tolist()
