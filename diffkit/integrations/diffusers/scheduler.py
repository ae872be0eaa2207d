"""``DiffkitScheduler``: any diffkit sampler as the scheduler of an unmodified diffusers pipeline.

    pipe.scheduler = DiffkitScheduler.from_scheduler(pipe.scheduler, sampler="unipc", spacing="karras")

The noise process (β table or flow shift, prediction type) and, unless one is named, the grid
are read from the scheduler it replaces (:mod:`diffkit.integrations.diffusers.noise`). The
pipeline keeps driving: it evaluates its network (CFG, callbacks and all) at each of
``timesteps`` and hands the output to :meth:`DiffkitScheduler.step`, which gives it to the sampler
as the denoiser's answer and returns the point of the sampler's next request
(:mod:`diffkit.integrations.diffusers.stepper`).

Conventions (what a pipeline sees):

- The latents are always the network's input x_t — VP: x_t = y/√(1 + σ²); flow: x_t = y/(1 + σ)
  for the sampler's σ-form state y — so ``scale_model_input`` is the identity. That is what
  every pipeline expects of DDIM-like schedulers, including those that never call
  ``scale_model_input`` (``DDPMPipeline``) or read ``init_noise_sigma`` (``DDPMPipeline``,
  ``DiTPipeline``). The start is the pipeline's noise z read as x_T at σ_0 (``init_noise_sigma``
  1): y_0 = √(1 + σ_0²)·z (VP; diffusers' DDIM and DPM-Solver convention) or (1 + σ_0)·z = z/(1 − t_0)
  (flow, x_1 = z). With ``start_noise="sigma"`` (diffusers' Euler-type schedulers on "linspace"
  or "trailing" grids) ``init_noise_sigma`` is σ_0/√(1 + σ_0²), so that y_0 = σ_0·z, as
  ``diffkit.sample`` starts — in pipelines that scale their noise by it.
- ``timesteps`` lists the network time of every denoiser call the sampler will make
  (``schedule.sigma_to_t`` of its σ, fractional between table entries), found by a dry run
  when the grid is set: N entries for one-call-per-step samplers, 2N − 1 for Heun and DPM2.
  A sampler whose first call is not at σ_0 (EDM churn at the first step) gets one more entry
  in front, at σ_0, whose network output is not used.
- ``step`` takes ``generator`` and passes it to the sampler, so stochastic samplers draw from
  the pipeline's generator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from diffkit import registry
from diffkit.errors import ConfigError
from diffkit.integrations.diffusers.noise import GRID_CONVENTIONS, NoiseProcess, noise_process
from diffkit.integrations.diffusers.stepper import SteppedSampler, evaluation_sigmas
from diffkit.sampling.draw import sigma_grid, user_sigmas
from diffkit.schedules.flow import sigma_from_t

# how far a pipeline's timestep may be from the announced one before step() calls it out of order
TIMESTEP_TOLERANCE = 1e-3
# how far a requested σ may be from the dry run's: the sampler passes σ in x's dtype (float32 here)
SIGMA_TOLERANCE = 1e-5
START_NOISE = ("vp", "sigma")
TIMESTEP_CONVENTIONS = (None, "multistep", "euler")


@dataclass
class DiffkitSchedulerOutput(BaseOutput):
    """What :meth:`DiffkitScheduler.step` returns.

    Attributes:
        prev_sample: the latents for the next network evaluation (the network's input there), or
            the sample itself after the last step; shaped like the ``sample`` given.
        pred_original_sample: the x0 estimate the sampler was just given, shaped likewise.
    """

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor | None = None


class DiffkitScheduler(SchedulerMixin, ConfigMixin):
    """A diffusers scheduler that runs a registered diffkit sampler.

    Args:
        sampler: a registered sampler name (``diffkit list samplers``).
        sampler_options: the sampler's keyword options, e.g. ``{"eta": 1.0}``.
        spacing: a diffkit spacing for the grid; None places the grid the replaced scheduler would
            (``timestep_spacing`` / ``steps_offset``, ``use_karras_sigmas``, ``use_exponential_sigmas``;
            diffusers' uniform t on a flow model).
        spacing_options: the spacing's options, e.g. ``{"rho": 7.0}``.
        sigmas: a fixed σ grid (σ form, decreasing; a final 0 is appended), e.g. from
            ``diffkit.sampling.optimize_sigmas``; the pipeline must then ask for ``len(sigmas) − 1``
            steps (or ``len(sigmas)`` when the list does not end with 0).
        num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type,
        rescale_betas_zero_snr, timestep_spacing, steps_offset, use_karras_sigmas,
        use_exponential_sigmas, use_flow_sigmas, flow_shift (SD3's shift; a FlowMatch scheduler's
        ``shift``), use_dynamic_shifting,
        base_shift, max_shift, base_image_seq_len, max_image_seq_len: the noise process and grid
            in diffusers' own names and meanings, so ``DiffkitScheduler.from_config(pipe.scheduler.config,
            sampler=...)`` reads them from any diffusers scheduler's config.
        timestep_convention: ``"multistep"`` or ``"euler"`` for the "linspace"/"leading" grids of
            those diffusers families (:mod:`~diffkit.integrations.diffusers.noise`; set by
            :meth:`from_config` from such a scheduler's config), None for DDIM's.
        start_noise: how the pipeline's noise z becomes the sampler's start on a VP table:
            ``"vp"``, y_0 = √(1 + σ_0²)·z (z read as x_T; DDIM, DPM-Solver, and Euler-type schedulers
            with "leading" spacing), or ``"sigma"``, y_0 = σ_0·z (``diffkit.sample``'s start, and
            Euler-type schedulers with "linspace"/"trailing" spacing, whose ``init_noise_sigma`` is
            σ_max), through ``init_noise_sigma`` (module docstring). :meth:`from_scheduler` reads it
            off the scheduler it replaces.
    """

    config_name = "scheduler_config.json"
    order = 1
    _compatibles: ClassVar[list[str]] = [
        "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "LMSDiscreteScheduler", "EulerDiscreteScheduler",
        "EulerAncestralDiscreteScheduler", "HeunDiscreteScheduler", "DPMSolverMultistepScheduler",
        "UniPCMultistepScheduler", "KDPM2DiscreteScheduler", "FlowMatchEulerDiscreteScheduler",
    ]

    @register_to_config
    def __init__(
        self,
        sampler: str = "unipc",
        sampler_options: Mapping[str, Any] | None = None,
        spacing: str | None = None,
        spacing_options: Mapping[str, Any] | None = None,
        sigmas: Sequence[float] | None = None,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas: Any = None,
        prediction_type: str = "epsilon",
        rescale_betas_zero_snr: bool = False,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
        use_karras_sigmas: bool = False,
        use_exponential_sigmas: bool = False,
        use_flow_sigmas: bool = False,
        flow_shift: float = 1.0,
        use_dynamic_shifting: bool = False,
        base_shift: float = 0.5,
        max_shift: float = 1.15,
        base_image_seq_len: int = 256,
        max_image_seq_len: int = 4096,
        timestep_convention: str | None = None,
        start_noise: str = "vp",
    ) -> None:
        if sampler_options is not None and not isinstance(sampler_options, Mapping):
            raise ConfigError(f"sampler_options must be a mapping of option names to values, got {sampler_options!r}")
        self._sampler = registry.build("sampler", sampler, **dict(sampler_options or {}))  # names checked now
        self.noise: NoiseProcess = noise_process(self.config)
        if start_noise not in START_NOISE:
            raise ConfigError(f"start_noise must be one of {', '.join(START_NOISE)}, got {start_noise!r}")
        if timestep_convention not in TIMESTEP_CONVENTIONS:
            raise ConfigError(f"timestep_convention must be one of {TIMESTEP_CONVENTIONS}, got {timestep_convention!r}")
        if spacing is not None:
            registry.get_entry("spacing", spacing)  # an unknown name fails now, with close matches
        if spacing_options is not None and not isinstance(spacing_options, Mapping):
            raise ConfigError(f"spacing_options must be a mapping of option names to values, got {spacing_options!r}")
        self._fixed_sigmas = None if sigmas is None else user_sigmas(sigmas)
        if self._fixed_sigmas is not None and (spacing is not None or spacing_options):
            raise ConfigError("sigmas= already gives every noise level; spacing and spacing_options do not apply")
        self.init_noise_sigma = 1.0
        self.timesteps = torch.empty(0)
        self.sigmas = torch.empty(0)
        self.num_inference_steps: int | None = None
        self._plan: list[float] = []
        self._discard_first = False
        self._stepper: SteppedSampler | None = None
        self._pending: tuple[torch.Tensor, float] | None = None
        self._step_index = 0
        self._model_output: torch.Tensor | None = None
        self._adapter = self.noise.denoiser(self._answered_output)  # a bound method: copies rebind it

    # -- construction from a pipeline's scheduler -------------------------------------------------

    @classmethod
    def from_scheduler(cls, scheduler: Any, *, sampler: str = "unipc", **settings: Any) -> DiffkitScheduler:
        """A DiffkitScheduler on the noise process and grid of ``scheduler`` (any diffusers scheduler).

        ``settings`` are this class's other arguments (``sampler_options``, ``spacing``, ``sigmas``, …),
        which take precedence over what the old scheduler's config says.
        """
        config = getattr(scheduler, "config", None)
        if not isinstance(config, Mapping):
            raise ConfigError(f"from_scheduler needs a diffusers scheduler (with a .config), got {type(scheduler).__name__}")
        # every value the old scheduler runs with, its defaults too: diffusers' from_config would swap
        # the keys it left at their defaults for this class's defaults
        values = {key: value for key, value in config.items() if key != "_use_default_values"}
        values["_class_name"] = type(scheduler).__name__
        values.setdefault("start_noise", _start_noise(scheduler))
        return cls.from_config(values, sampler=sampler, **settings)

    @classmethod
    def from_config(cls, config: Any = None, return_unused_kwargs: bool = False, **kwargs: Any) -> Any:
        """diffusers' ``from_config``, knowing that a FlowMatch* scheduler's config is a flow model."""
        source = str(config.get("_class_name", "")) if isinstance(config, Mapping) else ""
        if source.startswith("FlowMatch"):
            # a FlowMatch scheduler names no prediction type: its network's output is the velocity
            config = {**config, "use_flow_sigmas": True, "flow_shift": config.get("shift", 1.0),
                      "prediction_type": "flow_prediction"}
        elif source in GRID_CONVENTIONS:
            config = {**config, "timestep_convention": GRID_CONVENTIONS[source]}
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # -- the grid --------------------------------------------------------------------------------

    def _grid(self, steps: int | None, sigmas: Any, timesteps: Any, mu: float | None) -> torch.Tensor:
        """The σ grid for this run (float64 CPU, last 0)."""
        if self._fixed_sigmas is not None:
            fixed = len(self._fixed_sigmas) - 1
            if (steps is not None and steps != fixed) or sigmas is not None or timesteps is not None:
                raise ConfigError(
                    f"this scheduler samples on its fixed σ grid of {fixed} steps (sigmas=); ask the pipeline for "
                    f"num_inference_steps={fixed} and no other grid"
                )
            return self._fixed_sigmas
        schedule = self.noise.schedule
        if sigmas is not None and self.noise.is_flow:  # diffusers' flow "sigmas" are t in [0, 1], shifted here
            t = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
            return torch.cat([sigma_from_t(schedule.shift_time(t, mu)), t.new_zeros(1)])
        if sigmas is not None or timesteps is not None:
            return sigma_grid(schedule, sigmas=sigmas, timesteps=timesteps)
        if self.config.spacing is None:
            return self.noise.grid(steps, mu)
        options = dict(self.config.spacing_options or {})
        if mu is not None:
            options["mu"] = mu
        return sigma_grid(schedule, steps=steps, spacing=self.config.spacing, spacing_options=options)

    def set_timesteps(
        self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
        sigmas: Any = None, timesteps: Any = None, mu: float | None = None,
    ) -> None:
        """Place the grid, list the sampler's denoiser calls in ``timesteps``, and begin a new run.

        Args:
            num_inference_steps: N, the sampler's steps (not its network evaluations).
            device: where ``timesteps`` and ``sigmas`` live.
            sigmas: an explicit grid — σ form on a VP table (as ``EulerDiscreteScheduler`` takes it),
                diffusers' flow t on a flow model (shifted as ``FlowMatchEulerDiscreteScheduler`` does).
            timesteps: explicit training timesteps (VP), decreasing.
            mu: Flux's shift exponent on a flow model with ``use_dynamic_shifting``.
        """
        grid = self._grid(num_inference_steps, sigmas, timesteps, mu)
        plan = evaluation_sigmas(self._sampler, grid, {})
        if not plan:
            raise ConfigError(f"sampler {self.config.sampler!r} made no denoiser call on a {len(grid) - 1}-step grid")
        self._discard_first = plan[0] != float(grid[0])
        announced = [float(grid[0])] + plan if self._discard_first else plan
        times = self.noise.timesteps(torch.tensor(announced, dtype=torch.float64))
        self.timesteps = times.to(device=device, dtype=torch.float32)
        self.sigmas = grid.to(device=device, dtype=torch.float32)
        self.num_inference_steps = len(grid) - 1
        sigma_max = float(grid[0])
        if self.config.start_noise == "sigma" and not self.noise.is_flow:  # latents z·σ_0/√(1 + σ_0²): y_0 = σ_0·z
            self.init_noise_sigma = sigma_max / (1.0 + sigma_max * sigma_max) ** 0.5
        self._plan = announced
        self._stepper = SteppedSampler(self._sampler, grid, {})
        self._pending = None
        self._step_index = 0

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Only 0: starting part-way into the grid (img2img with strength < 1) is not supported yet."""
        if begin_index != 0:
            raise ConfigError(
                f"DiffkitScheduler cannot start part-way into its grid yet (begin_index={begin_index}, e.g. img2img "
                "with strength < 1); use strength=1.0 or a diffusers scheduler for this pipeline"
            )

    # -- the pipeline's loop ----------------------------------------------------------------------

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """The identity: the latents already are the network's input (module docstring)."""
        return sample

    def step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, generator: Any = None,
        return_dict: bool = True, **unused: Any,
    ) -> DiffkitSchedulerOutput | tuple[torch.Tensor]:
        """Answer the sampler's pending denoiser call with ``model_output`` and move to its next one.

        Args:
            model_output: the network's output at ``sample`` and ``timestep`` (its prediction type).
            timestep: the entry of ``timesteps`` the pipeline evaluated (checked against the plan).
            sample: the current latents (the network's input at this step), [B, ...].
            generator: the pipeline's generator; a stochastic sampler draws its noise from it.
            return_dict: return a :class:`DiffkitSchedulerOutput` (True) or a tuple.
        """
        stepper, k = self._stepper, self._step_index
        if stepper is None:
            raise ConfigError("call set_timesteps() before step()")
        if k >= len(self._plan):
            raise ConfigError(f"step() called {k + 1} times for {len(self._plan)} timesteps; call set_timesteps() "
                              "to begin a new run")
        self._check_timestep(timestep, k)
        sigma = self._plan[k]
        work = torch.promote_types(sample.dtype, torch.float32)
        answer = True
        if not stepper.started:  # the sampler's first request is at the pipeline's first latents
            self._pending = stepper.start(self.noise.sigma_form(sample.to(work), sigma), generator)
            answer = not self._discard_first  # a churned first request: this evaluation goes unused
        x0 = self._x0(model_output.to(work), self._pending) if answer else None
        request = stepper.answer(x0) if answer else self._pending
        self._step_index = k + 1
        self._pending = request
        if request is None:
            if self._step_index != len(self._plan):
                raise ConfigError(f"sampler {self.config.sampler!r} finished after {self._step_index} of "
                                  f"{len(self._plan)} announced denoiser calls")
            prev = stepper.result
        else:
            expected = self._plan[self._step_index] if self._step_index < len(self._plan) else None
            if expected is None or abs(request[1] - expected) > SIGMA_TOLERANCE * max(1.0, expected):
                raise ConfigError(f"sampler {self.config.sampler!r} asked for σ = {request[1]:.6g} where the dry run "
                                  f"announced {expected}; its σ sequence depends on its input, which a pipeline's "
                                  "fixed timesteps cannot follow")
            prev = self.noise.model_input(*request)
        prev = prev.to(sample.dtype)
        pred = None if x0 is None else x0.to(sample.dtype)
        return DiffkitSchedulerOutput(prev, pred) if return_dict else (prev,)

    def _x0(self, model_output: torch.Tensor, request: tuple[torch.Tensor, float]) -> torch.Tensor:
        """x̂0 from the network's output at the request (y, σ), through the noise process's denoiser adapter
        (built once, in ``__init__``, around a "network" that returns the output being answered)."""
        y, sigma = request
        self._model_output = model_output
        return self._adapter(y, torch.full((y.shape[0],), sigma, dtype=y.dtype, device=y.device))

    def _answered_output(self, x_t: torch.Tensor, t: torch.Tensor, *rest: Any) -> torch.Tensor:
        """The "network" of :attr:`_adapter`: the pipeline's output being answered (at x_t, t)."""
        return self._model_output

    def _check_timestep(self, timestep: Any, k: int) -> None:
        if timestep is None:
            return
        given = float(torch.as_tensor(timestep).reshape(-1)[0])
        want = float(self.timesteps[k])
        if abs(given - want) > TIMESTEP_TOLERANCE * max(1.0, abs(want)):
            raise ConfigError(f"step {k} was given timestep {given:g} but this run announced {want:g} there; "
                              "DiffkitScheduler follows its own timesteps in order (no skipped or repeated steps)")

    # -- noising (img2img, training) -------------------------------------------------------------

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """x_t at network times ``timesteps`` [B]: VP √ᾱ·x0 + √(1 − ᾱ)·ε; flow (1 − t)·x0 + t·ε."""
        t = torch.as_tensor(timesteps, device=original_samples.device).reshape(-1)
        sigma = self.noise.schedule.t_to_sigma(t.to(torch.float64).cpu()).to(original_samples.device)
        sigma = sigma.reshape(-1, *([1] * (original_samples.ndim - 1)))
        y = original_samples.to(torch.float64) + sigma * noise.to(torch.float64)
        x_t = y / (1 + sigma) if self.noise.is_flow else y / (1 + sigma * sigma).sqrt()
        return x_t.to(original_samples.dtype)

    def __len__(self) -> int:
        return self.config.num_train_timesteps


def _start_noise(scheduler: Any) -> str:
    """``"sigma"`` when ``scheduler`` starts from σ_max·z (its ``init_noise_sigma`` is its largest σ), else ``"vp"``."""
    try:
        probe = type(scheduler).from_config(scheduler.config)
        probe.set_timesteps(10)
        init, sigmas = float(probe.init_noise_sigma), getattr(probe, "sigmas", None)
    except Exception:  # noqa: BLE001 - a scheduler that cannot be probed keeps the x_T reading
        return "vp"
    if init == 1.0 or sigmas is None:
        return "vp"
    return "sigma" if abs(init - float(torch.as_tensor(sigmas).max())) <= 1e-6 * init else "vp"
