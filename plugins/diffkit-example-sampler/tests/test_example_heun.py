"""The plugin's own tests: it is found, it passes the conformance kit, and the kit is sharp."""

from __future__ import annotations

from diffkit_example_sampler import heun

import diffkit
from diffkit.testing import SamplerContract, check_sampler


class TestExampleHeun(SamplerContract):
    """Every check of the conformance kit, one test each."""

    sampler = "example_heun"


def test_registered_with_its_distribution():
    entry = diffkit.get_entry("sampler", "example_heun")
    assert entry.obj is heun
    assert entry.origin.distribution == "diffkit-example-sampler"
    assert entry.reference is not None


def test_a_deliberately_wrong_copy_fails_the_kit():
    def heun_with_long_steps(denoiser, x, sigmas, *, cond=None, generator=None, callback=None):
        """Heun whose every step is 3% too long: a bug the kit must catch."""
        levels = sigmas.tolist()
        ones = x.new_ones(x.shape[0])
        for sigma, sigma_next in zip(levels[:-1], levels[1:]):
            h = 1.03 * (sigma_next - sigma)
            d = (x - denoiser(x, sigma * ones, cond)) / sigma
            if sigma_next == 0:
                x = x + h * d
            else:
                x_euler = x + h * d
                x = x + h * (d + (x_euler - denoiser(x_euler, sigma_next * ones, cond)) / sigma_next) / 2
        return x

    report = check_sampler(heun_with_long_steps)
    assert not report.ok, report.format()
