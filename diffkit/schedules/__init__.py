"""Noise schedules: ᾱ_t tables and the spacings that turn N steps into a σ sequence."""

from diffkit.schedules.base import ALPHA_BAR_FLOOR, DiscreteSchedule
from diffkit.schedules.spacing import TIMESTEP_SPACINGS
from diffkit.schedules.vp import CosineSchedule, LinearSchedule, ScaledLinearSchedule, SigmoidSchedule

Schedule = DiscreteSchedule

__all__ = [
    "ALPHA_BAR_FLOOR",
    "CosineSchedule",
    "DiscreteSchedule",
    "LinearSchedule",
    "ScaledLinearSchedule",
    "Schedule",
    "SigmoidSchedule",
    "TIMESTEP_SPACINGS",
]
