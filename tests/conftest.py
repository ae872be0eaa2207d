"""Shared test set-up: hypothesis profiles, a clean plugin registry per test, a one-thread fixture."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# "ci": bounded and derandomized, so CI is reproducible; "dev": more examples, random.
settings.register_profile(
    "ci", max_examples=30, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


@pytest.fixture(autouse=True)
def _fresh_registry():
    """Each test starts with an unloaded default registry (and leaves none behind)."""
    from diffkit import registry

    registry.reset()
    yield
    registry.reset()


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module of tiny models: faster than OpenMP contention on 2 cores.

    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
