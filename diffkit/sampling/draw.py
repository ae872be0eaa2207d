"""``diffkit.sample``: draw the noise, pick the σ grid, run a sampler, return x0.

Every argument is checked before the first tensor is allocated (shape, dtype, device, seed,
callback, schedule, sampler and its options, the σ grid, and whether the noise fits in the
device's memory), so a bad value costs nothing. What the sampler returns is checked too: a
non-tensor, a tensor of another shape than x, or one holding NaN/±inf is an error naming the
sampler (and the plugin it came from), never a result. That check reads one value back to
the host, once per call, after the last step.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from diffkit import registry
from diffkit.errors import ConfigError, InsufficientMemoryError, NonFiniteError, ShapeError, check_choice
from diffkit.io.state_dicts import available_devices, check_device
from diffkit.samplers.common import Callback, Generator, as_generator, check_flag, is_integer, randn_like
from diffkit.sampling.paths import START_NOISE, check_noise, path_form_of, start_sample
from diffkit.schedules.base import DiscreteSchedule
from diffkit.schedules.spacings import user_sigmas

# The recommended default (docs/benchmarks.md, "Accuracy against NFE"): UniPC is the most
# accurate built-in at 5–50 NFE on the benchmark data, with diffusers' identical solver. The
# default spacing is the schedules' own (diffkit.schedules.DEFAULT_SPACING, `trailing`).
DEFAULT_SAMPLER = "unipc"


def sample(
    denoiser: Callable[..., torch.Tensor],
    shape: Sequence[int],
    *,
    sampler: str | Callable[..., torch.Tensor] = DEFAULT_SAMPLER,
    schedule: str | DiscreteSchedule | None = None,
    steps: int | None = None,
    spacing: str | None = None,
    spacing_options: Mapping[str, Any] | None = None,
    steps_offset: int | None = None,
    sigmas: torch.Tensor | Sequence[float] | None = None,
    timesteps: torch.Tensor | Sequence[int] | None = None,
    generator: Generator = None,
    cond: Any = None,
    callback: Callback | None = None,
    sampler_options: Mapping[str, Any] | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    check_finite: bool = True,
    noise: torch.Tensor | None = None,
    start_noise: str = "sigma",
    init: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sample ``shape`` from ``denoiser`` with ``sampler`` on a σ grid.

    The grid comes from exactly one of ``steps`` (with ``spacing``), ``sigmas`` or
    ``timesteps``.

    Args:
        denoiser: ``D(x, sigma[B], cond) -> x0 estimate`` (e.g. a :class:`~diffkit.sampling.denoisers.VPDenoiser`).
        shape: the output shape ``[B, ...]``.
        sampler: a registered sampler name or a function with the sampler contract
            (default :data:`DEFAULT_SAMPLER`, ``"unipc"``).
        schedule: a registered schedule name (default config) or a schedule object; needed
            with ``steps`` and ``timesteps``, not with ``sigmas``.
        steps: number of sampler steps: 1..T for timestep spacings, 1 … 100 000 for σ spacings.
        spacing: a name in :data:`diffkit.schedules.SPACINGS` (default ``"trailing"``):
            ``leading``/``trailing``/``linspace`` or ``karras``/``exponential``/``logsnr_uniform``.
        spacing_options: the spacing's options, e.g. ``{"rho": 5.0}`` or
            ``{"sigma_min": 0.03, "sigma_max": 14.6}`` (see ``schedule.sigmas_for``).
        steps_offset: added to ``leading`` timesteps (1 for Stable Diffusion).
        sigmas: the noise levels themselves: finite, strictly decreasing, ≥ 0; a final 0 is
            appended when the last value is positive.
        timesteps: training timesteps (strictly decreasing, in 0..T−1); σ from the schedule's
            table, then 0.
        generator: one ``torch.Generator``, a list with one per sample so that each sample
            is independent of the batch size, or an integer seed in 0 … 2**64 − 1 (a fresh
            CPU generator; see :func:`~diffkit.samplers.common.as_generator`).
        sampler_options: keyword options for the sampler (e.g. ``{"eta": 1.0}``).
        dtype: a floating-point dtype for the samples (an integer dtype is an error).
        device: where to sample: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` … (None: torch's default
            device); a device this machine lacks, or ``"meta"``, is an error listing those it has.
        check_finite: test the samples for NaN/±inf after the last step (default). The test
            waits for the device once per call (a sync on CUDA, never one per step); pass
            False only where a caller must not wait and checks the result itself.
        noise: the unit Gaussian noise z of the start, of ``shape`` (default: drawn from
            ``generator``), so that runs can start from the same point; stochastic samplers
            still draw their later noise from ``generator``.
        start_noise: how z becomes the start y_0 at σ_0 (:mod:`diffkit.sampling.paths`):
            ``"sigma"`` (default, y_0 = σ_0·z) or ``"path"`` (z is the sample x_T of the
            schedule's noise path, as diffusers pipelines read ``latents=``).
        init: clean samples x0 of ``shape`` to start from instead of pure noise (SDEdit, Meng et
            al. 2022): y_0 = x0 + σ_0·z, the noised x0 at the grid's first level — what
            diffusers' img2img pipelines make with their scheduler's ``add_noise`` or
            ``scale_noise``. The grid then usually starts below σ_max (a tail of the full grid:
            ``Pipeline.sample(image=, strength=)`` picks it); needs ``start_noise="sigma"``.

    Returns:
        The samples, a tensor of ``shape`` in ``dtype`` on ``device``, all finite.

    Raises:
        ConfigError: a bad argument (before any work), or
            :class:`~diffkit.errors.InsufficientMemoryError` when the samples cannot fit in
            the device's memory (refused up front when even the sampler's state would not
            fit, or when the allocator gives up during sampling).
        ShapeError: the sampler returned something other than a tensor shaped like x.
        NonFiniteError: the samples hold NaN or ±inf (a diverging denoiser or sampler).
    """
    shape = check_shape(shape)
    dtype = _check_dtype(dtype)
    device = resolve_sample_device(device)
    generator = as_generator(generator)
    if isinstance(generator, list) and len(generator) != shape[0]:
        raise ConfigError(f"got {len(generator)} generators for a batch of {shape[0]}; pass one per sample")
    if callback is not None and not callable(callback):
        raise ConfigError(f"callback must be a function taking the step's dict, or None; got {callback!r}")
    check_denoiser(denoiser)
    check_flag("check_finite", check_finite)
    check_choice("start_noise", start_noise, START_NOISE)
    if noise is not None:
        check_noise(noise, shape)
    if init is not None:
        check_noise(init, shape, what="init", meaning="clean samples x0")
        if start_noise != "sigma":
            raise ConfigError(f"init= starts from x0 + σ_0·z; start_noise={start_noise!r} does not apply (leave it 'sigma')")
    if isinstance(schedule, str):
        schedule = registry.build("schedule", schedule)
    if sampler_options is not None and not isinstance(sampler_options, Mapping):
        raise ConfigError(
            f"sampler_options must be a mapping of option names to values, got {type(sampler_options).__name__}"
        )
    options = dict(sampler_options or {})
    if isinstance(sampler, str):
        sampler_fn = registry.build("sampler", sampler, **options)
    elif callable(sampler):
        sampler_fn = _bind(sampler, options) if options else sampler
    else:
        raise ConfigError(f"sampler must be a registered sampler name or a sampler function, got {sampler!r}")
    grid = sigma_grid(
        schedule, steps=steps, spacing=spacing, spacing_options=spacing_options,
        steps_offset=steps_offset, sigmas=sigmas, timesteps=timesteps,
    )
    if start_noise == "path" and schedule is None:
        raise ConfigError("start_noise='path' reads the noise as a sample of the schedule's path: pass schedule=")
    check_sample_memory(shape, dtype, device)
    with named_memory_errors(shape, device):
        if noise is None:
            z = randn_like(torch.empty(shape, dtype=dtype, device=device), generator)
        else:
            z = noise.to(device=device, dtype=dtype)
        if init is None:
            x = start_sample(z, float(grid[0]), start_noise, path_form_of(schedule))
        else:
            x = init.to(device=device, dtype=dtype) + float(grid[0]) * z  # SDEdit: x0 noised to σ_0
        result = sampler_fn(denoiser, x, grid, cond=cond, generator=generator, callback=callback)
    return check_samples(result, shape, source=describe_sampler(sampler), finite=check_finite)


# -- the checks before sampling ------------------------------------------------------------------

# Every sampler holds at least three tensors shaped like the samples at once: the current x,
# the denoiser's estimate and the step's result (multistep solvers keep more, the network's
# activations come on top). If even these do not fit, sampling cannot work.
SAMPLER_STATE_COPIES = 3


def check_shape(shape: Any, *, what: str = "shape") -> tuple[int, ...]:
    """``shape`` ([B, ...]) as a tuple of ints ≥ 1, or a :class:`ConfigError` naming it."""
    sequence = isinstance(shape, (Sequence, torch.Size)) and not isinstance(shape, (str, bytes))
    if not sequence or not shape or not all(is_integer(n) and n >= 1 for n in shape):
        shown = repr(shape) if len(repr(shape)) <= 60 else repr(shape)[:59] + "…"
        raise ConfigError(f"{what} must be a non-empty sequence of positive sizes (integers ≥ 1, such as (4, 3, 32, 32)); got {shown}")
    return tuple(int(n) for n in shape)


def _check_dtype(dtype: Any) -> torch.dtype:
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ConfigError(
            f"dtype must be a floating-point torch.dtype for the samples (torch.float32, torch.float64, "
            f"torch.float16 or torch.bfloat16), got {dtype!r}; an integer dtype would round the noise away"
        )
    return dtype


def resolve_sample_device(device: Any) -> torch.device:
    """Where to sample: ``device`` checked against this machine (None: torch's default device).

    The meta device is refused (it holds no values); a device this build or machine lacks
    (``"cuda"`` on a CPU-only build, ``"cuda:1"`` with one GPU, ``"mps"``, a misspelt name) is
    a :class:`ConfigError` listing the devices there are (:func:`diffkit.io.state_dicts.check_device`).
    """
    if device is None:
        device = torch.get_default_device()
    if isinstance(device, (str, torch.device)) and str(device).split(":")[0] == "meta":
        raise ConfigError(
            f"device {str(device)!r} holds shapes but no values, so nothing can be sampled on it "
            f"(available: {', '.join(available_devices())})"
        )
    return check_device(device, what="device")


def check_denoiser(denoiser: Any) -> None:
    """The denoiser must be callable, and a module's weights must hold values (not the meta device)."""
    if not callable(denoiser):
        raise ConfigError(f"denoiser must be a function D(x, sigma, cond) or a module, got {type(denoiser).__name__}")
    if isinstance(denoiser, nn.Module):
        for name, tensor in [*denoiser.named_parameters(), *denoiser.named_buffers()]:
            if tensor.is_meta:
                raise ConfigError(
                    f"the denoiser's {name} is on the meta device (built without values); load its weights or "
                    "move it to a real device (module.to_empty(device=...) then load a state dict) before sampling"
                )


def available_memory(device: torch.device) -> int | None:
    """Bytes that a new tensor on ``device`` can take now, or None where it cannot be told.

    CUDA: the driver's free memory plus what torch's caching allocator holds unused. CPU: the
    kernel's MemAvailable (/proc/meminfo), else the physical memory.
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def _bytes(count: float) -> str:
    """A byte count in decimal units, three significant digits: ``25.6 GB``."""
    units = ("B", "KB", "MB", "GB", "TB", "PB")
    step = 0
    while count >= 1000 and step < len(units) - 1:
        count, step = count / 1000, step + 1
    return f"{int(count)} B" if step == 0 else f"{count:.3g} {units[step]}"


def check_sample_memory(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> None:
    """Refuse, before allocating, samples whose sampler state cannot fit in ``device``'s memory.

    The estimate is a floor: :data:`SAMPLER_STATE_COPIES` tensors of ``shape`` in ``dtype``.
    Raises :class:`~diffkit.errors.InsufficientMemoryError` (a ``ConfigError``) saying how much
    that is and how much is available; where the free memory cannot be told, nothing is checked.
    """
    one = math.prod(shape) * torch.empty((), dtype=dtype, device="meta").element_size()
    needed = SAMPLER_STATE_COPIES * one
    available = available_memory(device)
    if available is not None and needed > available:
        raise InsufficientMemoryError(
            f"sampling n={shape[0]} samples of shape {tuple(shape[1:])} in {str(dtype).removeprefix('torch.')} needs at "
            f"least {_bytes(needed)} on {device} ({SAMPLER_STATE_COPIES} tensors of {_bytes(one)}: the noisy samples, "
            f"the denoised estimate and the next step), but {_bytes(available)} is available; use a smaller n "
            "and sample in several calls"
        )


@contextlib.contextmanager
def named_memory_errors(shape: Sequence[int], device: torch.device) -> Iterator[None]:
    """Turn the allocator giving up inside the block into an :class:`InsufficientMemoryError`."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError) as exc:
        raise _out_of_memory(shape, device, exc) from exc
    except RuntimeError as exc:
        text = str(exc)
        if "can't allocate memory" not in text and "out of memory" not in text.lower():
            raise
        raise _out_of_memory(shape, device, exc) from exc


def _out_of_memory(shape: Sequence[int], device: torch.device, exc: BaseException) -> InsufficientMemoryError:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return InsufficientMemoryError(
        f"sampling n={shape[0]} samples of shape {tuple(shape[1:])} ran out of memory on {device} ({reason}); "
        "use a smaller n and sample in several calls"
    )


# -- the check after sampling --------------------------------------------------------------------


def describe_sampler(sampler: Any) -> str:
    """``sampler 'name' (plugin)`` for a registered name, ``sampler module.function`` for a function."""
    if isinstance(sampler, str):
        try:
            origin = registry.get_entry("sampler", sampler).origin
        except Exception:  # noqa: BLE001 (a message must never fail)
            return f"sampler {sampler!r}"
        return f"sampler {sampler!r} ({'built in' if origin.builtin else 'plugin ' + origin.describe()})"
    fn = sampler.func if isinstance(sampler, functools.partial) else sampler
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    module = getattr(fn, "__module__", None)
    return f"sampler {module}.{name}" if module else f"sampler {name}"


SAMPLER_DIVERGED = "the denoiser (weights holding NaN, an extreme guidance scale) or the sampler diverged"


def check_samples(
    samples: Any, shape: Sequence[int] | None, *, source: str, finite: bool = True, cause: str = SAMPLER_DIVERGED
) -> torch.Tensor:
    """``samples`` when they are a floating tensor of ``shape`` (None: any) holding only finite values.

    Otherwise a :class:`ShapeError` (not a tensor, another shape or dtype, the meta device) or a
    :class:`NonFiniteError` counting the NaN and ±inf values, each naming ``source`` (and, for
    non-finite values, the likely ``cause``). The finiteness test (skipped with
    ``finite=False``) is one read from the device; the counts are taken only on failure.
    """
    expected = "" if shape is None else f" of shape {tuple(shape)}"
    if not isinstance(samples, torch.Tensor):
        raise ShapeError(f"{source} returned a {type(samples).__name__}, not a tensor{expected}")
    if shape is not None and tuple(samples.shape) != tuple(shape):
        raise ShapeError(
            f"{source} returned shape {tuple(samples.shape)}, expected {tuple(shape)} (the shape of the noise it was given)"
        )
    if not samples.is_floating_point():
        raise ShapeError(f"{source} returned a tensor of dtype {str(samples.dtype).removeprefix('torch.')}, not floating point")
    if samples.is_meta:
        raise ShapeError(f"{source} returned a tensor on the meta device, which holds no values")
    if finite and not bool(torch.isfinite(samples).all()):  # the one device→host read of a sampling run
        nan, inf = int(torch.isnan(samples).sum()), int(torch.isinf(samples).sum())
        raise NonFiniteError(
            f"{source} returned {nan + inf} non-finite values of {samples.numel()} ({nan} NaN, {inf} ±inf); {cause}, "
            "so nothing is returned"
        )
    return samples


def sigma_grid(
    schedule: DiscreteSchedule | None, *, steps: int | None = None, spacing: str | None = None,
    spacing_options: Mapping[str, Any] | None = None, steps_offset: int | None = None, sigmas: Any = None,
    timesteps: Any = None,
) -> torch.Tensor:
    """The float64 CPU σ grid [N + 1] ``sample`` runs on, from exactly one of steps / sigmas / timesteps."""
    sources = {"steps": steps, "sigmas": sigmas, "timesteps": timesteps}
    given = [name for name, value in sources.items() if value is not None]
    if len(given) != 1:
        got = f"got {' and '.join(given)}" if given else "got none"
        raise ConfigError(f"pass exactly one of steps= (with spacing=), sigmas= or timesteps=; {got}")
    spacing_args = {"spacing": spacing, "spacing_options": spacing_options, "steps_offset": steps_offset}
    stray = [name for name, value in spacing_args.items() if value is not None]
    if given[0] != "steps" and stray:
        raise ConfigError(
            f"{', '.join(stray)} only apply with steps=; {given[0]}= already gives every noise level"
        )
    if given[0] == "sigmas":
        return user_sigmas(sigmas)
    if schedule is None:
        raise ConfigError(f"{given[0]}= needs a schedule (a name such as 'linear' or a schedule object)")
    if not (hasattr(schedule, "sigmas_for") and hasattr(schedule, "sigmas_from_timesteps")):
        raise ConfigError(
            f"schedule must be a registered schedule name (such as 'linear') or a schedule object, got "
            f"{type(schedule).__name__}"
        )
    if given[0] == "timesteps":
        return schedule.sigmas_from_timesteps(timesteps)
    if spacing_options is not None and not isinstance(spacing_options, Mapping):
        raise ConfigError(
            f"spacing_options must be a mapping of option names to values, got {type(spacing_options).__name__}"
        )
    kwargs = dict(spacing_options or {})
    if steps_offset is not None:
        if "steps_offset" in kwargs:
            raise ConfigError("steps_offset is given twice: as steps_offset= and in spacing_options")
        kwargs["steps_offset"] = steps_offset
    if spacing is None:  # the schedule's own default: DEFAULT_SPACING on a VP table, "uniform" in t on flow
        return schedule.sigmas_for(steps, **kwargs)
    return schedule.sigmas_for(steps, spacing, **kwargs)


def _bind(fn: Callable[..., Any], options: dict[str, Any]) -> Callable[..., Any]:
    def bound(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs, **options)

    return bound
