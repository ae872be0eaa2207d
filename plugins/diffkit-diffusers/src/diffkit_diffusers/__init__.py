"""A diffkit plugin registering diffusers' continuous-noise schedulers as samplers named ``diffusers.*``.

Each entry is :func:`diffkit.integrations.diffusers.sampler_adapter.as_sampler` of one scheduler class
with diffusers' own defaults: it runs diffusers' ``set_timesteps`` / ``step`` loop along the σ grid it
is given, with the diffkit denoiser in the place of the network. Every config key of the class and every
keyword of its ``step`` is an option (``diffkit check diffusers.dpmsolver_multistep -o solver_order=3``);
grid options (``use_karras_sigmas``, ``timestep_spacing``, …) are refused, since the grid is the caller's.
Registering imports neither diffusers nor ``diffkit.integrations`` (both take seconds): each entry is an
:class:`OnFirstUse` proxy that builds its sampler when it is first called, built or checked.

Not registered: ``DPMSolverSDEScheduler`` and ``CosineDPMSolverMultistepScheduler`` (they need torchsde,
which diffusers does not install), PNDM/IPNDM (fixed integer strides with half-step warm-ups), LCM/TCD and
the consistency-model schedulers (few-step samplers of distilled models, not solvers of the
probability-flow ODE), ScoreSdeVe (it takes a score network and its own predictor-corrector loop).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

import diffkit
from diffkit.registry import Registrar

SAMPLERS: tuple[tuple[str, str, float | None, str], ...] = (
    # (diffkit name, diffusers class, order diffusers claims at its defaults (None: stochastic), paper)
    ("euler", "EulerDiscreteScheduler", 1, "Karras et al. 2022, Alg. 2 (Euler step)"),
    ("euler_ancestral", "EulerAncestralDiscreteScheduler", None, "k-diffusion sample_euler_ancestral (Crowson 2022)"),
    ("heun", "HeunDiscreteScheduler", 2, "Karras et al. 2022, Alg. 1 (Heun)"),
    ("dpm2", "KDPM2DiscreteScheduler", 2, "Lu et al. 2022, DPM-Solver-2 (k-diffusion sample_dpm_2)"),
    ("dpm2_ancestral", "KDPM2AncestralDiscreteScheduler", None, "k-diffusion sample_dpm_2_ancestral (Crowson 2022)"),
    ("lms", "LMSDiscreteScheduler", 4, "linear multistep in σ (k-diffusion sample_lms)"),
    ("dpmsolver_multistep", "DPMSolverMultistepScheduler", 2, "Lu et al. 2022, DPM-Solver++ (multistep)"),
    ("dpmsolver_singlestep", "DPMSolverSinglestepScheduler", 2, "Lu et al. 2022, DPM-Solver / DPM-Solver++ (singlestep)"),
    ("unipc", "UniPCMultistepScheduler", 3, "Zhao et al. 2023, UniPC (order solver_order + 1)"),
    ("deis", "DEISMultistepScheduler", 2, "Zhang & Chen 2023, DEIS (log-ρ multistep)"),
    ("sasolver", "SASolverScheduler", None, "Xue et al. 2023, SA-Solver (stochastic Adams)"),
    ("ddim", "DDIMScheduler", 1, "Song et al. 2021, DDIM"),
    ("ddpm", "DDPMScheduler", None, "Ho et al. 2020, DDPM"),
    ("edm_euler", "EDMEulerScheduler", 1, "Karras et al. 2022 (EDM preconditioning), Euler"),
    ("flow_match_euler", "FlowMatchEulerDiscreteScheduler", 1, "Lipman et al. 2023; Esser et al. 2024 (rectified flow, Euler)"),
    ("flow_match_heun", "FlowMatchHeunDiscreteScheduler", 2, "rectified flow with Heun's method (diffusers)"),
)


class OnFirstUse:
    """``as_sampler(class_name)`` made on first use. The registry reads a sampler's signature (its options and
    defaults) and ``check`` only when the sampler is built or checked, so nothing is imported before that."""

    def __init__(self, class_name: str) -> None:
        self.class_name = class_name
        self.__name__ = self.__qualname__ = f"diffusers_{class_name}"
        self.__doc__ = f"diffusers' {class_name} as a diffkit sampler, stepping along the σ grid it is given."
        self._sampler: Any = None
        self.check = _CheckOnFirstUse(self)

    def resolve(self) -> Any:
        """The sampler (imports the adapter, diffusers and the class the first time)."""
        if self._sampler is None:
            from diffkit.integrations.diffusers.sampler_adapter import as_sampler

            self._sampler = as_sampler(self.class_name)
        return self._sampler

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.resolve())

    @property
    def scheduler_class(self) -> type:
        return self.resolve().scheduler_class

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.resolve()(*args, **kwargs)


class _CheckOnFirstUse:
    """The ``check`` of an :class:`OnFirstUse` entry: validates option values when the sampler is chosen."""

    def __init__(self, owner: OnFirstUse) -> None:
        self._owner = owner

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self._owner.resolve().check)

    def __call__(self, **options: Any) -> None:
        self._owner.resolve().check(**options)


@diffkit.hookimpl
def diffkit_register_samplers(samplers: Registrar) -> None:
    for name, class_name, order, paper in SAMPLERS:
        sampler = OnFirstUse(class_name)
        metadata = {"order": order} if order is not None else {}
        samplers.add(f"diffusers.{name}", sampler, check=sampler.check, paper=paper, **metadata)
