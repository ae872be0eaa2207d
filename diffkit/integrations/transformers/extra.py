"""The optional extra: ``transformers`` (and its ``tokenizers``), imported on first use with a clear error."""

from __future__ import annotations

import importlib
from types import ModuleType

from diffkit.errors import ConfigError

INSTALL = "pip install 'diffkit[transformers]'"


def require(name: str = "transformers") -> ModuleType:
    """The module ``name`` (``transformers`` or ``tokenizers``); missing: a :class:`ConfigError` naming the extra."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(
            f"the text-encoder conditioners need the {name!r} package, which is not installed: {INSTALL}"
        ) from exc
