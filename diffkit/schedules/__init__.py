"""Noise schedules: ᾱ_t tables and the spacings that turn N steps into a σ sequence."""

from diffkit.schedules.base import ALPHA_BAR_FLOOR, DiscreteSchedule
from diffkit.schedules.grids import SPACINGS, spacing_options
from diffkit.schedules.optimize import (
    ReferenceWarning,
    SigmaOptimization,
    optimize_sigmas,
    optimize_sigmas_report,
    reference_endpoint,
)
from diffkit.schedules.sigma_spacing import SIGMA_SPACINGS
from diffkit.schedules.spacing import TIMESTEP_SPACINGS
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
    "optimize_sigmas_report",
    "reference_endpoint",
    "spacing_options",
]
