"""The flow-matching schedule (rectified flow; SD3, Esser et al. 2024; Flux).

    x_t = (1 − t)·x0 + t·ε,   t ∈ [0, 1]          (what the network sees, at time t·T)
    σ = t/(1 − t),  y = x_t/(1 − t) = x0 + σ·ε    (σ form, what samplers integrate)

so λ = −log σ = logit(1 − t) and every σ-form sampler runs on a flow model unchanged; only the
denoiser (:class:`~diffkit.sampling.denoisers.FlowDenoiser`) knows the path. Time is continuous:
the network takes t·T as diffusers passes it (T = ``num_train_timesteps``), not a table index.

Shifts move the grid towards the noise end (both as diffusers' ``FlowMatchEulerDiscreteScheduler``):

    SD3:  t' = s·t / (1 + (s − 1)·t)                         (``shift``)
    Flux: t' = e^μ / (e^μ + (1/t − 1)),  μ linear in the image sequence length through
          (``base_image_seq_len``, ``base_shift``) and (``max_image_seq_len``, ``max_shift``)
          (``use_dynamic_shifting``; μ or the sequence length is given when sampling)

t = 1 (pure noise) is σ = ∞. A grid holds finite numbers, so t = 1 is :data:`FLOW_SIGMA_MAX`
= 2³⁰: the network input x/(1 + σ) and its time t·T differ from pure noise at t = 1 by
1/(1 + σ) < 1e-9 relative, below float32's round-off (6e-8), where VP's zero-terminal-SNR
floor σ = 4096 is 2.4e-4 away.
"""

from __future__ import annotations

import functools
import math
from typing import Any, ClassVar

import attrs
import torch

from diffkit.errors import ConfigError
from diffkit.schedules.base import SigmaTableEnds, _train_timesteps
from diffkit.schedules.spacings import (
    SPACINGS,
    check_sigma_steps,
    check_timesteps_values,
    places_timesteps,
    spacing_grid,
)
from diffkit.validators import boolean, int_at_least, is_real, positive_real, real_in

FLOW_SIGMA_MAX = 2.0**30
"""The σ that stands for t = 1 (pure noise): t = 1 − 1/(1 + 2³⁰) ≈ 1 − 9.3e-10."""

FLOW_SPACING = "uniform"
FLOW_T_ENDS = ("table", "1/steps")  # where the uniform grid's t ends before the shift (sigmas_for)
"""The flow schedule's own default spacing: t uniform between the table's ends, then shifted
(diffusers' ``FlowMatchEulerDiscreteScheduler.set_timesteps``)."""


def sigma_from_t(t: torch.Tensor) -> torch.Tensor:
    """σ = t/(1 − t) in float64, with t = 1 mapped to :data:`FLOW_SIGMA_MAX`."""
    t = t.to(torch.float64)
    return torch.where(t < 1, t / (1 - t).clamp(min=1 / (1 + FLOW_SIGMA_MAX)), FLOW_SIGMA_MAX)


def _above_base(instance: FlowSchedule, attribute: attrs.Attribute, value: int) -> None:
    if value <= instance.base_image_seq_len:
        raise ConfigError(
            f"max_image_seq_len ({value}) must be greater than base_image_seq_len ({instance.base_image_seq_len})"
        )


@attrs.frozen(kw_only=True, slots=False)
class FlowSchedule(SigmaTableEnds):
    """The flow-matching path x_t = (1 − t)·x0 + t·ε with SD3's or Flux's time shift.

    Args (named as in diffusers' ``FlowMatchEulerDiscreteScheduler``):
        num_train_timesteps: T; the network's time input is t·T.
        shift: s of SD3's shift (1: none; SD3 uses 3).
        use_dynamic_shifting: Flux's resolution-dependent shift instead of ``shift``; the
            sampling grid then needs ``mu=`` or ``image_seq_len=``.
        base_shift, max_shift, base_image_seq_len, max_image_seq_len: μ's line.
    """

    num_train_timesteps: int = attrs.field(default=1000, validator=_train_timesteps)
    shift: float = attrs.field(default=1.0, validator=positive_real)
    use_dynamic_shifting: bool = attrs.field(default=False, validator=boolean)
    base_shift: float = attrs.field(default=0.5, validator=real_in())
    max_shift: float = attrs.field(default=1.15, validator=real_in())
    base_image_seq_len: int = attrs.field(default=256, validator=int_at_least(1))
    max_image_seq_len: int = attrs.field(default=4096, validator=[int_at_least(1), _above_base])

    GRID_SPACINGS: ClassVar[tuple[str, ...]] = (FLOW_SPACING, "karras", "exponential", "logsnr_uniform")
    """The spacings placed on this schedule's continuous time (what the conformance kit checks)."""

    # -- the shift ------------------------------------------------------------------------

    def mu_for(self, image_seq_len: int) -> float:
        """Flux's μ at a sequence length (diffusers' ``calculate_shift``): linear through the two points."""
        if not is_real(image_seq_len) or not 0 < image_seq_len < math.inf:
            raise ConfigError(f"image_seq_len must be a positive number of tokens, got {image_seq_len!r}")
        slope = (self.max_shift - self.base_shift) / (self.max_image_seq_len - self.base_image_seq_len)
        return self.base_shift + slope * (image_seq_len - self.base_image_seq_len)

    def shift_time(self, t: torch.Tensor, mu: float | None = None) -> torch.Tensor:
        """t' of the shift (float64): SD3's with ``shift``, or Flux's with μ when dynamic."""
        t = t.to(torch.float64)
        if not self.use_dynamic_shifting:
            return self.shift * t / (1 + (self.shift - 1) * t)
        if mu is None:
            raise ConfigError("use_dynamic_shifting needs mu= or image_seq_len= to place the sampling grid")
        return torch.where(t > 0, math.exp(mu) / (math.exp(mu) + (1 / t - 1)), t)

    # -- the training table (float64, CPU, shape [T]) -------------------------------------

    @functools.cached_property
    def train_t(self) -> torch.Tensor:
        """t at the T training timesteps, increasing to 1: (i + 1)/T shifted (unshifted when dynamic, as in diffusers)."""
        t = torch.arange(1, self.num_train_timesteps + 1, dtype=torch.float64) / self.num_train_timesteps
        return t if self.use_dynamic_shifting else self.shift_time(t)

    @functools.cached_property
    def sigmas(self) -> torch.Tensor:
        """σ = t/(1 − t) of :attr:`train_t`, float64 [T], strictly increasing, last :data:`FLOW_SIGMA_MAX`."""
        return sigma_from_t(self.train_t)

    @functools.cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        """The VP ᾱ = 1/(1 + σ²) of the same σ, float64 [T]: the last is 0 (t = 1 is zero SNR)."""
        alpha_bar = 1 / (1 + self.sigmas**2)
        alpha_bar[-1] = 0.0
        return alpha_bar

    # -- σ ↔ the network's time input ---------------------------------------------------

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """The network's time t·T of σ (t = σ/(1 + σ)), in σ's floating dtype; σ = ∞ gives T."""
        dtype = sigma.dtype if sigma.is_floating_point() else torch.float32
        s = sigma.to(torch.float64)
        t = torch.where(torch.isinf(s), 1.0, s / (1 + s.nan_to_num(posinf=0.0)))
        return (t * self.num_train_timesteps).to(dtype)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """σ at the network time t·T, float64 (T gives :data:`FLOW_SIGMA_MAX`)."""
        return sigma_from_t(t.to(torch.float64) / self.num_train_timesteps)

    # -- inference grids ------------------------------------------------------------------

    def sigmas_for(
        self, steps: int, spacing: str = FLOW_SPACING, *, mu: float | None = None, image_seq_len: int | None = None,
        t_end: str = "table", **options: Any,
    ) -> torch.Tensor:
        """The σ grid for an N-step sampler: float64 CPU [steps + 1], strictly decreasing, last 0.

        ``uniform`` (the default) is diffusers' ``FlowMatchEulerDiscreteScheduler`` grid: t
        uniform from the table's largest t to its smallest, then shifted (diffusers shifts the
        smallest t twice without dynamic shifting — kept, so that grids agree). A σ spacing
        (``karras``, ``exponential``, ``logsnr_uniform``, a plugin's) places σ between this
        schedule's σ table ends instead; the timestep spacings (``leading``, ``trailing``,
        ``linspace``) index a VP table and are refused. ``mu`` or ``image_seq_len`` give Flux's μ.
        ``t_end`` is where the uniform t ends before the shift: ``"table"`` (the smallest training t,
        1/T: the scheduler's own grid) or ``"1/steps"`` (1/N: the grid ``FluxPipeline`` passes,
        ``linspace(1, 1/N, N)``).
        """
        if t_end not in FLOW_T_ENDS:
            raise ConfigError(f"t_end must be one of {', '.join(FLOW_T_ENDS)}, got {t_end!r}")
        if image_seq_len is not None:
            if mu is not None:
                raise ConfigError("pass mu= or image_seq_len=, not both")
            mu = self.mu_for(image_seq_len)
        if mu is not None and not (is_real(mu) and math.isfinite(mu)):
            raise ConfigError(f"mu must be a finite number, got {mu!r}")
        if spacing != FLOW_SPACING:
            if spacing in SPACINGS and places_timesteps(spacing):
                sigma_spacings = [name for name in SPACINGS if not places_timesteps(name)]
                raise ConfigError(
                    f"spacing {spacing!r} places the integer timesteps of a VP table; the flow schedule's time is "
                    f"continuous: use {FLOW_SPACING!r} (diffusers' grid) or a σ spacing ({', '.join(sigma_spacings)})"
                )
            if mu is not None or t_end != "table":
                raise ConfigError(f"mu=, image_seq_len= and t_end= only apply with spacing={FLOW_SPACING!r}")
            return spacing_grid(self, steps, spacing, options)
        if options:
            raise ConfigError(f"spacing {FLOW_SPACING!r} takes no options besides mu, image_seq_len and t_end; got "
                              f"{', '.join(sorted(options))}")
        steps = check_sigma_steps(steps)
        t_high = float(self.train_t[-1])
        t_low = float(self.train_t[0]) if t_end == "table" else 1.0 / steps
        t = self.shift_time(torch.linspace(t_high, t_low, steps, dtype=torch.float64), mu)
        return torch.cat([sigma_from_t(t), torch.zeros(1, dtype=torch.float64)])

    def sigmas_from_timesteps(self, timesteps: Any) -> torch.Tensor:
        """σ at network times t·T (strictly decreasing, in (0, T]; diffusers' ``timesteps``), then 0."""
        t = check_timesteps_values(timesteps, self.num_train_timesteps)
        return torch.cat([self.t_to_sigma(t), torch.zeros(1, dtype=torch.float64)])

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-ready values (inverse: ``FlowSchedule(**d)``)."""
        return attrs.asdict(self)
