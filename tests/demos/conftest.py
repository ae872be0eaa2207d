"""Fixtures of the demo tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """A judge-network cache folder, one per test module."""
    return tmp_path_factory.mktemp("diffkit-cache")
