"""diffkit ↔ diffusers (needs ``pip install 'diffkit[diffusers]'``: diffusers and greenlet).

- :class:`DiffkitScheduler`: a diffkit sampler as the scheduler of any diffusers pipeline.
- :func:`noise_process`: a diffusers scheduler config's noise process as a diffkit schedule and denoiser.
"""

from diffkit.integrations.diffusers.noise import NoiseProcess, noise_process
from diffkit.integrations.diffusers.scheduler import DiffkitScheduler, DiffkitSchedulerOutput

__all__ = ["DiffkitScheduler", "DiffkitSchedulerOutput", "NoiseProcess", "noise_process"]
