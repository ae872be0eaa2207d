"""GPU-only tests: every test here needs CUDA and is skipped, with the reason, without it.

Run on a machine with a GPU: ``python -m pytest tests/gpu -q`` (bench/gpu.sh does).
"""

from __future__ import annotations

import pytest
import torch

NO_CUDA = "needs a CUDA device: torch.cuda.is_available() is False on this machine"


def cuda_available() -> bool:
    return torch.cuda.is_available()


@pytest.fixture(autouse=True)
def cuda() -> torch.device:
    """The CUDA device; skips the test (with :data:`NO_CUDA`) where there is none."""
    if not cuda_available():
        pytest.skip(NO_CUDA)
    return torch.device("cuda")


@pytest.fixture(autouse=True)
def _no_sync_debug_left_on():
    """A failing test must not leave sync debug mode on for the next one."""
    yield
    if cuda_available():
        torch.cuda.set_sync_debug_mode(0)
