"""Noise schedules: ᾱ_t tables and the spacings that turn N steps into a σ sequence."""

from diffkit.schedules.base import ALPHA_BAR_FLOOR, DiscreteSchedule
from diffkit.schedules.optimize import (
    ReferenceWarning,
    SigmaOptimization,
    optimize_sigmas,
    optimize_sigmas_report,
    reference_endpoint,
)
from diffkit.schedules.spacings import (
    DEFAULT_SPACING,
    SIGMA_SPACINGS,
    SPACINGS,
    TIMESTEP_SPACINGS,
    places_timesteps,
    spacing_options,
)
from diffkit.schedules.vp import (
    CosineSchedule,
    LinearSchedule,
    ScaledLinearSchedule,
    SigmoidSchedule,
)

Schedule = DiscreteSchedule

__all__ = [
    "ALPHA_BAR_FLOOR",
    "CosineSchedule",
    "DEFAULT_SPACING",
    "DiscreteSchedule",
    "LinearSchedule",
    "ReferenceWarning",
    "ScaledLinearSchedule",
    "SIGMA_SPACINGS",
    "SPACINGS",
    "Schedule",
    "SigmaOptimization",
    "SigmoidSchedule",
    "TIMESTEP_SPACINGS",
    "optimize_sigmas",
    "places_timesteps",
    "optimize_sigmas_report",
    "reference_endpoint",
    "spacing_options",
]
