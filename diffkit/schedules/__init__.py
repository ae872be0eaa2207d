"""Noise schedules: ᾱ_t tables, the flow-matching path, and the spacings that turn N steps into a σ sequence."""

from diffkit.moved import moved_names
from diffkit.schedules.base import ALPHA_BAR_FLOOR, DiscreteSchedule
from diffkit.schedules.flow import FLOW_SIGMA_MAX, FLOW_SPACING, FlowSchedule
from diffkit.schedules.spacings import (
    DEFAULT_SPACING,
    SIGMA_SPACINGS,
    SPACINGS,
    TIMESTEP_SPACINGS,
    places_timesteps,
    spacing_options,
)
from diffkit.schedules.vp import CosineSchedule, LinearSchedule, ScaledLinearSchedule, SigmoidSchedule

Schedule = DiscreteSchedule

__all__ = [
    "ALPHA_BAR_FLOOR", "CosineSchedule", "DEFAULT_SPACING", "DiscreteSchedule", "FLOW_SIGMA_MAX", "FLOW_SPACING",
    "FlowSchedule", "LinearSchedule",
    "ScaledLinearSchedule", "SIGMA_SPACINGS", "SPACINGS", "Schedule", "SigmoidSchedule", "TIMESTEP_SPACINGS",
    "places_timesteps", "spacing_options",
]

# diffkit 0.1 exported the σ-grid calibration from here; it lives in diffkit.sampling now
__getattr__ = moved_names(
    __name__,
    dict.fromkeys(
        ("ReferenceWarning", "SigmaOptimization", "optimize_sigmas", "optimize_sigmas_report", "reference_endpoint"),
        "diffkit.sampling.optimize",
    ),
)
