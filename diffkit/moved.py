"""Old import paths of diffkit 0.1 that still work for one release, with a DeprecationWarning.

A module that moved leaves a shim behind: ``__getattr__ = moved_names(__name__, {name: new
module})``, or ``moved_names(__name__, "new.module")`` when the whole module moved. Each attribute is imported from its new home only when asked for, so the shim
costs nothing until an old import runs, and the warning names the new path to import from.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any


def moved_names(old_module: str, homes: Mapping[str, str] | str) -> Callable[[str], Any]:
    """A module ``__getattr__`` that serves ``name`` from its new module and warns on each use.

    ``homes`` maps each name to its new module, or is one module that took every public name.
    """

    def __getattr__(name: str) -> Any:
        new = homes if isinstance(homes, str) else homes.get(name)
        module = importlib.import_module(new) if new is not None and not name.startswith("_") else None
        if module is None or not hasattr(module, name):
            raise AttributeError(f"module {old_module!r} has no attribute {name!r}")
        warnings.warn(
            f"{old_module}.{name} moved to {new}.{name}; import it from there "
            f"({old_module} is removed in diffkit 0.3)",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(module, name)

    return __getattr__
