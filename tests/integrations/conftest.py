"""Fixtures of the integration tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """The tiny text encoders and tokenizers of the text-to-image pipelines (needs transformers)."""
    pytest.importorskip("transformers")
    from tests.integrations.transformers.tiny_encoders import Kit

    return Kit(tmp_path_factory.mktemp("encoders"))
