"""Registers the built-in schedules and spacings through the same hook a third-party plugin uses."""

from __future__ import annotations

from diffkit.hookspecs import hookimpl
from diffkit.registry import Registrar
from diffkit.schedules.flow import FlowSchedule
from diffkit.schedules.spacings import register_builtin_spacings
from diffkit.schedules.vp import CosineSchedule, LinearSchedule, ScaledLinearSchedule, SigmoidSchedule


@hookimpl
def diffkit_register_schedules(schedules: Registrar) -> None:
    schedules.add("linear", LinearSchedule, options=LinearSchedule)
    schedules.add("scaled_linear", ScaledLinearSchedule, options=ScaledLinearSchedule)
    schedules.add("cosine", CosineSchedule, options=CosineSchedule)
    schedules.add("sigmoid", SigmoidSchedule, options=SigmoidSchedule)
    schedules.add("flow", FlowSchedule, options=FlowSchedule, summary="flow matching x_t = (1 − t)·x0 + t·ε (SD3, Flux)")


@hookimpl
def diffkit_register_spacings(spacings: Registrar) -> None:
    register_builtin_spacings(spacings)
