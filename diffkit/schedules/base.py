"""The discrete variance-preserving schedule: a ᾱ_t table over T training timesteps.

Notation (DDPM, Ho et al. 2020; σ form of Karras et al. 2022):

    ᾱ_t = ∏_{s≤t} (1 − β_s)                  t = 0 … T−1   (shape [T])
    x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε              (VP form, what networks see)
    σ_t = √((1 − ᾱ_t)/ᾱ_t),  y = x_t/√ᾱ_t = x_0 + σ_t ε   (σ form, what samplers integrate)

Tables are computed once in float64 on the CPU; the samplers receive σ sequences as float64
CPU tensors, so the sampling loop never needs a device→host sync to branch on them.
"""

from __future__ import annotations

import functools
from typing import Any

import attrs
import torch

from diffkit.errors import ConfigError
from diffkit.schedules.betas import rescale_to_zero_terminal_snr
from diffkit.schedules.spacings import DEFAULT_SPACING, check_timesteps, spacing_grid, spacing_timesteps
from diffkit.validators import is_integer, is_real

# With zero terminal SNR ᾱ_{T−1} = 0 and σ_{T−1} = ∞. The σ table replaces that one zero by
# min(2⁻²⁴, ᾱ_{T−2}/2) (σ ≥ 4096, as diffusers does, yet still above σ_{T−2} so the table
# stays strictly increasing) and samplers start from a finite σ; x/√(1+σ²) at that σ
# differs from pure noise by O(1/σ) ≤ 2.4e-4.
ALPHA_BAR_FLOOR = 2.0**-24


# The largest T a schedule accepts. Published checkpoints use 1000 (DDPM, Stable Diffusion,
# DiT); a table of 100 000 float64 entries is under a megabyte, while 10**10 would ask for
# 80 GB before anything else happened.
MAX_TRAIN_TIMESTEPS = 100_000


def _train_timesteps(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if not is_integer(value) or not 2 <= value <= MAX_TRAIN_TIMESTEPS:
        raise ConfigError(
            f"{attribute.name} must be an integer in 2 … {MAX_TRAIN_TIMESTEPS} (published checkpoints use 1000), "
            f"got {value!r}"
        )


def unit_interval(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    """attrs validator: a float strictly inside (0, 1)."""
    if not is_real(value) or not 0 < value < 1:
        raise ConfigError(f"{attribute.name} must be a number in (0, 1), got {value!r}")


class SigmaTableEnds:
    """``sigma_min`` and ``sigma_max``: the ends of a schedule's increasing ``sigmas`` table."""

    sigmas: torch.Tensor

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])


@attrs.frozen(kw_only=True, slots=False)
class DiscreteSchedule(SigmaTableEnds):
    """Base class of the built-in schedules; subclasses implement :meth:`raw_betas`.

    Args:
        num_train_timesteps: T, the number of training timesteps, 2 … :data:`MAX_TRAIN_TIMESTEPS`
            (100 000); checked before any table is built.
        rescale_zero_terminal_snr: rescale ᾱ so that ᾱ_{T−1} = 0 (Lin et al. 2024, Alg. 1).
    """

    num_train_timesteps: int = attrs.field(default=1000, validator=_train_timesteps)
    rescale_zero_terminal_snr: bool = attrs.field(
        default=False, validator=attrs.validators.instance_of(bool)
    )

    def __attrs_post_init__(self) -> None:
        raw = self.raw_betas()
        name = type(self).__name__
        if not isinstance(raw, torch.Tensor) or tuple(raw.shape) != (self.num_train_timesteps,):
            got = tuple(raw.shape) if isinstance(raw, torch.Tensor) else type(raw).__name__
            raise ConfigError(f"{name}.raw_betas() returned {got}; it must return a tensor of shape [T] = "
                              f"[{self.num_train_timesteps}]")
        finite = torch.isfinite(raw)
        if not bool(finite.all()):
            first = int((~finite).nonzero()[0, 0])
            raise ConfigError(
                f"{name} produced {int((~finite).sum())} non-finite betas of {raw.numel()} (beta[{first}] = "
                f"{float(raw[first])}); check its options"
            )
        if not bool(((raw > 0) & (raw < 1)).all()):
            raise ConfigError(
                f"{type(self).__name__} betas must lie in (0, 1); got min {float(raw.min()):g} "
                f"and max {float(raw.max()):g} — check beta_start/beta_end"
            )
        # Many timesteps with large β drive ᾱ below float64's range: σ becomes inf (or NaN after
        # the zero-terminal-SNR rescale) and every sampler would return garbage. Refuse it here.
        sigmas = self.sigmas
        good = torch.isfinite(sigmas)
        good[1:] &= sigmas[1:] > sigmas[:-1]
        if not bool(good.all()):
            first = int((~good).nonzero()[0, 0])
            raise ConfigError(
                f"{name} with num_train_timesteps={self.num_train_timesteps}: ᾱ_t underflows in float64 from "
                f"t = {first} on (σ_{first} = {float(sigmas[first]):g}), so its σ table is not finite and increasing; "
                "use fewer training timesteps or smaller betas"
            )

    def raw_betas(self) -> torch.Tensor:
        """β_t before any rescaling, float64 [T]."""
        raise NotImplementedError

    # -- tables (float64, CPU, shape [T]) -------------------------------------------------

    @functools.cached_property
    def betas(self) -> torch.Tensor:
        """β_t, float64 [T] (after the zero-terminal-SNR rescale when enabled)."""
        raw = self.raw_betas()
        return rescale_to_zero_terminal_snr(raw) if self.rescale_zero_terminal_snr else raw

    @functools.cached_property
    def alphas_cumprod(self) -> torch.Tensor:
        """ᾱ_t = ∏_{s≤t}(1 − β_s), float64 [T], strictly decreasing in (0, 1] (last may be 0)."""
        return torch.cumprod(1 - self.betas, dim=0)

    @functools.cached_property
    def sigmas(self) -> torch.Tensor:
        """σ_t = √((1 − ᾱ_t)/ᾱ_t), float64 [T], strictly increasing and finite.

        A terminal ᾱ = 0 (zero terminal SNR) counts as min(2⁻²⁴, ᾱ_{T−2}/2).
        """
        alpha_bar = self.alphas_cumprod.clone()
        if alpha_bar[-1] == 0:
            alpha_bar[-1] = min(ALPHA_BAR_FLOOR, float(alpha_bar[-2]) / 2)
        return ((1 - alpha_bar) / alpha_bar).sqrt()

    @functools.cached_property
    def _log_sigmas(self) -> torch.Tensor:
        return self.sigmas.log()

    # -- inference grids ------------------------------------------------------------------

    def timesteps(
        self, steps: int, spacing: str = DEFAULT_SPACING, *, steps_offset: int = 0, **options: Any
    ) -> torch.Tensor:
        """The decreasing int64 training timesteps [steps] an N-step sampler visits.

        Only for spacings placed at training timesteps (``leading``, ``trailing``,
        ``linspace``, and plugins that register ``timesteps=``); σ spacings place continuous
        σ, whose fractional timesteps are ``sigma_to_t(sigmas_for(...)[:-1])``.
        """
        if not (type(steps_offset) is int and steps_offset == 0):
            options["steps_offset"] = steps_offset
        return spacing_timesteps(self.num_train_timesteps, steps, spacing, options)

    def sigmas_for(
        self, steps: int, spacing: str = DEFAULT_SPACING, *, steps_offset: int = 0, **options: Any
    ) -> torch.Tensor:
        """The σ sequence for an N-step sampler: float64 CPU [steps + 1], strictly decreasing, last 0.

        Args:
            steps: N. Timestep spacings take 1..T; σ spacings any integer ≥ 1.
            spacing: a registered spacing (:data:`diffkit.schedules.SPACINGS`; default
                ``trailing``) — ``leading``, ``trailing``, ``linspace`` (σ at table timesteps,
                diffusers' definitions), ``karras``, ``exponential``, ``logsnr_uniform``
                (continuous σ between the table's ends), or a plugin's.
            steps_offset: added to ``leading`` timesteps (1 for Stable Diffusion); 0 is
                accepted by every spacing, anything else only by ``leading``.
            **options: the spacing's own options, e.g. ``rho=5.0`` for ``karras`` and
                ``sigma_min``/``sigma_max`` for the σ spacings (default: the table's ends
                σ_0 and σ_{T−1}; a σ outside the table is allowed, the network then sees
                t clamped to 0 or T−1). An option the spacing does not take is an error
                naming the valid ones.

        Example: ``schedule.sigmas_for(20, "karras", rho=7.0, sigma_min=0.03)``.
        """
        if not (type(steps_offset) is int and steps_offset == 0):
            options["steps_offset"] = steps_offset
        return spacing_grid(self, steps, spacing, options)

    def sigmas_from_timesteps(self, timesteps: Any) -> torch.Tensor:
        """σ at user-given timesteps (strictly decreasing, in 0..T−1), with a final 0 appended."""
        t = check_timesteps(timesteps, self.num_train_timesteps)
        return torch.cat([self.sigmas[t], self.sigmas.new_zeros(1)])

    # -- σ ↔ t (continuous, interpolating log σ between table entries) -------------------

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep whose interpolated log σ equals log ``sigma``.

        Exact table values map to exact integers; values outside the table clamp to 0 or
        T−1. Returns a tensor shaped like ``sigma`` in its floating dtype and device.
        """
        log_table = self._table_on(sigma.device)
        log_sigma = sigma.to(log_table.dtype).clamp(min=torch.finfo(log_table.dtype).tiny).log()
        log_sigma = log_sigma.clamp(log_table[0], log_table[-1])
        high = torch.searchsorted(log_table, log_sigma).clamp(1, self.num_train_timesteps - 1)
        low_value, high_value = log_table[high - 1], log_table[high]
        weight = (log_sigma - low_value) / (high_value - low_value)
        t = (high - 1).to(log_table.dtype) + weight
        return t.to(sigma.dtype if sigma.is_floating_point() else torch.float32)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        """σ at a (fractional) timestep, interpolating log σ linearly between table entries."""
        log_table = self._table_on(t.device)
        t = t.to(log_table.dtype).clamp(0, self.num_train_timesteps - 1)
        low = t.floor().long().clamp(max=self.num_train_timesteps - 2)
        weight = t - low
        log_sigma = (1 - weight) * log_table[low] + weight * log_table[low + 1]
        return log_sigma.exp()

    def _table_on(self, device: torch.device) -> torch.Tensor:
        return self.table_on("_log_sigmas", device)

    def table_on(self, name: str, device: torch.device | str) -> torch.Tensor:
        """The float64 [T] table ``name`` (``"sigmas"``, ``"betas"``, ``"alphas_cumprod"``, …) on ``device``.

        Copied once per device and cached, so a training or sampling step indexes a table
        already on the accelerator instead of copying it from the host (a synchronisation)
        every step. float32 on MPS, which has no float64.
        """
        device = torch.device(device)
        cache = self.__dict__.setdefault("_table_cache", {})
        key = (name, device)
        if key not in cache:
            dtype = torch.float32 if device.type == "mps" else torch.float64
            cache[key] = getattr(self, name).to(device=device, dtype=dtype)
        return cache[key]

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON-ready values (inverse: ``type(self)(**d)``)."""
        return attrs.asdict(self)
