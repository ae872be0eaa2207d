"""Sampling: :func:`sample` (noise, σ grid, sampler), the denoisers that turn a network into
D(x, σ) (:class:`VPDenoiser`, :class:`EDMDenoiser`, :class:`FlowDenoiser`), classifier-free guidance
(:class:`CFGDenoiser`) and the calibration of few-step σ grids (:func:`optimize_sigmas`)."""

from diffkit.sampling.denoisers import FLOW_PREDICTIONS, PREDICTIONS, EDMDenoiser, FlowDenoiser, VPDenoiser
from diffkit.sampling.draw import DEFAULT_SAMPLER, sample
from diffkit.sampling.guidance import CFGDenoiser
from diffkit.sampling.optimize import (
    ReferenceWarning,
    SigmaOptimization,
    optimize_sigmas,
    optimize_sigmas_report,
    reference_endpoint,
)

__all__ = [  # by topic: drawing samples; denoisers and guidance; calibrating σ grids
    "DEFAULT_SAMPLER", "sample",
    "PREDICTIONS", "FLOW_PREDICTIONS", "EDMDenoiser", "FlowDenoiser", "VPDenoiser", "CFGDenoiser",
    "ReferenceWarning", "SigmaOptimization", "optimize_sigmas", "optimize_sigmas_report", "reference_endpoint",
]
