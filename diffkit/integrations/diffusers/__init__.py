"""diffkit ↔ diffusers (needs ``pip install 'diffkit[diffusers]'``: diffusers and greenlet).

- :class:`DiffkitScheduler`: a diffkit sampler as the scheduler of any diffusers pipeline.
- :func:`as_sampler`: a diffusers scheduler class as a diffkit sampler (the ``diffkit-diffusers`` plugin
  registers them as ``diffusers.*``, so ``diffkit check`` runs the conformance kit on them).
- :func:`noise_process`: a diffusers scheduler config's noise process as a diffkit schedule and denoiser.
- :class:`DiffusersTransformer`: diffusers' PixArt, SD3 and Flux transformers as diffkit backbones (the
  ``diffusers_transformer`` backbone, :class:`DiffusersTransformerConfig`; builders in
  :mod:`~diffkit.integrations.diffusers.backbones`).

The names load on first use (PEP 562), so ``diffkit.integrations.diffusers.noise`` — which reads
scheduler configs as plain JSON — imports neither diffusers nor greenlet.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "DiffkitScheduler": "scheduler", "DiffkitSchedulerOutput": "scheduler",
    "as_sampler": "sampler_adapter", "OutOfRangeError": "sampler_adapter",
    "NoiseProcess": "noise", "noise_process": "noise",
    "DiffusersTransformer": "backbones", "DiffusersTransformerConfig": "backbones",
}

__all__ = ["DiffkitScheduler", "DiffkitSchedulerOutput", "DiffusersTransformer", "DiffusersTransformerConfig",
           "NoiseProcess", "OutOfRangeError", "as_sampler", "noise_process"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
