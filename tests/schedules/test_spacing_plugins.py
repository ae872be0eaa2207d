"""Spacings are a registry kind: a third-party plugin adds one through the hook, diffkit lists,
uses and checks it like a built-in, and a wrong spacing is caught (by the grid check before a
sampler sees it, and by the conformance kit)."""

from __future__ import annotations

import math

import pytest
import torch

import diffkit
from diffkit import registry
from diffkit.cli.commands import main
from diffkit.errors import ConfigError, UnknownNameError
from diffkit.schedules import SPACINGS, places_timesteps, spacing_options
from diffkit.testing import SpacingContract, check_spacing
from tests.analytic_models import ExactVPModel
from tests.test_plugins import FakeEntryPoint, host, plugin_module

# An "Align Your Steps"-style spacing (Sabour et al. 2024): a fixed table of σ optimized for one
# model, stretched to N steps by interpolating log σ linearly in the step index. The table is
# made up here (10 levels between the schedule's ends); the mechanics are the point.
AYS_FRACTIONS = torch.linspace(1.0, 0.0, 10, dtype=torch.float64) ** 1.6


def table_spacing(schedule, steps: int, *, strength: float = 1.0) -> torch.Tensor:
    """Log-σ interpolation of a fixed 10-level table, then 0 (Align Your Steps-style)."""
    diffkit.schedules.spacings.check_sigma_steps(steps)
    low, high = math.log(float(schedule.sigmas[0])), math.log(float(schedule.sigmas[-1]))
    table = low + (high - low) * AYS_FRACTIONS**strength  # log σ, decreasing, [10]
    position = torch.linspace(0, len(table) - 1, steps, dtype=torch.float64)
    lower = position.floor().long().clamp(max=len(table) - 2)
    weight = position - lower
    log_sigma = (1 - weight) * table[lower] + weight * table[lower + 1]
    return torch.cat([log_sigma.exp(), torch.zeros(1, dtype=torch.float64)])


def stride_timesteps(num_train_timesteps: int, steps: int) -> torch.Tensor:
    """t_i = T − 1 − i·⌊T/N⌋: a timestep spacing that starts at T − 1 with an integer stride."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_train_timesteps:
        raise ConfigError(f"steps must be an integer in 1..{num_train_timesteps}, got {steps!r}")
    return num_train_timesteps - 1 - (num_train_timesteps // steps) * torch.arange(steps, dtype=torch.int64)


def stride_grid(schedule, steps: int) -> torch.Tensor:
    """σ at t_i = T − 1 − i·⌊T/N⌋."""
    return schedule.sigmas_from_timesteps(stride_timesteps(schedule.num_train_timesteps, steps))


def rising(schedule, steps: int) -> torch.Tensor:
    """A wrong spacing: increasing σ."""
    return torch.cat([torch.linspace(1.0, 10.0, steps, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])


def no_final_zero(schedule, steps: int) -> torch.Tensor:
    """A wrong spacing: steps + 1 positive values, no final 0."""
    return torch.logspace(2, -2, steps + 1, dtype=torch.float64)


def one_short(schedule, steps: int) -> torch.Tensor:
    """A wrong spacing: steps values in all (the final 0 included)."""
    return table_spacing(schedule, steps)[1:]


@pytest.fixture
def plugin():
    def register(spacings):
        spacings.add("ays_table", table_spacing, paper="Sabour et al. 2024 (Align Your Steps)")
        spacings.add("stride", stride_grid, timesteps=stride_timesteps)
        for fn in (rising, no_final_zero, one_short):
            spacings.add(fn.__name__.replace("_", "-"), fn)

    module = plugin_module("ays_mod", diffkit_register_spacings=register)
    registry.reset(host(FakeEntryPoint("ays", module, dist="diffkit-ays", version="0.3")))
    yield
    registry.reset()


def test_a_plugin_spacing_is_registered_with_its_distribution_and_options(plugin, capsys):
    entry = diffkit.get_entry("spacing", "ays_table")
    assert (entry.origin.plugin, entry.origin.distribution, entry.origin.version) == ("ays", "diffkit-ays", "0.3")
    assert "ays_table" in SPACINGS and SPACINGS["ays_table"] is table_spacing
    assert spacing_options("ays_table") == ("strength",)
    assert not places_timesteps("ays_table") and places_timesteps("stride")
    assert main(["list", "spacings"]) == 0
    listed = capsys.readouterr().out
    assert "ays_table" in listed and "diffkit-ays" in listed and "karras" in listed


def test_a_plugin_spacing_drives_sigmas_for_timesteps_and_sample(plugin):
    schedule = diffkit.build("schedule", "linear")
    grid = schedule.sigmas_for(12, "ays_table", strength=0.8)
    assert torch.equal(grid, table_spacing(schedule, 12, strength=0.8))
    assert torch.equal(schedule.timesteps(5, "stride"), torch.tensor([999, 799, 599, 399, 199]))
    with pytest.raises(ConfigError, match="σ spacing"):
        schedule.timesteps(5, "ays_table")
    denoiser = diffkit.VPDenoiser(ExactVPModel(schedule, "eps"), schedule, "eps")
    ours = diffkit.sample(denoiser, (2, 3), schedule=schedule, sampler="euler", steps=12, spacing="ays_table",
                          spacing_options={"strength": 0.8}, generator=0, dtype=torch.float64)
    direct = diffkit.sample(denoiser, (2, 3), sampler="euler", sigmas=grid, generator=0, dtype=torch.float64)
    assert torch.equal(ours, direct)
    bound = diffkit.build("spacing", "ays_table", strength=0.8)
    assert torch.equal(bound(schedule, 12), grid)


def test_unknown_spacings_and_options_are_named(plugin):
    schedule = diffkit.build("schedule", "linear")
    with pytest.raises(UnknownNameError, match="ays_table"):
        schedule.sigmas_for(10, "ays_tabel")
    with pytest.raises(UnknownNameError, match="strength"):
        schedule.sigmas_for(10, "ays_table", strenght=2.0)
    with pytest.raises(UnknownNameError, match="strength"):
        diffkit.build("spacing", "ays_table", strenght=2.0)


@pytest.mark.parametrize(
    "name, message",
    [("rising", "repeat a σ in float64 \\(or rise\\)"), ("no-final-zero", "does not end at 0"),
     ("one-short", "returned 10 values for 10 steps")],
)
def test_a_wrong_plugin_grid_is_refused_before_any_sampler_sees_it(plugin, name, message):
    schedule = diffkit.build("schedule", "linear")
    with pytest.raises(ConfigError, match=message) as caught:
        diffkit.sample(lambda x, sigma, cond=None: x * 0, (1, 2), schedule=schedule, steps=10, spacing=name)
    if name != "rising":
        assert "diffkit-ays" in str(caught.value)  # the plugin at fault is named


def test_the_kit_passes_good_spacings_and_fails_wrong_ones(plugin):
    assert check_spacing("ays_table").ok
    assert check_spacing("ays_table", options={"strength": 0.5}).ok
    report = check_spacing("stride")
    timesteps = next(r for r in report.results if r.name == "timesteps")
    assert timesteps.ok and not timesteps.skipped
    for wrong in ("rising", "no-final-zero", "one-short"):
        report = check_spacing(wrong)
        assert not report.ok, report.format()
        assert not all(r.ok for r in report.results if r.name.startswith("grid["))


def test_the_kit_fails_a_spacing_that_never_reaches_sigma_max():
    def shy(schedule, steps):
        return schedule.sigmas_for(steps, "karras", sigma_max=float(schedule.sigmas[-1]) / 2)

    report = check_spacing(shy)
    assert not next(r for r in report.results if r.name == "hits_sigma_max").ok


def test_the_kit_fails_timesteps_that_disagree_with_the_grid():
    def off_by_one(num_train_timesteps, steps):
        return diffkit.schedules.spacings.trailing_timesteps(num_train_timesteps, steps) - 1

    report = check_spacing(diffkit.schedules.spacings.trailing_grid, timesteps=off_by_one)
    assert not next(r for r in report.results if r.name == "timesteps").ok


def test_diffkit_check_runs_the_spacing_kit(capsys):
    assert main(["check", "karras", "-o", "rho=5"]) == 0
    assert main(["check", "spacing:leading"]) == 0
    out = capsys.readouterr().out
    assert "spacing karras {'rho': 5}" in out and "PASS hits_sigma_max" in out and "spacing leading" in out


class TestKarrasContract(SpacingContract):
    spacing = "karras"
    options = {"rho": 3.0}


class TestTrailingContract(SpacingContract):
    spacing = "trailing"
