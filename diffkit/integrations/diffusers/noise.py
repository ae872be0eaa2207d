"""A diffusers scheduler's noise process, read from its config, as a diffkit schedule and denoiser.

diffusers keeps the noise process (the β table or the flow shift, and what the network predicts)
inside each scheduler's config; diffkit keeps it in a schedule and a denoiser adapter. This module
maps one onto the other with diffusers' own config names:

    beta_schedule "linear" | "scaled_linear" | "squaredcos_cap_v2" | "sigmoid"
        → schedule "linear" | "scaled_linear" | "cosine" | "sigmoid" (with beta_start, beta_end,
          num_train_timesteps, rescale_betas_zero_snr → rescale_zero_terminal_snr)
    FlowMatch* schedulers (shift, use_dynamic_shifting, base/max_shift, base/max_image_seq_len),
    or use_flow_sigmas with flow_shift (DPM-Solver, UniPC)
        → schedule "flow"
    prediction_type "epsilon" | "v_prediction" | "sample" → VPDenoiser "eps" | "v" | "x0";
        a flow model predicts the velocity v = ε − x0 ("flow_prediction" in DPM-Solver's words)

and the grid: ``timestep_spacing`` ("leading" with ``steps_offset``, "trailing", "linspace") or
``use_karras_sigmas`` / ``use_exponential_sigmas`` → the diffkit spacing of the same meaning —
which is DDIM's. Two families of diffusers schedulers place other grids under the same names,
and a config from them keeps its family (``timestep_convention``): the multistep solvers
(DPM-Solver, UniPC, DEIS) build "linspace" and "leading" over N + 1 points and drop the last
(:func:`multistep_timesteps`); the Euler-type schedulers (Euler, Heun, LMS, KDPM2) keep
"linspace" fractional, t = linspace(0, T − 1, N) with σ interpolated linearly in t
(:func:`euler_linspace_sigmas`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch

from diffkit import registry
from diffkit.errors import ConfigError
from diffkit.sampling.denoisers import FlowDenoiser, VPDenoiser
from diffkit.sampling.draw import sigma_grid
from diffkit.sampling.paths import from_path_form, to_path_form
from diffkit.schedules.flow import FLOW_SPACING, FlowSchedule

BETA_SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear", "squaredcos_cap_v2": "cosine",
                  "sigmoid": "sigmoid"}
"""diffusers' ``beta_schedule`` names → diffkit schedule names (the same tables; tests compare them)."""

PREDICTIONS = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
"""diffusers' ``prediction_type`` → :class:`~diffkit.VPDenoiser`'s prediction on a VP table."""

FLOW_PREDICTIONS = ("flow_prediction", "velocity", "epsilon")
"""What a flow model's output may be called: diffusers' FlowMatch schedulers take a velocity and
say nothing, DPM-Solver/UniPC call it ``flow_prediction``."""

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")

MULTISTEP_CLASSES = ("DPMSolverMultistepScheduler", "UniPCMultistepScheduler", "DEISMultistepScheduler",
                     "DPMSolverSinglestepScheduler")
"""diffusers schedulers whose "linspace" and "leading" grids take N + 1 points and drop the last."""

EULER_CLASSES = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler",
                 "LMSDiscreteScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler",
                 "DPMSolverSDEScheduler")
"""diffusers schedulers whose "linspace" grid keeps fractional t = linspace(0, T − 1, N), σ linear in t."""

GRID_CONVENTIONS = {**{name: "multistep" for name in MULTISTEP_CLASSES}, **{name: "euler" for name in EULER_CLASSES}}
"""diffusers class name → how its "linspace"/"leading" grids differ from DDIM's (diffkit's spacings)."""

FLOW_KEYS = ("shift", "use_dynamic_shifting", "base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len")


@attrs.frozen
class NoiseProcess:
    """What a diffusers scheduler config says about the noise, in diffkit's terms.

    Attributes:
        schedule: the diffkit schedule (a VP table or the flow schedule).
        prediction: the denoiser's prediction type (``"eps"``, ``"v"``, ``"x0"``; ``"velocity"`` on flow).
        spacing: the timestep spacing of the replaced scheduler (a diffkit spacing name).
        spacing_options: that spacing's options (``steps_offset`` for ``leading``).
        convention: ``"multistep"`` or ``"euler"`` when the config's "linspace"/"leading" grid is
            that family's (module docstring), None for DDIM's.
        sigma_spacing: ``"karras"`` or ``"exponential"`` when the config asks for those σ
            (``use_karras_sigmas``, ``use_exponential_sigmas``), placed between the ends diffusers uses.
    """

    schedule: Any
    prediction: str
    spacing: str
    spacing_options: dict[str, Any]
    convention: str | None = None
    sigma_spacing: str | None = None

    @property
    def is_flow(self) -> bool:
        return isinstance(self.schedule, FlowSchedule)

    def grid(self, steps: int, mu: float | None = None) -> torch.Tensor:
        """The σ grid [steps + 1] (float64 CPU, last 0) the replaced scheduler would place for N steps."""
        if self.convention == "multistep" and self.spacing in ("linspace", "leading"):
            offset = int(self.spacing_options.get("steps_offset", 0))
            timesteps = multistep_timesteps(self.schedule.num_train_timesteps, steps, self.spacing, offset)
            base = sigma_grid(self.schedule, timesteps=timesteps)
        elif self.convention == "euler" and self.spacing == "linspace":
            base = euler_linspace_sigmas(self.schedule, steps)
        else:
            options = dict(self.spacing_options, **({} if mu is None else {"mu": mu}))
            base = sigma_grid(self.schedule, steps=steps, spacing=self.spacing, spacing_options=options)
        if self.sigma_spacing is None:
            return base
        # Karras / exponential σ: diffusers' multistep solvers span the whole σ table, its Euler-type
        # schedulers the ends of their timestep_spacing grid
        ends = {} if self.convention == "multistep" else {"sigma_min": float(base[-2]), "sigma_max": float(base[0])}
        return sigma_grid(self.schedule, steps=steps, spacing=self.sigma_spacing, spacing_options=ends)

    def timesteps(self, sigmas: torch.Tensor) -> torch.Tensor:
        """The network time of each σ (float64 [n]): t·T on flow; on a VP table ``schedule.sigma_to_t``
        (log σ interpolated), or for the Euler-type "linspace" grid the t it was placed at (σ linear in t)."""
        if self.convention == "euler" and self.spacing == "linspace" and self.sigma_spacing is None:
            table = self.schedule.sigmas  # increasing in t
            low = (torch.searchsorted(table, sigmas) - 1).clamp(0, len(table) - 2)
            fraction = (sigmas - table[low]) / (table[low + 1] - table[low])
            return (low.to(torch.float64) + fraction).clamp(0, len(table) - 1)
        return self.schedule.sigma_to_t(sigmas)

    def denoiser(self, network: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        """``D(y, σ, cond)`` around ``network(x_t, t)`` on this noise process."""
        if self.is_flow:
            return FlowDenoiser(network, self.schedule, self.prediction)
        return VPDenoiser(network, self.schedule, self.prediction)

    def model_input(self, y: torch.Tensor, sigma: float) -> torch.Tensor:
        """The network's input at σ for the σ-form y (:func:`to_path_form` on this process's path)."""
        return to_path_form(y, sigma, "flow" if self.is_flow else "vp")

    def sigma_form(self, x_t: torch.Tensor, sigma: float) -> torch.Tensor:
        """The σ-form y of the network input x_t at σ (the inverse of :meth:`model_input`)."""
        return from_path_form(x_t, sigma, "flow" if self.is_flow else "vp")


def diffusers_grid(
    schedule: Any, steps: int, *, scheduler_class: str | None = None, timestep_spacing: str = "leading",
    steps_offset: int = 0, use_karras_sigmas: bool = False, use_exponential_sigmas: bool = False,
) -> torch.Tensor:
    """The σ grid [steps + 1] a diffusers scheduler places on a VP table: the spacing ``"diffusers"``.

    The options are the scheduler config's own keys (``_class_name`` as ``scheduler_class``, which
    picks the grid family of the module docstring; None: DDIM's), so a pipeline loaded from a
    diffusers folder samples on exactly its scheduler's grid with any diffkit sampler.
    """
    if isinstance(schedule, FlowSchedule):
        raise ConfigError(
            f"spacing 'diffusers' places a VP table's grid; on the flow schedule use {FLOW_SPACING!r} (diffusers' "
            "FlowMatch grid)"
        )
    if scheduler_class is not None and not isinstance(scheduler_class, str):
        raise ConfigError(f"scheduler_class must be a diffusers scheduler class name or None, got {scheduler_class!r}")
    for name, value in (("use_karras_sigmas", use_karras_sigmas), ("use_exponential_sigmas", use_exponential_sigmas)):
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be True or False, got {value!r}")
    if not isinstance(steps_offset, int) or isinstance(steps_offset, bool) or steps_offset < 0:
        raise ConfigError(f"steps_offset must be an integer ≥ 0, got {steps_offset!r}")
    spacing, options = _spacing({"timestep_spacing": timestep_spacing, "steps_offset": steps_offset})
    process = NoiseProcess(
        schedule, "eps", spacing, options, GRID_CONVENTIONS.get(scheduler_class or ""), _sigma_spacing(
            {"use_karras_sigmas": use_karras_sigmas, "use_exponential_sigmas": use_exponential_sigmas}),
    )
    return process.grid(steps)


def diffusers_timesteps(
    num_train_timesteps: int, steps: int, *, scheduler_class: str | None = None, timestep_spacing: str = "leading",
    steps_offset: int = 0, use_karras_sigmas: bool = False, use_exponential_sigmas: bool = False,
) -> torch.Tensor:
    """The int64 training timesteps [steps] of the ``"diffusers"`` spacing, where its grid sits on the table.

    Karras / exponential σ and the Euler family's fractional "linspace" sit between table entries:
    an error (their σ come from :func:`diffusers_grid`).
    """
    convention = GRID_CONVENTIONS.get(scheduler_class or "")
    if use_karras_sigmas or use_exponential_sigmas or (convention == "euler" and timestep_spacing == "linspace"):
        raise ConfigError(
            "this 'diffusers' grid places σ between the table's timesteps (Karras / exponential σ, or the Euler "
            "family's fractional linspace); take its σ from sigmas_for(steps, 'diffusers', ...)"
        )
    spacing, options = _spacing({"timestep_spacing": timestep_spacing, "steps_offset": steps_offset})
    if convention == "multistep" and spacing in ("linspace", "leading"):
        return multistep_timesteps(num_train_timesteps, steps, spacing, int(options.get("steps_offset", 0)))
    return registry.get_entry("spacing", spacing).metadata["timesteps"](num_train_timesteps, steps, **options)


def grid_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The options of the ``"diffusers"`` spacing that place the grid of the scheduler ``config``."""
    options: dict[str, Any] = {"timestep_spacing": config.get("timestep_spacing") or "leading"}
    if config.get("_class_name") in GRID_CONVENTIONS:
        options["scheduler_class"] = config["_class_name"]
    if config.get("steps_offset"):
        options["steps_offset"] = int(config["steps_offset"])
    for key in ("use_karras_sigmas", "use_exponential_sigmas"):
        if config.get(key):
            options[key] = True
    return options


def multistep_timesteps(num_train_timesteps: int, steps: int, spacing: str, steps_offset: int = 0) -> torch.Tensor:
    """diffusers' multistep solvers' integer timesteps [steps], decreasing: N + 1 points, the last dropped.

    linspace: round(linspace(0, T − 1, N + 1)) reversed, without its final 0;
    leading:  i·⌊T/(N + 1)⌋ + steps_offset for i = N … 1.
    """
    if not isinstance(steps, int) or not 1 <= steps < num_train_timesteps:
        raise ConfigError(f"steps must be an integer in 1 … {num_train_timesteps - 1}, got {steps!r}")
    if spacing == "linspace":
        points = torch.linspace(0, num_train_timesteps - 1, steps + 1, dtype=torch.float64).round()
    else:
        points = torch.arange(steps + 1, dtype=torch.float64) * (num_train_timesteps // (steps + 1)) + steps_offset
    return points.flip(0)[:-1].to(torch.int64)


def euler_linspace_sigmas(schedule: Any, steps: int) -> torch.Tensor:
    """diffusers' Euler-type "linspace" grid: t = linspace(0, T − 1, N) reversed, σ linear in t between table
    entries, then 0."""
    if not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"steps must be an integer ≥ 1, got {steps!r}")
    table = schedule.sigmas  # float64 [T], σ at t = 0 … T − 1
    t = torch.linspace(0, schedule.num_train_timesteps - 1, steps, dtype=torch.float64).flip(0)  # N = 1: t = 0, as diffusers
    low = t.floor().long().clamp(max=schedule.num_train_timesteps - 2)
    sigmas = torch.lerp(table[low], table[low + 1], t - low)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def _flow_config(config: Mapping[str, Any], shift_key: str) -> dict[str, Any]:
    settings = {key: config[key] for key in FLOW_KEYS[1:] if key in config}
    settings["shift"] = float(config.get(shift_key, 1.0))
    settings["num_train_timesteps"] = config.get("num_train_timesteps", 1000)
    return settings


def is_flow_config(config: Mapping[str, Any]) -> bool:
    """Whether a diffusers scheduler config describes flow matching (a FlowMatch* class or use_flow_sigmas)."""
    return str(config.get("_class_name", "")).startswith("FlowMatch") or bool(config.get("use_flow_sigmas", False))


def noise_process(config: Mapping[str, Any]) -> NoiseProcess:
    """The :class:`NoiseProcess` of a diffusers scheduler config (``scheduler.config`` or its keys).

    Raises:
        ConfigError: a β schedule, prediction type or spacing diffkit has no counterpart for
            (``trained_betas``, ``"exp"`` β, …), naming what is supported.
    """
    if is_flow_config(config):
        shift_key = "shift" if str(config.get("_class_name", "")).startswith("FlowMatch") else "flow_shift"
        schedule = registry.build("schedule", "flow", **_flow_config(config, shift_key))
        prediction = config.get("prediction_type") or "flow_prediction"
        if prediction not in FLOW_PREDICTIONS:
            raise ConfigError(f"a flow-matching scheduler predicts a velocity ('flow_prediction'); got prediction_type="
                              f"{prediction!r}")
        return NoiseProcess(schedule, "velocity" if prediction != "epsilon" else "epsilon", FLOW_SPACING, {})
    if config.get("trained_betas") is not None:
        raise ConfigError("trained_betas (an explicit β table) has no diffkit schedule yet; supported beta_schedule "
                          f"values: {', '.join(BETA_SCHEDULES)}")
    beta_schedule = config.get("beta_schedule", "linear")
    if beta_schedule not in BETA_SCHEDULES:
        raise ConfigError(f"beta_schedule {beta_schedule!r} has no diffkit schedule; supported: "
                          f"{', '.join(BETA_SCHEDULES)}")
    name = BETA_SCHEDULES[beta_schedule]
    settings: dict[str, Any] = {
        "num_train_timesteps": config.get("num_train_timesteps", 1000),
        "rescale_zero_terminal_snr": bool(config.get("rescale_betas_zero_snr", False)),
    }
    if name != "cosine":
        settings.update(beta_start=config.get("beta_start", 1e-4), beta_end=config.get("beta_end", 0.02))
    schedule = registry.build("schedule", name, **settings)
    prediction_type = config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTIONS:
        raise ConfigError(f"prediction_type {prediction_type!r} is not one of {', '.join(PREDICTIONS)}")
    spacing, options = _spacing(config)
    convention = config.get("timestep_convention") or GRID_CONVENTIONS.get(config.get("_class_name"))
    return NoiseProcess(schedule, PREDICTIONS[prediction_type], spacing, options, convention, _sigma_spacing(config))


def _sigma_spacing(config: Mapping[str, Any]) -> str | None:
    """``"karras"`` / ``"exponential"`` when the config asks for those σ, else None."""
    if config.get("use_karras_sigmas"):
        return "karras"
    return "exponential" if config.get("use_exponential_sigmas") else None


def _spacing(config: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The diffkit timestep spacing of the config's ``timestep_spacing`` (and ``steps_offset``)."""
    spacing = config.get("timestep_spacing") or "leading"
    if spacing not in TIMESTEP_SPACINGS:
        raise ConfigError(f"timestep_spacing {spacing!r} is not one of {', '.join(TIMESTEP_SPACINGS)}")
    if spacing == "leading" and config.get("steps_offset"):
        return spacing, {"steps_offset": int(config["steps_offset"])}
    return spacing, {}
