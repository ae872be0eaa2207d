"""diffkit ↔ diffusers (needs ``pip install 'diffkit[diffusers]'``: diffusers and greenlet).

- :class:`DiffkitScheduler`: a diffkit sampler as the scheduler of any diffusers pipeline.
- :func:`as_sampler`: a diffusers scheduler class as a diffkit sampler (the ``diffkit-diffusers`` plugin
  registers them as ``diffusers.*``, so ``diffkit check`` runs the conformance kit on them).
- :func:`noise_process`: a diffusers scheduler config's noise process as a diffkit schedule and denoiser.
"""

from diffkit.integrations.diffusers.noise import NoiseProcess, noise_process
from diffkit.integrations.diffusers.sampler_adapter import OutOfRangeError, as_sampler
from diffkit.integrations.diffusers.scheduler import DiffkitScheduler, DiffkitSchedulerOutput

__all__ = ["DiffkitScheduler", "DiffkitSchedulerOutput", "NoiseProcess", "OutOfRangeError", "as_sampler",
           "noise_process"]
