"""A diffusers scheduler class as a diffkit sampler: ``as_sampler(EulerDiscreteScheduler, **config)``.

The returned function has the sampler contract ``fn(denoiser, x, sigmas, *, cond, generator, callback,
noise_sampler, **options)`` and runs diffusers' own ``set_timesteps`` / ``scale_model_input`` / ``step``
loop, with the diffkit denoiser in the place of the network. Each call builds a fresh scheduler.

Conventions (σ form y = x0 + σ·ε on the diffkit side, x [B, ...]):

* the sample ``step`` carries — σ form (Euler, Heun, KDPM2, LMS, EDM: ``init_noise_sigma`` > 1): y itself;
  VP form (DDIM, DDPM, DPM-Solver, UniPC, DEIS): x_t = y/√(1 + σ²); flow form (FlowMatch*, and
  ``use_flow_sigmas=True``): x_t = y/(1 + σ), whose time is t = σ/(1 + σ);
* the network output it expects, from the denoiser's x̂0 = D(y, σ) at the σ of the timestep it asks about
  (α_t, s_t: the form's signal and noise scales, x_t = α_t·y):
  ε = (y − x̂0)/σ;  v = (α_t²·y − x̂0)/s_t (so α_t·x_t − s_t·v = x̂0);  sample = x̂0;
  velocity (flow) v = ε − x̂0 = (y − (1 + σ)·x̂0)/σ;  EDM's F from x̂0 = c_skip·y + c_out·F;
* that σ is the scheduler's own level at the step (its ``sigmas``, KDPM2's ``sigmas_interpol``, DDIM/DDPM's
  ᾱ), taken at the grid's float64 value where it is a grid level; a request at σ = 0 (KDPM2Ancestral's last)
  is answered with x̂0 = y without calling the denoiser;
* ``callback`` once per grid step (Heun-type classes make two requests a step), float16/bfloat16 integrated
  in float32 and returned in their own dtype.

The grid. The sampler steps along the σ grid it is given. diffusers offers that through
``set_timesteps(sigmas=...)`` for :class:`EulerDiscreteScheduler` only (other classes' ``sigmas=``
means something else: a ramp for EDM, pre-shift values for FlowMatch, flow only for UniPC; and
``timesteps=`` takes integer table entries). So, by class (:data:`SUPPORTED`):

* ``sigmas_argument``: ``set_timesteps(sigmas=grid)``;
* ``karras_hook``: the class's own ``use_karras_sigmas`` branch, with the instance's
  ``_convert_to_karras`` (EDM: ``_compute_karras_sigmas``) returning the grid, so diffusers derives
  everything else itself (timesteps, KDPM2's log-midpoints, Heun's repeated levels, order lists);
* ``assign`` / ``assign_interleaved``: ``set_timesteps(N)``, then the grid written into ``sigmas``
  and ``timesteps`` (classes with no other way in: EulerAncestral, FlowMatchHeun);
* ``vp_table``: DDIM and DDPM index ᾱ by integer timestep; the grid's ᾱ_i = 1/(1 + σ_i²) are written
  into ``alphas_cumprod`` at the timesteps they visit (DDIM: stride T // N, DDPM: custom timesteps).

After placing the grid its levels are read back and compared, in diffusers' float32, with the grid
(an error if they differ, e.g. under another diffusers version). Grid options of the scheduler
(``use_karras_sigmas``, ``timestep_spacing``, ``shift``, …: :data:`GRID_KEYS`) choose diffusers' own
grid, so a non-default value is refused: choose the grid with a diffkit spacing instead. The last
level: 0, or what ``final_sigmas_type="sigma_min"`` makes it (the table's σ_min; EDM: the last level
again), or always the table's σ_min for DEIS and SA-Solver, whose ε-form step cannot reach σ = 0 —
then the result is diffusers' last sample, which still holds that much noise.

The noise table: a discrete scheduler only reaches σ inside its β table,
σ_t = √((1 − ᾱ_t)/ᾱ_t), t = 0 … T − 1 (σ ∈ [0.0100, 157.4] for the default linear 1000-step table);
a grid outside it is refused before any work, naming the range (flow and EDM schedulers take any σ).

Noise: stochastic steps draw from ``generator`` (passed to ``step``; a list gives one per sample).
With ``noise_sampler(σ, σ')`` given, the scheduler module's ``randn_tensor`` is routed, for this
call and thread only, to it (σ, σ' the step's levels): diffusers has no other noise hook for most
classes. The routing stays installed as a pass-through afterwards.
"""

from __future__ import annotations

import inspect
import math
import sys
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import attrs
import numpy as np
import torch

from diffkit.errors import ConfigError, ShapeError, UnknownNameError
from diffkit.samplers.common import as_generator, denoise, sigma_levels
from diffkit.samplers.contract import Callback, Denoiser, NoiseSampler, SamplerFn
from diffkit.sampling.paths import from_path_form, to_path_form

__all__ = [
    "GRID_KEYS",
    "SUPPORTED",
    "OutOfRangeError",
    "SchedulerTraits",
    "as_sampler",
    "check_options",
    "claimed_order",
    "representable_range",
    "scheduler_options",
]


class OutOfRangeError(ConfigError):
    """A σ grid outside what the scheduler's noise table can represent; the message names the range."""


@attrs.frozen
class SchedulerTraits:
    """How the adapter drives one diffusers scheduler class.

    Attributes:
        form: the sample ``step`` carries: ``"sigma"`` (y), ``"vp"`` (y/√(1 + σ²)), ``"flow"``
            (y/(1 + σ)) or ``"edm"`` (y, with EDM's preconditioned output); ``"vp"`` becomes
            ``"flow"`` under ``use_flow_sigmas=True``.
        placement: how the grid gets in (module docstring).
        final: the last level: ``"zero"``; ``"config"`` (``final_sigmas_type``); ``"table_min"``
            (always the table's σ_min); ``"alpha_one"`` (DDIM's ``set_alpha_to_one``).
        interleaved: two loop entries per step (Heun, KDPM2, FlowMatchHeun: 2N − 1 entries).
        karras_in_sigma: under ``use_flow_sigmas`` the karras hook still returns σ (UniPC converts it
            to t itself); the other classes take t there.
    """

    form: str
    placement: str
    final: str = "zero"
    interleaved: bool = False
    karras_in_sigma: bool = False


SUPPORTED: Mapping[str, SchedulerTraits] = {
    "EulerDiscreteScheduler": SchedulerTraits("sigma", "sigmas_argument", final="config"),
    "EulerAncestralDiscreteScheduler": SchedulerTraits("sigma", "assign"),
    "HeunDiscreteScheduler": SchedulerTraits("sigma", "karras_hook", interleaved=True),
    "KDPM2DiscreteScheduler": SchedulerTraits("sigma", "karras_hook", interleaved=True),
    "KDPM2AncestralDiscreteScheduler": SchedulerTraits("sigma", "karras_hook", interleaved=True),
    "LMSDiscreteScheduler": SchedulerTraits("sigma", "karras_hook"),
    "EDMEulerScheduler": SchedulerTraits("edm", "karras_hook", final="config"),
    "DPMSolverMultistepScheduler": SchedulerTraits("vp", "karras_hook", final="config"),
    "DPMSolverSinglestepScheduler": SchedulerTraits("vp", "karras_hook", final="config"),
    "UniPCMultistepScheduler": SchedulerTraits("vp", "karras_hook", final="config", karras_in_sigma=True),
    "DEISMultistepScheduler": SchedulerTraits("vp", "karras_hook", final="table_min"),
    "SASolverScheduler": SchedulerTraits("vp", "karras_hook", final="table_min"),
    "DDIMScheduler": SchedulerTraits("vp", "vp_table", final="alpha_one"),
    "DDPMScheduler": SchedulerTraits("vp", "vp_table"),
    "FlowMatchEulerDiscreteScheduler": SchedulerTraits("flow", "karras_hook"),
    "FlowMatchHeunDiscreteScheduler": SchedulerTraits("flow", "assign_interleaved", interleaved=True),
}
"""Every scheduler class the adapter drives, by class name. Not here: DPMSolverSDE and CosineDPMSolver
(need torchsde), PNDM/IPNDM (fixed integer strides with half-step warm-ups), LCM/TCD/consistency models
(few-step distillation samplers, not solvers of one ODE), ScoreSdeVe (a score network)."""

GRID_KEYS: frozenset[str] = frozenset({
    "timestep_spacing", "steps_offset", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
    "use_lu_lambdas", "interpolation_type", "sigma_min", "sigma_max", "rho", "sigma_schedule", "shift",
    "flow_shift", "use_dynamic_shifting", "base_shift", "max_shift", "base_image_seq_len", "max_image_seq_len",
    "shift_terminal", "time_shift_type", "invert_sigmas", "lambda_min_clipped",
})
"""Config keys that only choose diffusers' own σ grid; a non-default value is refused (the grid is the caller's)."""

# step() parameters that are not options: the loop passes them (or the adapter has no use for them)
_STEP_ARGUMENTS = frozenset({"self", "model_output", "timestep", "sample", "generator", "return_dict",
                             "variance_noise", "pred_original_sample", "per_token_timesteps"})
_PREDICTIONS = ("epsilon", "v_prediction", "sample", "flow_prediction")
# slack at the table's ends, for float64 grids against diffusers' float32 ᾱ: relative at the top; at the
# bottom, where ᾱ ≈ 1 − σ², in σ² (ᾱ is known to 2^-23 there)
_TABLE_TOLERANCE = 1e-5
_TABLE_SIGMA2_SLACK = 2.0**-23


def _scheduler_class(scheduler_class: type | str) -> type:
    if isinstance(scheduler_class, str):
        import diffusers  # the optional dependency, imported only when a class is named

        if not hasattr(diffusers, scheduler_class):
            raise UnknownNameError("diffusers scheduler class", scheduler_class, SUPPORTED)
        scheduler_class = getattr(diffusers, scheduler_class)
    if not isinstance(scheduler_class, type):
        raise ConfigError(f"scheduler_class must be a diffusers scheduler class or its name, got {scheduler_class!r}")
    return scheduler_class


def _traits(cls: type) -> SchedulerTraits:
    traits = SUPPORTED.get(cls.__name__)
    if traits is None:
        raise UnknownNameError("diffusers scheduler class for as_sampler", cls.__name__, SUPPORTED)
    return traits


def scheduler_options(scheduler_class: type | str) -> dict[str, Any]:
    """The sampler options of a wrapped class, with their defaults: its config keys, then its
    ``step`` keywords (``s_churn`` …, DDIM's ``eta``, LMS's ``order``)."""
    cls = _scheduler_class(scheduler_class)
    options: dict[str, Any] = {}
    for where in (cls.__init__, cls.step):
        for name, p in inspect.signature(where).parameters.items():
            if name in _STEP_ARGUMENTS or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                continue
            if name in options:
                raise ConfigError(f"{cls.__name__}: {name!r} is both a config key and a step() keyword")
            options[name] = p.default
    return options


def _split(cls: type, options: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config for the constructor, keywords for step) from one options dict."""
    config_keys = set(inspect.signature(cls.__init__).parameters)
    config = {k: v for k, v in options.items() if k in config_keys}
    return config, {k: v for k, v in options.items() if k not in config_keys}


def _form(traits: SchedulerTraits, config: Mapping[str, Any]) -> str:
    return "flow" if traits.form == "vp" and config.get("use_flow_sigmas") else traits.form


def _prediction(cls: type, form: str, config: Mapping[str, Any]) -> str:
    """What the network output means: a prediction_type, ``"velocity"`` (FlowMatch) or ``"edm"``."""
    if form == "edm":
        return "edm"
    if "prediction_type" not in config:
        return "velocity"
    return config["prediction_type"]


def check_options(scheduler_class: type | str, **options: Any) -> Any:
    """Refuse options the wrapped sampler cannot honour, naming what is valid; builds the scheduler once.

    Raises:
        UnknownNameError: an option that is neither a config key nor a step keyword of the class.
        ConfigError: a grid option (:data:`GRID_KEYS`) set away from its default, an unsupported
            ``prediction_type`` or learned variance, or a configuration diffusers itself refuses.

    Returns:
        The scheduler built with the options' configuration (fresh, before ``set_timesteps``).
    """
    cls = _scheduler_class(scheduler_class)
    traits = _traits(cls)
    defaults = scheduler_options(cls)
    for key in options:
        if key not in defaults:
            raise UnknownNameError(f"option of diffusers' {cls.__name__}", key, defaults)
    grid = sorted(k for k in options if k in GRID_KEYS and options[k] != defaults[k])
    if grid:
        raise ConfigError(
            f"{grid[0]}={options[grid[0]]!r} chooses diffusers' own σ grid for {cls.__name__}; a diffkit sampler "
            "steps along the grid it is given, so choose the grid with a diffkit spacing instead (e.g. "
            f"spacing='karras' or 'exponential'). Grid options: {', '.join(sorted(GRID_KEYS & set(defaults)))}"
        )
    merged = {**defaults, **options}
    config, _ = _split(cls, merged)
    form = _form(traits, config)
    prediction = _prediction(cls, form, config)
    if prediction not in (*_PREDICTIONS, "velocity", "edm"):
        raise ConfigError(f"{cls.__name__}: prediction_type {prediction!r} is not one the adapter can compute from "
                          f"a denoiser's x0; valid: {', '.join(_PREDICTIONS)}")
    if prediction == "flow_prediction" and form != "flow":
        raise ConfigError(f"{cls.__name__}: prediction_type 'flow_prediction' needs use_flow_sigmas=True")
    if str(config.get("variance_type", "")).startswith("learned"):
        raise ConfigError(f"{cls.__name__}: variance_type {config['variance_type']!r} reads a variance from the "
                          "network's extra channels, which a diffkit denoiser does not give; valid: fixed_small, "
                          "fixed_small_log, fixed_large, fixed_large_log")
    return _build(cls, config)


def _build(cls: type, config: Mapping[str, Any]) -> Any:
    try:
        return cls(**config)
    except Exception as exc:
        raise ConfigError(f"diffusers' {cls.__name__} refused the configuration: {type(exc).__name__}: {exc}") from exc


def _table_sigmas(scheduler: Any) -> np.ndarray | None:
    """σ_t = √((1 − ᾱ_t)/ᾱ_t) of the scheduler's β table, float64 [T] (None: no table, e.g. EDM, flow)."""
    alphas_cumprod = getattr(scheduler, "alphas_cumprod", None)
    if alphas_cumprod is None:
        return None
    a = torch.as_tensor(alphas_cumprod).to(torch.float64).numpy()
    with np.errstate(divide="ignore"):
        return np.sqrt((1.0 - a) / a)


def representable_range(scheduler_class: type | str, **config: Any) -> tuple[float, float]:
    """[σ_min, σ_max] a scheduler built with ``config`` can represent; (0, inf) for flow and EDM schedulers."""
    cls = _scheduler_class(scheduler_class)
    traits = _traits(cls)
    config = {**{k: v for k, v in scheduler_options(cls).items() if k in inspect.signature(cls.__init__).parameters},
              **config}
    if _form(traits, config) in ("flow", "edm"):
        return 0.0, math.inf
    table = _table_sigmas(_build(cls, config))
    return float(np.min(table)), float(np.max(table))


def claimed_order(scheduler_class: type | str, **options: Any) -> float | None:
    """The convergence order diffusers documents for a configuration (None where it claims none).

    DPM-Solver, DEIS, SA-Solver: ``solver_order`` (SA-Solver: its predictor order); UniPC: ``solver_order``
    + 1 with its corrector (diffusers' docstring: "the effective order of accuracy is solver_order + 1"),
    ``solver_order`` without; LMS: its step's ``order``; Heun, KDPM2, FlowMatchHeun: 2; Euler, DDIM, EDM
    Euler, FlowMatchEuler: 1. Stochastic variants are weak order 1 and get None.
    """
    cls = _scheduler_class(scheduler_class)
    opts = {**scheduler_options(cls), **options}
    name = cls.__name__
    if name in ("DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler", "DEISMultistepScheduler"):
        if str(opts.get("algorithm_type", "")).startswith("sde"):
            return None
        return float(opts["solver_order"])
    if name == "UniPCMultistepScheduler":
        return float(opts["solver_order"] + (0 if opts["disable_corrector"] else 1))
    if name == "SASolverScheduler":  # stochastic: tau_func defaults to noise for 200 ≤ t ≤ 800
        return None
    if name == "LMSDiscreteScheduler":
        return float(opts["order"])
    if name in ("HeunDiscreteScheduler", "KDPM2DiscreteScheduler", "FlowMatchHeunDiscreteScheduler"):
        return None if opts.get("s_churn") else 2.0
    if name in ("EulerDiscreteScheduler", "EDMEulerScheduler", "FlowMatchEulerDiscreteScheduler"):
        return None if opts.get("s_churn") or opts.get("stochastic_sampling") else 1.0
    if name == "DDIMScheduler":
        return 1.0 if not opts.get("eta") else None
    return None


# -- the grid as the scheduler holds it --------------------------------------------------------------------


def _to_repr(levels: np.ndarray, form: str) -> np.ndarray:
    """Diffkit σ → the scheduler's own level: σ, or flow time t = σ/(1 + σ) (float64)."""
    return levels / (1.0 + levels) if form == "flow" else levels


def _from_repr(value: float, form: str) -> float:
    return value / (1.0 - value) if form == "flow" else value


@attrs.frozen
class _Plan:
    """The grid a call runs on: diffkit σ levels (float64) and the scheduler's float32 copy."""

    levels: tuple[float, ...]  # σ_0 > … > σ_{N−1} > final (≥ 0), diffkit σ
    final_repeats: bool  # the last level repeats σ_{N−1} (EDM's sigma_min): a zero-length last step


def _final_level(cls: type, traits: SchedulerTraits, config: Mapping[str, Any], scheduler: Any, form: str,
                 last: float) -> tuple[float, bool]:
    """(the last level in diffkit σ, whether it repeats σ_{N−1})."""
    policy = traits.final
    if policy == "config":
        policy = "zero" if config.get("final_sigmas_type", "zero") == "zero" else "table_min"
    if policy == "alpha_one":
        policy = "zero" if config.get("set_alpha_to_one", True) else "table_min"
    if policy == "zero":
        return 0.0, False
    if form in ("edm", "flow"):  # no β table: diffusers repeats the last level
        return last, True
    return float(_table_sigmas(scheduler)[0]), False


def _plan(cls: type, traits: SchedulerTraits, config: Mapping[str, Any], scheduler: Any, form: str,
          sigmas: torch.Tensor) -> _Plan:
    """Validate the grid against what the scheduler represents and fix its last level, before any work."""
    given = sigma_levels(sigmas)
    inner = np.asarray(given[:-1], dtype=np.float64)
    table = None if form in ("flow", "edm") else _table_sigmas(scheduler)
    if table is not None:
        lo, hi = float(np.min(table)), float(np.max(table))
        floor = math.sqrt(max(lo * lo - _TABLE_SIGMA2_SLACK, 0.0))
        outside = [i for i, s in enumerate(inner) if not floor <= s <= hi * (1 + _TABLE_TOLERANCE)]
        if outside:
            i = outside[0]
            raise OutOfRangeError(
                f"diffusers' {cls.__name__} with this β table represents σ ∈ [{lo:.4g}, {hi:.4g}] "
                f"(σ_t = √((1 − ᾱ_t)/ᾱ_t) over its {len(table)} training timesteps); the grid asks for "
                f"sigmas[{i}] = {inner[i]:.6g}. Use a grid inside that range, or a β table that covers it "
                "(rescale_betas_zero_snr=True reaches σ = 4096 for Euler-type classes, a smaller beta_start lower σ)"
            )
    final, repeats = _final_level(cls, traits, config, scheduler, form, float(inner[-1]))
    if not repeats and final > 0 and not inner[-1] > final:
        raise ConfigError(
            f"diffusers' {cls.__name__} ends this configuration at σ = {final:.6g} (its table's σ_min), but the "
            f"grid's last nonzero level is {inner[-1]:.6g}; end the grid above it"
        )
    levels = (*inner.tolist(), final)
    stored = _to_repr(np.asarray(levels[: len(inner) + (0 if repeats else 1)]), form).astype(np.float32)
    if not np.all(np.diff(stored.astype(np.float64)) < 0):
        k = int(np.argmax(np.diff(stored.astype(np.float64)) >= 0))
        raise ConfigError(
            f"sigmas[{k}] = {levels[k]:.9g} and sigmas[{k + 1}] = {levels[k + 1]:.9g} are one level in diffusers' "
            f"float32 {'time t = σ/(1 + σ)' if form == 'flow' else 'σ'}; use a coarser grid there"
        )
    return _Plan(levels=levels, final_repeats=repeats)


def _set_begin(scheduler: Any) -> None:
    """Step indices count from 0 instead of being looked up by timestep (the hook's rounded timesteps repeat)."""
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(0)


def _table_timesteps(scheduler: Any, levels: np.ndarray) -> np.ndarray:
    """Fractional timesteps t(σ) by linear interpolation of log σ over the table (diffusers' ``_sigma_to_t``)."""
    log_table = np.log(_table_sigmas(scheduler))
    return np.interp(np.log(np.maximum(levels, 1e-10)), log_table, np.arange(len(log_table)))


def _place(cls: type, traits: SchedulerTraits, scheduler: Any, plan: _Plan, form: str, device: torch.device) -> None:
    """Put the scheduler on the plan's grid (module docstring), then read the grid back and compare."""
    levels = np.asarray(plan.levels, dtype=np.float64)
    n = len(levels) - 1
    inner = levels[:-1]
    if traits.placement == "sigmas_argument":
        scheduler.set_timesteps(sigmas=levels.tolist(), device=device)
    elif traits.placement == "karras_hook":
        hook_values = inner if (form != "flow" or traits.karras_in_sigma) else _to_repr(inner, form)

        def grid(*args: Any, **kwargs: Any) -> Any:  # stands in for the class's Karras construction
            return torch.from_numpy(hook_values.copy()) if form == "edm" else hook_values.copy()

        if form == "edm":
            scheduler._compute_karras_sigmas = grid
            scheduler._compute_exponential_sigmas = grid
        else:
            scheduler._convert_to_karras = grid
            scheduler.register_to_config(use_karras_sigmas=True, use_exponential_sigmas=False, use_beta_sigmas=False)
            if getattr(scheduler.config, "use_lu_lambdas", False):
                scheduler.register_to_config(use_lu_lambdas=False)
        extra = {"mu": 0.0} if getattr(scheduler.config, "use_dynamic_shifting", False) else {}
        scheduler.set_timesteps(n, device=device, **extra)
        if not plan.final_repeats and float(scheduler.sigmas[-1]) != np.float32(_to_repr(levels[-1:], form)[0]):
            scheduler.sigmas[-1] = float(_to_repr(levels[-1:], form)[0])  # DEIS/SA-Solver/UniPC-karras repeat σ_{N−1}
    elif traits.placement in ("assign", "assign_interleaved"):
        scheduler.set_timesteps(n, device=device)
        stored = torch.from_numpy(_to_repr(levels, form).astype(np.float32))
        if form == "flow":
            times = stored[:-1] * scheduler.config.num_train_timesteps
        else:
            times = torch.from_numpy(_table_timesteps(scheduler, inner).astype(np.float32))
        if traits.placement == "assign_interleaved":  # [s0, s1, s1, …, s_{N−1}, s_{N−1}, 0], [t0, t1, t1, …]
            stored = torch.cat([stored[:1], stored[1:-1].repeat_interleave(2), stored[-1:]])
            times = torch.cat([times[:1], times[1:].repeat_interleave(2)])
        scheduler.sigmas = stored
        scheduler.timesteps = times.to(device)
    else:  # vp_table
        _place_vp_table(cls, scheduler, levels, device)
        return
    _set_begin(scheduler)
    _compare_back(cls, traits, scheduler, plan, form)


def _place_vp_table(cls: type, scheduler: Any, levels: np.ndarray, device: torch.device) -> None:
    """DDIM/DDPM: write ᾱ_i = 1/(1 + σ_i²) into ``alphas_cumprod`` at the timesteps the scheduler visits."""
    n, total = len(levels) - 1, scheduler.config.num_train_timesteps
    if n > total:
        raise ConfigError(f"diffusers' {cls.__name__} takes at most num_train_timesteps = {total} steps, got {n}")
    if cls.__name__ == "DDIMScheduler":
        scheduler.set_timesteps(n, device=device)
        stride = total // n  # DDIM steps from t to t − T // N, then to final_alpha_cumprod below 0
        times = [(n - 1 - i) * stride for i in range(n)]
        scheduler.timesteps = torch.tensor(times, dtype=torch.int64, device=device)
    else:  # DDPM: custom timesteps, each stepping to the next one listed, the last to ᾱ = 1
        times = list(range(n - 1, -1, -1))
        scheduler.set_timesteps(timesteps=times, device=device)
    table = scheduler.alphas_cumprod.clone()
    for i, t in enumerate(times):
        table[t] = 1.0 / (1.0 + levels[i] ** 2)
    scheduler.alphas_cumprod = table


def _compare_back(cls: type, traits: SchedulerTraits, scheduler: Any, plan: _Plan, form: str) -> None:
    held = torch.as_tensor(scheduler.sigmas).detach().cpu().to(torch.float32)
    if traits.interleaved:
        held = torch.unique_consecutive(held)
    want = torch.from_numpy(_to_repr(np.asarray(plan.levels), form).astype(np.float32))
    if held.shape != want.shape or not torch.equal(held, want):
        raise RuntimeError(
            f"diffusers' {cls.__name__} did not take the grid: it holds {held.tolist()[:6]}… for "
            f"{want.tolist()[:6]}… (a diffusers version this adapter does not know?)"
        )


# -- noise from noise_sampler ----------------------------------------------------------------------------------

_noise_source = threading.local()
_route_lock = threading.Lock()


def _route_randn(module: Any) -> None:
    """Make ``module.randn_tensor`` consult this thread's noise source first (installed once per module)."""
    with _route_lock:
        original = getattr(module, "randn_tensor", None)
        if original is None or getattr(original, "routes_diffkit_noise", False):
            return

        def routed(shape: Any, generator: Any = None, device: Any = None, dtype: Any = None, layout: Any = None) -> Any:
            source = getattr(_noise_source, "draw", None)
            if source is None:
                return original(shape, generator=generator, device=device, dtype=dtype, layout=layout)
            return source(tuple(shape), device, dtype)

        routed.routes_diffkit_noise = True  # type: ignore[attr-defined]
        module.randn_tensor = routed


@contextmanager
def _noise_from(draw: Callable[[tuple[int, ...], Any, Any], torch.Tensor] | None) -> Iterator[None]:
    previous = getattr(_noise_source, "draw", None)
    _noise_source.draw = draw
    try:
        yield
    finally:
        _noise_source.draw = previous


# -- the sampling loop ------------------------------------------------------------------------------------------


def _model_output(prediction: str, form: str, y: torch.Tensor, x0: torch.Tensor, sigma: float,
                  scheduler: Any) -> torch.Tensor:
    """The network output the scheduler expects at σ, given the σ-form sample y and the denoiser's x0 [B, ...]."""
    if prediction == "epsilon":
        return (y - x0) / sigma  # ε, y = x0 + σ·ε
    if prediction == "sample":
        return x0
    if prediction in ("velocity", "flow_prediction"):
        return (y - (1.0 + sigma) * x0) / sigma  # v = ε − x0, the flow path's velocity
    if prediction == "v_prediction":  # x_t = α·y, v = (α·x_t − x0)/s, so that α·x_t − s·v = x0
        alpha_sq, s = ((1.0 / (1.0 + sigma) ** 2, sigma / (1.0 + sigma)) if form == "flow"
                       else (1.0 / (1.0 + sigma * sigma), sigma / math.sqrt(1.0 + sigma * sigma)))
        return (alpha_sq * y - x0) / s
    # EDM: x0 = c_skip(σ)·y + c_out(σ)·F; the two coefficients read from the scheduler's own preconditioning
    one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    c_skip = float(scheduler.precondition_outputs(one, zero, sigma))
    c_out = float(scheduler.precondition_outputs(zero, one, sigma))
    return (x0 - c_skip * y) / c_out


def _sigma_now(scheduler: Any, k: int, t: Any, traits: SchedulerTraits, form: str, exact: Mapping[float, float],
               plan: _Plan) -> float:
    """The diffkit σ of loop entry k: the scheduler's own level there, exact where it is a grid level."""
    if traits.placement == "vp_table":  # entry k visits the timestep that holds ᾱ of level k
        return plan.levels[k]
    array = scheduler.sigmas
    if not getattr(scheduler, "state_in_first_order", True) and hasattr(scheduler, "sigmas_interpol"):
        array = scheduler.sigmas_interpol  # KDPM2's second evaluation, at the log-midpoint
    held = float(array[k])
    return exact[held] if held in exact else _from_repr(held, form)


def _run(cls: type, traits: SchedulerTraits, scheduler: Any, options: Mapping[str, Any], denoiser: Denoiser,
         x: torch.Tensor, sigmas: torch.Tensor, cond: Any, generator: Any, callback: Callback | None,
         noise_sampler: NoiseSampler | None) -> torch.Tensor:
    config, step_options = _split(cls, options)
    form = _form(traits, config)
    prediction = _prediction(cls, form, config)
    plan = _plan(cls, traits, config, scheduler, form, sigmas)
    generator = as_generator(generator)
    if isinstance(generator, list) and len(generator) != x.shape[0]:
        raise ConfigError(f"got {len(generator)} generators for a batch of {x.shape[0]}; pass one per sample")
    work = torch.float64 if x.dtype == torch.float64 else torch.float32  # half types integrate in float32
    _place(cls, traits, scheduler, plan, form, x.device)
    levels = plan.levels
    # the scheduler's float32 level → the grid's float64 σ, so grid levels are evaluated exactly
    exact = {float(np.float32(v)): s for v, s in zip(_to_repr(np.asarray(levels), form), levels) if s > 0}
    step_accepts_generator = "generator" in inspect.signature(cls.step).parameters
    if noise_sampler is not None:
        _route_randn(sys.modules[cls.__module__])
    sample = to_path_form(x.to(work), levels[0], form)
    timesteps = list(scheduler.timesteps)
    i, started = 0, False  # step i of the grid; whether its first evaluation was made
    for k, t in enumerate(timesteps):
        sigma = _sigma_now(scheduler, k, t, traits, form, exact, plan)
        if hasattr(scheduler, "scale_model_input"):  # FlowMatch classes have none; the network sees x_t itself
            scheduler.scale_model_input(sample, t)
        y = from_path_form(sample, sigma, form)
        if sigma > 0:
            x0 = denoise(denoiser, y, sigma, cond)
            output = _model_output(prediction, form, y, x0, sigma, scheduler).to(work)
        else:  # KDPM2Ancestral asks about σ = 0 on its last step: x0 = y, and the output's weight is 0
            x0, output = y, (y if prediction == "sample" else torch.zeros_like(y))
        if not started:  # the step's first evaluation: report the state entering it (k-diffusion's x)
            started = True
            if callback is not None:
                callback({"x": y.to(x.dtype), "i": i, "sigma": levels[i], "sigma_hat": sigma,
                          "denoised": x0.to(x.dtype)})
        kwargs = dict(step_options)
        if step_accepts_generator:
            kwargs["generator"] = generator
        draw = None
        if noise_sampler is not None:
            draw = _noise_draw(noise_sampler, levels[i], levels[i + 1], x.shape)
        with _noise_from(draw):
            sample = scheduler.step(output, t, sample, return_dict=True, **kwargs).prev_sample
        done = k == len(timesteps) - 1 or getattr(scheduler, "state_in_first_order", True)
        if done:
            i, started = i + 1, False
    return from_path_form(sample, levels[-1], form).to(device=x.device, dtype=x.dtype)


def _noise_draw(noise_sampler: NoiseSampler, sigma: float, sigma_next: float,
                shape: torch.Size) -> Callable[[tuple[int, ...], Any, Any], torch.Tensor]:
    def draw(wanted: tuple[int, ...], device: Any, dtype: Any) -> torch.Tensor:
        noise = noise_sampler(sigma, sigma_next)
        if tuple(noise.shape) != tuple(wanted):
            raise ShapeError(f"noise_sampler returned shape {tuple(noise.shape)}; the scheduler draws {list(wanted)} "
                             f"(x is {list(shape)})")
        return noise.to(device=device, dtype=dtype)

    return draw


def as_sampler(scheduler_class: type | str, **config: Any) -> SamplerFn:
    """A diffusers scheduler class as a diffkit sampler (the module docstring gives every convention).

    Args:
        scheduler_class: a class named in :data:`SUPPORTED`, or its name (looked up in ``diffusers``).
        **config: defaults for the sampler's options — the class's config keys and its ``step``
            keywords (:func:`scheduler_options`); each call may override them.

    Returns:
        ``fn(denoiser, x, sigmas, *, cond=None, generator=None, callback=None, noise_sampler=None,
        **options) -> x0``, stateless (each call builds a fresh scheduler), whose signature lists every
        option with its default (so the registry validates option names) and whose ``check`` attribute
        validates option values (:func:`check_options`).

    Raises:
        UnknownNameError: an unsupported class or an unknown option.
        ConfigError: a grid option, or a configuration diffusers refuses.
    """
    if isinstance(scheduler_class, str) and scheduler_class not in SUPPORTED:
        raise UnknownNameError("diffusers scheduler class for as_sampler", scheduler_class, SUPPORTED)
    cls = _scheduler_class(scheduler_class)
    traits = _traits(cls)
    if config:  # diffusers' own defaults need no check (and building some classes takes a second)
        check_options(cls, **config)
    defaults = {**scheduler_options(cls), **config}

    def sampler(denoiser: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Any = None,
                generator: Any = None, callback: Callback | None = None, noise_sampler: NoiseSampler | None = None,
                **options: Any) -> torch.Tensor:
        scheduler = check_options(cls, **{**config, **options})  # a fresh scheduler for every call
        return _run(cls, traits, scheduler, {**defaults, **options}, denoiser, x, sigmas, cond, generator, callback,
                    noise_sampler)

    parameter = inspect.Parameter
    params = [parameter(n, parameter.POSITIONAL_OR_KEYWORD) for n in ("denoiser", "x", "sigmas")]
    params += [parameter(n, parameter.KEYWORD_ONLY, default=None) for n in ("cond", "generator", "callback", "noise_sampler")]
    params += [parameter(n, parameter.KEYWORD_ONLY, default=v) for n, v in defaults.items()]
    sampler.__signature__ = inspect.Signature(params, return_annotation=torch.Tensor)  # type: ignore[attr-defined]
    sampler.__name__ = sampler.__qualname__ = f"diffusers_{cls.__name__}"
    sampler.__doc__ = (f"diffusers' {cls.__name__} as a diffkit sampler (stepping along the given σ grid).\n\n"
                       f"Options: its config keys and step keywords, defaults {dict(defaults)}.")

    def check(**options: Any) -> None:
        check_options(cls, **options)

    check.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [parameter(n, parameter.KEYWORD_ONLY, default=v) for n, v in defaults.items()])
    sampler.check = check  # type: ignore[attr-defined]
    sampler.scheduler_class = cls  # type: ignore[attr-defined]
    return sampler
