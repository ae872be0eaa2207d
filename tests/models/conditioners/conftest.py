"""Shared set-up of the conditioner tests: every module runs on one thread (tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_thread_for_each_module(one_thread):
    yield
