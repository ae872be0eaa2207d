"""diffkit: diffusion models where every component is a plugin and every equation is checked.

Importing diffkit loads no plugin; registries fill on the first lookup.
"""

from __future__ import annotations

from diffkit.errors import (
    CheckpointError,
    ConfigError,
    ConflictError,
    DiffkitError,
    PluginError,
    ShapeError,
    UnknownNameError,
)
from diffkit.hookspecs import hookimpl
from diffkit.io.components import save_pretrained
from diffkit.io.pretrained import load_pretrained
from diffkit.pipeline import Pipeline
from diffkit.registry import KINDS, build, get, get_entry, names
from diffkit.sampling.denoisers import EDMDenoiser, FlowDenoiser, VPDenoiser
from diffkit.sampling.draw import sample
from diffkit.sampling.guidance import CFGDenoiser

__version__ = "0.1.0"

__all__ = [
    "CFGDenoiser", "CheckpointError", "EDMDenoiser", "FlowDenoiser", "KINDS", "ConfigError", "ConflictError", "DiffkitError",
    "Pipeline", "PluginError", "ShapeError", "UnknownNameError", "VPDenoiser", "__version__", "build", "get",
    "get_entry", "hookimpl", "load_pretrained", "names", "sample", "save_pretrained",
]
