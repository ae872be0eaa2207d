"""``diffkit.Pipeline``: a backbone, schedule, sampler, conditioner and autoencoder composed in code.

    pipe = diffkit.Pipeline(
        backbone=("unet", {"sample_size": 8, "in_channels": 1, "out_channels": 1, "num_classes": 10}),
        schedule="cosine", sampler="unipc",
        conditioner=("class_label", {"num_classes": 10, "drop_prob": 0.1}),
        parameterization="v",
    )
    loss, parts = pipe.loss(images, labels, generator=g)        # training
    images = pipe.sample(16, cond=labels, steps=20, guidance=3.0, generator=0)

Each component is given as a registry name (default config), a ``(name, config)`` pair, or an
object. The pipeline is an ``nn.Module`` whose submodules are the backbone, the conditioner
and the autoencoder, so ``.to(device)``, ``state_dict`` and optimizers see all of them.
:meth:`Pipeline.save` writes a folder (``pipeline.json`` naming each component's registry
entry, config and plugin, plus one component folder each); :func:`diffkit.load_pretrained`
reads it back, and names the plugin to install when a component's entry is missing.

Sampling works in the backbone's space: x ~ N(0, σ_max²) of ``sample_shape`` per image,
integrated by the sampler through the parameterization adapter (:mod:`diffkit.sampling.denoisers`),
with classifier-free guidance (:class:`diffkit.CFGDenoiser`) batching [cond; uncond] in
one forward; latents are decoded by the autoencoder when there is one.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from diffkit import registry
from diffkit.errors import (
    CheckpointError,
    ConfigError,
    DiffkitError,
    OutputError,
    ShapeError,
    UnknownNameError,
    check_choice,
)
from diffkit.io.atomic import fsync_dir, make_folder, write_atomic
from diffkit.io.components import entry_for_config, load_component, save_pretrained
from diffkit.io.files import read_json_object
from diffkit.io.records import check_numbers, check_record, naming_errors, short
from diffkit.io.state_dicts import check_device, check_dtype
from diffkit.models.backbones.sizes import MAX_SIDE, pixel_factor, sample_shape_at, spacing_options_at
from diffkit.models.conditioners.concat import ConcatConditioner
from diffkit.runtime.precision import BF16Network, bf16_enabled
from diffkit.samplers.common import Callback, as_generator, is_integer
from diffkit.sampling.denoisers import ClampedDenoiser, FlowDenoiser, VPDenoiser, check_x0_bound
from diffkit.sampling.draw import check_sample_memory, check_samples, named_memory_errors, sigma_grid
from diffkit.sampling.draw import sample as run_sampler
from diffkit.sampling.guidance import CFGDenoiser, check_guidance_rescale, check_guidance_scale
from diffkit.sampling.img2img import check_image, check_strength, steps_run
from diffkit.sampling.paths import START_NOISE, check_noise
from diffkit.schedules.base import DiscreteSchedule
from diffkit.schedules.flow import FlowSchedule
from diffkit.schedules.spacings import user_sigmas
from diffkit.training.objectives import FLOW, PARAMETERIZATIONS, Objective, diffusion_loss

PIPELINE_FILE = "pipeline.json"  # what makes a folder a saved pipeline

PIPELINE_FORMAT_VERSION = 1
ComponentSpec = Any  # a registry name, a (name, config) pair, or an object
COMPONENT_KINDS = ("backbone", "conditioner", "autoencoder")  # the modules of a pipeline, in save order
MAX_DEFAULT_STEPS = 10_000


def _build(kind: str, spec: ComponentSpec) -> Any:
    """A component from a name, a (name, config mapping) pair, or the object itself."""
    if isinstance(spec, str):
        return registry.build(kind, spec)
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], Mapping):
        return registry.build(kind, spec[0], **dict(spec[1]))
    if kind != "schedule" and not isinstance(spec, nn.Module):  # the schedule is checked by its type
        raise ConfigError(
            f"{kind} must be a registered {kind} name, a (name, config mapping) pair or the module itself, "
            f"got {short(spec)}; registered: {', '.join(registry.names(kind))}"
        )
    return spec


def _check_sample_shape(value: Any) -> tuple[int, ...]:
    """A non-empty sequence of integers in 1 … MAX_SIDE, as a tuple."""
    sequence = isinstance(value, Sequence) and not isinstance(value, (str, bytes))
    if not sequence or not value or not all(
        is_integer(n) and 1 <= n <= MAX_SIDE for n in value
    ):
        raise ConfigError(
            f"sample_shape must be a list of integers (C, H, W), each in 1 … {MAX_SIDE}, got {short(value)}"
        )
    return tuple(int(n) for n in value)


def _check_sampler(name: Any, options: Mapping[str, Any] | None) -> tuple[str, dict[str, Any]]:
    """The sampler's name and options, checked now: an unknown name or option names the valid ones."""
    if not isinstance(name, str):
        raise ConfigError(f"sampler must be a registered sampler name, got {short(name)}")
    if options is not None and not isinstance(options, Mapping):
        raise ConfigError(f"sampler_options must be a mapping of option names to values, got {short(options)}")
    options = dict(options or {})
    bad = [key for key in options if not isinstance(key, str)]
    if bad:
        raise ConfigError(f"sampler_options keys must be option names (strings), got {short(bad)}")
    registry.build("sampler", name, **options)  # unknown names and options fail now, with close matches
    return name, options


class Pipeline(nn.Module):
    """A trainable and samplable composition of registered components.

    Args:
        backbone: the network ``F(x_t, t, cond)`` (kind ``"backbone"``).
        schedule: the training noise schedule (kind ``"schedule"``; default ``"linear"``, or
            ``"flow"`` when ``parameterization="flow"``).
        sampler: the default sampler name (kind ``"sampler"``) and ``sampler_options``.
        conditioner: turns user inputs (labels, prompts, images) into the backbone's
            :class:`~diffkit.models.conditioners.Conditioning` (kind ``"conditioner"``); None for an
            unconditional model.
        autoencoder: maps images to the latents the backbone works on (kind ``"autoencoder"``);
            None for pixel-space models. It is frozen: not trained by :meth:`loss`.
        parameterization: what the backbone predicts: ``"eps"``, ``"x0"`` or ``"v"`` on a VP
            schedule, or ``"flow"``: a flow-matching velocity ε − x0 on the ``flow`` schedule,
            trained by :mod:`diffkit.training.flow_objective` and sampled through
            :class:`~diffkit.sampling.denoisers.FlowDenoiser`.
        objective: training options (:class:`~diffkit.training.objectives.Objective`) other
            than the prediction target, which ``parameterization`` sets.
        sample_shape: (C, H, W) of one sample in the backbone's space (the latent shape when
            there is an autoencoder); read from the backbone's config (``in_channels`` less
            the channels a concat conditioner adds, and ``sample_size``/``input_size``) when not
            given, and checked against it when the backbone declares these.
        default_steps: sampler steps when :meth:`sample` is given none (1 … 10000).
        default_guidance: the recommended classifier-free guidance scale (0 … 1000, 1 = none; see
            :func:`diffkit.sampling.guidance.check_guidance_scale`), saved with the pipeline so that the
            scale it was judged at travels with it. For a backbone with ``embedded_guidance``
            (a guidance-distilled model such as Flux-dev) the scale is the network's input.
        spacing, spacing_options: the default σ grid of :meth:`sample` (a registered spacing and
            its options; None: the schedule's default). A pipeline loaded from a diffusers folder
            gets the grid of the folder's scheduler (spacing ``"diffusers"``).
        start_noise: how :meth:`sample` turns unit noise z into the start
            (:mod:`diffkit.sampling.paths`): ``"sigma"`` (y_0 = σ_0·z) or ``"path"`` (z is x_T on
            the schedule's noise path, as diffusers pipelines read ``latents=``).
        clip_x0: clamp the x0 estimate (after guidance) to [−clip_x0, clip_x0] while sampling
            (diffusers' ``clip_sample`` with ``clip_sample_range``; pixel-space models in [−1, 1]).
            None: no clamp.
    """

    def __init__(
        self,
        *,
        backbone: ComponentSpec,
        schedule: ComponentSpec | None = None,
        sampler: str = "unipc",
        sampler_options: Mapping[str, Any] | None = None,
        conditioner: ComponentSpec | None = None,
        autoencoder: ComponentSpec | None = None,
        parameterization: str = "eps",
        objective: Objective | Mapping[str, Any] | None = None,
        sample_shape: Sequence[int] | None = None,
        default_steps: int = 25,
        default_guidance: float = 1.0,
        spacing: str | None = None,
        spacing_options: Mapping[str, Any] | None = None,
        start_noise: str = "sigma",
        clip_x0: float | None = None,
    ) -> None:
        super().__init__()
        self.backbone = _build("backbone", backbone)
        self.conditioner = None if conditioner is None else _build("conditioner", conditioner)
        self.autoencoder = None if autoencoder is None else _build("autoencoder", autoencoder)
        if self.autoencoder is not None:
            self.autoencoder.requires_grad_(False).eval()
        self.parameterization = check_choice("parameterization", parameterization, PARAMETERIZATIONS)
        flow = self.parameterization == FLOW
        if schedule is None:
            schedule = "flow" if flow else "linear"
        self.schedule: DiscreteSchedule | FlowSchedule = _build("schedule", schedule)
        if not isinstance(self.schedule, (DiscreteSchedule, FlowSchedule)):
            raise ConfigError(f"schedule must be a registered schedule, got {type(self.schedule).__name__}")
        if flow != isinstance(self.schedule, FlowSchedule):
            raise ConfigError(
                f"parameterization={self.parameterization!r} does not fit the {type(self.schedule).__name__}: "
                "parameterization='flow' goes with the 'flow' schedule, and a flow schedule with "
                "parameterization='flow' ('eps', 'x0' and 'v' go with VP schedules such as 'linear' or 'cosine')"
            )
        self.sampler, self.sampler_options = _check_sampler(sampler, sampler_options)
        if objective is not None and not isinstance(objective, (Objective, Mapping)):
            raise ConfigError(f"objective must be an Objective, a mapping of its options or None, got {short(objective)}")
        if isinstance(objective, Mapping):
            valid = [field.name for field in attrs.fields(Objective)]
            for key in objective:
                if key not in valid:
                    raise UnknownNameError("objective option", key, valid)
            objective = Objective(**{"prediction": parameterization, **objective})
        self.objective = objective or Objective(prediction=parameterization)
        if self.objective.prediction != parameterization:
            raise ConfigError(
                f"objective.prediction={self.objective.prediction!r} differs from parameterization={parameterization!r}"
            )
        self.sample_shape = (
            self._shape_from_backbone() if sample_shape is None else _check_sample_shape(sample_shape)
        )
        self._check_shape_fits()
        if not is_integer(default_steps) or not 1 <= default_steps <= MAX_DEFAULT_STEPS:
            raise ConfigError(f"default_steps must be an integer in 1 … {MAX_DEFAULT_STEPS}, got {short(default_steps)}")
        self.default_steps = int(default_steps)
        self.default_guidance = check_guidance_scale(default_guidance, what="default_guidance")
        self.spacing, self.spacing_options = self._check_spacing(spacing, spacing_options)
        self.start_noise = check_choice("start_noise", start_noise, START_NOISE)
        self.clip_x0 = None if clip_x0 is None else check_x0_bound(clip_x0)
        self._check_classes()
        out_channels = getattr(getattr(self.backbone, "config", None), "out_channels", self.sample_shape[0])
        self.learned_variance = out_channels == 2 * self.sample_shape[0]
        if flow and self.learned_variance:
            raise ConfigError(
                f"the backbone has out_channels={out_channels}, twice the {self.sample_shape[0]} sample channel(s): a "
                "learned variance, which a flow model does not have; give it out_channels = in_channels"
            )

    def _check_spacing(
        self, spacing: Any, options: Mapping[str, Any] | None
    ) -> tuple[str | None, dict[str, Any]]:
        """The default grid, checked now by placing it once for ``default_steps``."""
        if spacing is not None and not isinstance(spacing, str):
            raise ConfigError(f"spacing must be a registered spacing name or None, got {short(spacing)}")
        if options is not None and not isinstance(options, Mapping):
            raise ConfigError(f"spacing_options must be a mapping of option names to values, got {short(options)}")
        options = dict(options or {})
        if spacing is None:
            if options:
                raise ConfigError("spacing_options needs spacing= (the options belong to a named spacing)")
            return None, {}  # the schedule's own grid (a dynamic flow shift takes its μ at sample time)
        with torch.device("cpu"):  # a host table, also when the pipeline is built on the meta device
            sigma_grid(self.schedule, steps=self.default_steps, spacing=spacing, spacing_options=options)
        return spacing, options

    @property
    def embedded_guidance(self) -> bool:
        """True when the backbone takes the guidance scale as an input (guidance-distilled, e.g. Flux-dev)."""
        return bool(getattr(self.backbone, "embedded_guidance", False))

    def _check_classes(self) -> None:
        """The conditioner's null class must be the backbone's null class."""
        ours = getattr(getattr(self.conditioner, "config", None), "num_classes", None)
        theirs = getattr(getattr(self.backbone, "config", None), "num_classes", None)
        if ours is not None and theirs and ours != theirs:
            raise ConfigError(
                f"the conditioner has num_classes={ours} but the backbone {theirs}: the null class "
                f"(label {ours}) would be a real class of the backbone, or a label out of its table"
            )

    def train(self, mode: bool = True) -> Pipeline:
        """Train mode for backbone and conditioner; the frozen autoencoder stays in eval mode."""
        super().train(mode)
        if self.autoencoder is not None:
            self.autoencoder.eval()
        return self

    def _declared_shape(self) -> tuple[int, int, int] | None:
        """(C, H, W) the backbone's config declares, less the channels a concat conditioner adds."""
        config = getattr(self.backbone, "config", None)
        size = getattr(config, "sample_size", None) or getattr(config, "input_size", None)
        channels = getattr(config, "in_channels", None)
        if not isinstance(size, int) or not isinstance(channels, int):
            return None
        return channels - self._concat_channels(), size, size

    def _concat_channels(self) -> int:
        """Channels the conditioner concatenates to x before the backbone's first layer (0: none)."""
        if not isinstance(self.conditioner, ConcatConditioner):
            return 0
        readable = getattr(self.backbone, "readable_conditioning", None)
        fields = readable() if callable(readable) else {"concat"}
        if "concat" not in fields:
            raise ConfigError(
                f"this {type(self.backbone).__name__} cannot use the conditioning's concat: it reads "
                f"{', '.join(sorted(fields)) or 'no conditioning'}; use a backbone with input channels for it (unet, "
                "latent_unet)"
            )
        return self.conditioner.config.channels

    def _shape_from_backbone(self) -> tuple[int, int, int]:
        declared = self._declared_shape()
        if declared is None:
            raise ConfigError(
                f"cannot read the sample shape from a {type(self.backbone).__name__}: pass sample_shape=(C, H, W)"
            )
        return declared

    def _check_shape_fits(self) -> None:
        """sample_shape must be what the backbone declares it takes (and the autoencoder's latents)."""
        declared = self._declared_shape()
        if declared is not None and self.sample_shape != declared:
            concat = self._concat_channels()
            channels = f"in_channels {declared[0] + concat}" + (f" less the {concat} concat channel(s)" if concat else "")
            raise ConfigError(
                f"sample_shape {self.sample_shape} does not fit the {type(self.backbone).__name__} backbone: it takes "
                f"(C, H, W) = {declared} ({channels}, size {declared[1]}); valid: sample_shape={declared}"
            )
        latent = getattr(getattr(self.autoencoder, "config", None), "latent_channels", None)
        if isinstance(latent, int) and self.sample_shape[0] != latent:
            raise ConfigError(
                f"sample_shape {self.sample_shape} has {self.sample_shape[0]} channel(s), but the autoencoder makes "
                f"latents of {latent} channel(s): the shape is the latent shape"
            )

    def to(self, *args: Any, **kwargs: Any) -> Pipeline:
        """``nn.Module.to``, with a device this machine lacks or a non-floating dtype a :class:`ConfigError`."""
        try:
            device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        except (TypeError, RuntimeError) as exc:
            raise ConfigError(f"Pipeline.to got {args or ''}{kwargs or ''}: {exc}") from exc
        check_device(device, allow_meta=True)
        check_dtype(dtype)
        return super().to(*args, **kwargs)

    # -- conditioning ----------------------------------------------------------------------

    def condition(
        self, inputs: Any, *, force_drop: Any = None, generator: torch.Generator | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> Any:
        """The backbone's conditioning record for user ``inputs`` (None without a conditioner).

        ``image_size`` (height, width) in pixels: the size the record is for, where the
        conditioning depends on it (SDXL's time ids; :meth:`Conditioner.for_image_size`); None:
        the pipeline's own.
        """
        if self.conditioner is None:
            if inputs is not None:
                raise ConfigError("this pipeline has no conditioner: pass cond=None")
            return None
        if inputs is None:
            raise ConfigError(
                f"this pipeline is conditioned by a {type(self.conditioner).__name__}: pass cond= "
                "(e.g. class labels or prompts)"
            )
        conditioner = self.conditioner
        if image_size is not None and callable(getattr(conditioner, "for_image_size", None)):
            conditioner = conditioner.for_image_size(*image_size)
        record = conditioner(inputs, force_drop=force_drop, generator=generator)
        return self._on_backbone_device(record)

    def _image_channels(self) -> int | None:
        """C of the pipeline's images: the autoencoder's input channels, or the samples' own."""
        if self.autoencoder is None:
            return self.sample_shape[0]
        channels = getattr(getattr(self.autoencoder, "config", None), "in_channels", None)
        return channels if isinstance(channels, int) else None

    @staticmethod
    def _image_size(image: torch.Tensor, height: Any, width: Any) -> tuple[int, int]:
        """An img2img run samples at its images' size; ``height``/``width`` may only repeat it."""
        size = int(image.shape[-2]), int(image.shape[-1])
        if (height is not None and height != size[0]) or (width is not None and width != size[1]):
            raise ConfigError(
                f"image= sets the size ({size[0]}×{size[1]} pixels); height={height}, width={width} contradict it "
                "(resize the images instead)"
            )
        return size

    def _backbone_device(self) -> torch.device | None:
        """Where the backbone's weights are (None for a backbone without parameters)."""
        return next((p.device for p in self.backbone.parameters()), None)

    def _on_backbone_device(self, record: Any) -> Any:
        """The record moved where the backbone computes (asynchronously from the host)."""
        device = self._backbone_device()
        tensors = record.as_dict().values() if hasattr(record, "as_dict") else ()
        if device is None or all(t.device == device for t in tensors):
            return record
        return record.to(device, non_blocking=device.type == "cuda")

    # -- training --------------------------------------------------------------------------

    def encode_images(self, images: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images [B, C, H, W] in [−1, 1] → the backbone's space (latents when there is an autoencoder)."""
        if self.autoencoder is None:
            return images
        weight = next(self.autoencoder.parameters(), None)
        if weight is not None and weight.is_floating_point() and images.dtype != weight.dtype:
            images = images.to(weight.dtype)  # a half-precision autoencoder takes its own dtype
        with torch.no_grad():
            return self.autoencoder.encode_latents(images, generator=generator)

    def loss(
        self,
        x0: torch.Tensor,
        cond: Any = None,
        *,
        generator: torch.Generator | None = None,
        encoded: bool = False,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss on clean data x0 [B, …] and its conditioning inputs.

        ``x0`` are images (encoded by the autoencoder first) unless ``encoded=True``
        (pre-encoded latents). In training mode the conditioner drops conditions with its
        ``drop_prob`` for classifier-free guidance, drawing from ``generator``.
        """
        if not encoded:
            x0 = self.encode_images(x0, generator=generator)
        if tuple(x0.shape[1:]) != self.sample_shape:
            raise ShapeError(f"training data has per-sample shape {tuple(x0.shape[1:])}, the pipeline {self.sample_shape}")
        record = self.condition(cond, generator=generator)
        return diffusion_loss(
            self.backbone, x0, record, self.schedule, self.objective,
            generator=generator, learned_variance=self.learned_variance,
        )

    # -- sampling --------------------------------------------------------------------------

    def denoiser(self, *, precision: str = "fp32", guidance: float | None = None) -> VPDenoiser | FlowDenoiser:
        """The σ-form denoiser D(x, σ, cond) of the backbone (see :mod:`diffkit.sampling.denoisers`):
        a :class:`~diffkit.sampling.denoisers.FlowDenoiser` for ``parameterization="flow"``, else a
        :class:`~diffkit.sampling.denoisers.VPDenoiser`.

        ``precision``: ``"auto"``/``"bf16"`` run the backbone under bf16 autocast on CUDA
        (:mod:`diffkit.runtime.precision`); the denoiser's own arithmetic stays in float32/64.
        ``guidance``: the scale given to a backbone with ``embedded_guidance`` (required there,
        refused elsewhere: other pipelines guide by :class:`~diffkit.CFGDenoiser`).
        """
        if (guidance is not None) != self.embedded_guidance:
            raise ConfigError(
                f"the {type(self.backbone).__name__} backbone takes the guidance scale as an input: pass guidance="
                if self.embedded_guidance else
                "guidance= is an input only of backbones with embedded_guidance; use CFGDenoiser for others"
            )
        device = self._backbone_device() or torch.device("cpu")
        network: Callable[..., torch.Tensor] = (
            BF16Network(self.backbone) if bf16_enabled(precision, device) else self.backbone
        )
        if guidance is not None:
            network = functools.partial(network, guidance=guidance)
        if self.parameterization == FLOW:
            return FlowDenoiser(network, self.schedule, prediction="velocity")
        return VPDenoiser(network, self.schedule, self.parameterization, learned_variance=self.learned_variance)

    @torch.no_grad()
    def sample(
        self, n: int, *, cond: Any = None, negative: Any = None, steps: int | None = None, guidance: float | None = None,
        guidance_rescale: float = 0.0, generator: torch.Generator | int | Sequence[torch.Generator] | None = None,
        callback: Callback | None = None, sampler: str | None = None, sampler_options: Mapping[str, Any] | None = None,
        spacing: str | None = None, spacing_options: Mapping[str, Any] | None = None,
        sigmas: torch.Tensor | Sequence[float] | None = None, decode: bool = True, progress: bool = False,
        precision: str = "auto", noise: torch.Tensor | None = None, height: int | None = None,
        width: int | None = None, image: torch.Tensor | None = None, strength: float | None = None,
    ) -> torch.Tensor:
        """``n`` samples [n, C, H, W] (images in about [−1, 1], or latents with ``decode=False``).

        Every argument is checked before any work (conditioning, the network, allocation), and
        the result is checked after: samples that hold NaN or ±inf, or that a sampler returned
        in another shape, are an error (:func:`diffkit.sample`), never a return value.

        Args:
            n: how many samples, an integer ≥ 1; when their noise and the sampler's state
                cannot fit in the device's memory this is refused up front
                (:class:`~diffkit.errors.InsufficientMemoryError`, naming what it needs and what
                is free), as is the allocator failing later: sample in several calls instead.
            cond: the conditioner's inputs for the n samples (labels, prompts, …).
            negative: inputs for the unconditional branch of CFG instead of the null
                condition (a negative prompt).
            steps: sampler steps (default ``default_steps``).
            guidance: classifier-free guidance scale w, finite, 0 ≤ w ≤ 1000
                (:data:`diffkit.sampling.guidance.MAX_GUIDANCE`; 1 = none, 0 = unconditional). Larger
                scales overflow into NaN samples and are an error. For a backbone with
                ``embedded_guidance`` (Flux-dev) w is the network's guidance input instead
                (default ``default_guidance``), with one forward per step.
            guidance_rescale: φ ∈ [0, 1] of Lin et al. 2024 (0 = off).
            generator: a seed (an integer in 0 … 2**64 − 1; negative seeds are refused), a
                ``torch.Generator`` or a list of one per sample (batch-invariant).
            callback: called once per step with the sampler's dict (``x``, ``i``, ``sigma``, …).
            sampler, sampler_options, spacing: override the pipeline's sampler and grid.
            spacing_options: the spacing's options (e.g. ``{"rho": 5.0}`` for karras, or
                ``{"image_seq_len": 4096}`` for a flow schedule with Flux's dynamic shift); with
                neither, the pipeline's own ``spacing`` and ``spacing_options``.
            sigmas: the σ grid itself instead of ``steps`` and a spacing (e.g. one from
                :func:`diffkit.optimize_sigmas`); strictly decreasing, a final 0 appended
                when missing.
            decode: decode latents with the autoencoder (when there is one).
            progress: show a progress bar (steps, it/s) while sampling.
            precision: the backbone's precision: ``"auto"`` (bf16 autocast on CUDA, fp32 on the
                CPU), ``"fp32"`` or ``"bf16"``; the sampler's arithmetic is fp32/fp64 either way.
            noise: the initial unit Gaussian noise z [n, C, h, w] (``sample_shape``, or the
                shape at ``height`` × ``width``; default: drawn from ``generator``), read by the
                pipeline's ``start_noise`` rule — for a pipeline loaded from a diffusers folder
                exactly as that pipeline reads ``latents=`` (Flux: the unpacked latents
                [n, C, h, w]). Stochastic samplers still draw their later noise from ``generator``.
            height, width: the image size in pixels, as diffusers' pipelines take it (None: the
                pipeline's own, ``sample_shape`` times the autoencoder's downsampling factor).
                Another size needs a backbone that runs at other sizes (UNets: sides divisible
                by 2^(levels − 1) latent pixels; PixArt, SD3, Flux: by their patch, SD3 up to its
                position table; not DiT) and is refused before any work otherwise. The grid of
                a Flux pipeline's dynamic shift follows the size, as do SDXL's time ids.
            image: image-to-image (SDEdit; :mod:`diffkit.sampling.img2img`): images
                [n, C, H, W] (or one [C, H, W] for all) in [−1, 1] to start from, at their own
                size (``height``/``width`` may only repeat it). They are encoded (a latent
                pipeline draws from the autoencoder's posterior with ``generator``, as diffusers
                does), noised to the level where the last ⌊steps·strength⌋ steps of the grid
                begin, and sampled from there: diffusers' img2img pipelines' ``image=``.
            strength: s ∈ (0, 1] with ``image`` (default 0.8, diffusers'): how much of the grid
                runs, so how far the result may move from the image (1: from σ_max).
        """
        if not is_integer(n) or n < 1:
            raise ConfigError(f"n must be an integer ≥ 1, got {short(n)}")
        if sigmas is not None:
            if steps is not None or spacing is not None or spacing_options is not None:
                raise ConfigError("sigmas= gives every noise level: pass it without steps=, spacing= or spacing_options=")
            sigmas = user_sigmas(sigmas)  # checked now, before any work
            steps = len(sigmas) - 1
        if image is not None:
            image = check_image(image, n, self._image_channels())
            height, width = self._image_size(image, height, width)
        elif strength is not None:
            raise ConfigError("strength= goes with image= (image-to-image): pass the images to start from")
        shape_one = sample_shape_at(self.sample_shape, self.backbone, self.autoencoder, height, width)
        if sigmas is None and spacing is None and spacing_options is None:
            spacing = self.spacing
            spacing_options = spacing_options_at(self.spacing_options, self.sample_shape, shape_one)
        steps = self.default_steps if steps is None else steps
        if not is_integer(steps) or steps < 1:
            raise ConfigError(f"steps must be an integer ≥ 1, got {short(steps)}")
        kept = None if image is None else steps_run(steps, check_strength(strength))
        if guidance is None:  # no guidance, except for a guidance-distilled backbone: its recommended input
            guidance = self.default_guidance if self.embedded_guidance else 1.0
        guidance = check_guidance_scale(guidance, what="guidance")
        guidance_rescale = check_guidance_rescale(guidance_rescale, what="guidance_rescale")
        generator = as_generator(generator)
        if isinstance(generator, list) and len(generator) != n:
            raise ConfigError(f"got {len(generator)} generators for n={n} samples; pass one per sample")
        if callback is not None and not callable(callback):
            raise ConfigError(f"callback must be a function taking the step's dict, or None; got {short(callback)}")
        device = self._backbone_device() or torch.device("cpu")
        if device.type == "meta":
            raise ConfigError(
                "the pipeline's weights are on the meta device (built without values); load them "
                "(diffkit.load_pretrained) or move the pipeline to a real device before sampling"
            )
        shape = (n, *shape_one)
        scale = pixel_factor(self.autoencoder)  # known whenever the shape differs (sample_shape_at checked it)
        image_size = None if shape_one == self.sample_shape else (shape_one[1] * scale, shape_one[2] * scale)
        if noise is not None:
            check_noise(noise, shape)
        check_sample_memory(shape, torch.float32, device)  # the sampler's state, before anything is built
        was_training = self.training
        self.eval()
        try:
            embedded = guidance if self.embedded_guidance else None
            denoiser: Callable[..., torch.Tensor] = self.denoiser(precision=precision, guidance=embedded)
            record = self.condition(cond, image_size=image_size)
            if record is not None and getattr(record, "batch_size", n) not in (None, n):
                raise ShapeError(f"cond gives {record.batch_size} conditions for n={n} samples")
            if self.embedded_guidance:
                if negative is not None or guidance_rescale:
                    raise ConfigError(
                        "this backbone takes the guidance scale as an input (guidance-distilled): negative= and "
                        "guidance_rescale= belong to classifier-free guidance, which it does not use"
                    )
            elif self.conditioner is not None and (guidance != 1 or guidance_rescale):
                # ∅: the negative prompt, or these inputs forced to the null condition
                if negative is None:
                    uncond = self.condition(cond, force_drop=True, image_size=image_size)
                else:
                    try:
                        uncond = self.condition(negative, image_size=image_size)
                    except DiffkitError as exc:  # name the argument: the conditioner only sees its inputs
                        raise ConfigError(
                            f"negative= must be inputs of the {type(self.conditioner).__name__} for the unconditional "
                            f"branch (like cond=): {exc}"
                        ) from exc
                denoiser = CFGDenoiser(denoiser, guidance, uncond=uncond, rescale=guidance_rescale)
            elif negative is not None:
                raise ConfigError("negative= needs a conditioned pipeline and guidance ≠ 1")
            elif guidance != 1 or guidance_rescale:
                raise ConfigError(
                    f"guidance={guidance} needs a conditioned pipeline; this one has no conditioner (use guidance=1)"
                )
            if self.clip_x0 is not None:
                denoiser = ClampedDenoiser(denoiser, self.clip_x0)
            grid: dict[str, Any] = {"steps": None if sigmas is not None else steps, "spacing": spacing,
                                    "spacing_options": spacing_options, "sigmas": sigmas}
            init, start_noise = None, self.start_noise
            if kept is not None:  # image-to-image: the grid's last `kept` steps, from the encoded images
                full = sigma_grid(self.schedule, **grid)
                grid = {"steps": None, "spacing": None, "spacing_options": None, "sigmas": full[steps - kept:]}
                with named_memory_errors(tuple(image.shape), device):
                    init = self.encode_images(image.to(device), generator=generator)
                start_noise = "sigma"  # y = x0 + σ·z: diffusers' add_noise / scale_noise
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=kept or steps, desc="sample", unit="step", dynamic_ncols=True)
                callback = _ticking(bar, callback)
            try:
                x = run_sampler(
                    denoiser, shape, cond=record, schedule=self.schedule,
                    sampler=sampler or self.sampler,
                    sampler_options=sampler_options if sampler_options is not None else self.sampler_options,
                    **grid, generator=generator, callback=callback, device=device,
                    noise=noise, start_noise=start_noise, init=init,
                )
            finally:
                if bar is not None:
                    bar.close()
            if decode and self.autoencoder is not None:
                with named_memory_errors(shape, device):
                    x = self.autoencoder.decode_latents(x)
                x = check_samples(
                    x, None, source=f"the autoencoder ({type(self.autoencoder).__name__})",
                    cause="its decoder turned finite latents into NaN or ±inf (check its weights)",
                )
            return x
        finally:
            self.train(was_training)

    # -- saving and loading ----------------------------------------------------------------

    def spec(self) -> dict[str, Any]:
        """The JSON record of the composition (everything but the weights)."""
        return {
            "format_version": PIPELINE_FORMAT_VERSION,
            "schedule": _describe(self.schedule, "schedule"),
            "sampler": {
                "name": self.sampler,
                "options": self.sampler_options,
                **_origin(registry.get_entry("sampler", self.sampler)),
            },
            "parameterization": self.parameterization,
            "objective": self.objective.to_dict(),
            "sample_shape": list(self.sample_shape),
            "default_steps": self.default_steps,
            "default_guidance": self.default_guidance,
            "spacing": {"name": self.spacing, "options": self.spacing_options},
            "start_noise": self.start_noise,
            "clip_x0": self.clip_x0,
            "components": [name for name in COMPONENT_KINDS if getattr(self, name) is not None],
        }

    def save(self, folder: str | os.PathLike[str]) -> Path:
        """Write the pipeline folder: ``pipeline.json`` and one component folder per module.

        The folder is built under a temporary name and renamed into place, so a kill leaves
        the previous save (or nothing), never a mixture.
        """
        folder = Path(folder)
        if folder.exists() and not is_pipeline_folder(folder) and (not folder.is_dir() or any(folder.iterdir())):
            raise ConfigError(
                f"{folder} exists and is not a pipeline folder; saving replaces the whole folder, so pass "
                "an empty or new folder (or a pipeline folder to overwrite)"
            )
        make_folder(folder.parent)
        staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            try:
                staging.mkdir()
            except OSError as exc:
                raise OutputError(f"cannot save the pipeline into {folder}: {exc.strerror or exc}") from exc
            for name in self.spec()["components"]:
                save_pretrained(getattr(self, name), staging / name, kind=name)
            text = json.dumps(self.spec(), indent=2, sort_keys=True, allow_nan=False) + "\n"
            write_atomic([(staging / PIPELINE_FILE, lambda tmp: tmp.write_text(text, encoding="utf-8"))])
            _swap_into_place(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return folder


def _ticking(bar: Any, callback: Callback | None) -> Callback:
    """A sampler callback that advances ``bar`` once per step, then calls ``callback``."""

    def tick(info: dict[str, Any]) -> None:
        bar.update(1)
        if callback is not None:
            callback(info)

    return tick


def _origin(entry: registry.Entry) -> dict[str, Any]:
    return {"plugin": entry.origin.plugin, "distribution": entry.origin.distribution}


def _describe(obj: Any, kind: str) -> dict[str, Any]:
    entry = entry_for_config(obj, kind, None)
    return {"name": entry.name, "config": obj.to_dict(), **_origin(entry)}


def _require(kind: str, record: Mapping[str, Any], folder: Path) -> None:
    """The registry entry a saved pipeline names; a missing one names the plugin to install."""
    try:
        registry.get_entry(kind, record["name"])
    except UnknownNameError as error:
        plugin, dist = record.get("plugin"), record.get("distribution")
        if plugin and (dist != "diffkit" or plugin not in registry.BUILTIN_PLUGINS):
            source = f"the plugin {plugin!r}" + (f" (distribution {dist})" if dist else "")
            error.args = (f"{error.args[0]}. {folder} uses the {kind} {record['name']!r} from {source}; install it",)
        raise


def _swap_into_place(staging: Path, folder: Path) -> None:
    """Rename ``staging`` to ``folder``; an existing ``folder`` is moved aside first, then removed."""
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:12]}.old")
        os.replace(folder, old)
    os.replace(staging, folder)
    fsync_dir(folder.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def is_pipeline_folder(folder: Path) -> bool:
    """True when ``folder`` holds a saved :class:`Pipeline`."""
    return (folder / PIPELINE_FILE).is_file()


# pipeline.json: each key and the JSON types it may hold (check_record); default_guidance came later.
_SPEC_FIELDS: Mapping[str, tuple[type, ...]] = {
    "format_version": (int,), "schedule": (dict,), "sampler": (dict,), "parameterization": (str,),
    "objective": (dict,), "sample_shape": (list,), "default_steps": (int,), "default_guidance": (float,),
    "spacing": (dict,), "start_noise": (str,), "clip_x0": (float, type(None)), "components": (list,),
}
_LATER_FIELDS = ("default_guidance", "spacing", "start_noise", "clip_x0")  # keys a file written before them lacks
_ORIGIN: Mapping[str, tuple[type, ...]] = {"plugin": (str, type(None)), "distribution": (str, type(None))}
_SECTION_FIELDS: Mapping[str, Mapping[str, tuple[type, ...]]] = {
    "schedule": {"name": (str,), "config": (dict,), **_ORIGIN},
    "sampler": {"name": (str,), "options": (dict,), **_ORIGIN},
    "spacing": {"name": (str, type(None)), "options": (dict,)},
}


def read_spec(path: Path) -> dict[str, Any]:
    """The checked ``pipeline.json``: keys, JSON types, format version and component names.

    Values are checked where they are used (the :class:`Pipeline` constructor, the registry).
    """
    spec = read_json_object(path, what="pipeline file")
    check_numbers(spec, where=str(path))
    check_record(spec, _SPEC_FIELDS, where=str(path), optional=_LATER_FIELDS)
    version = spec["format_version"]
    if version > PIPELINE_FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format_version {version!r}; this diffkit reads up to {PIPELINE_FORMAT_VERSION}: upgrade diffkit"
        )
    if version < 1:
        raise CheckpointError(f"{path} has format_version {version!r}; valid: 1 … {PIPELINE_FORMAT_VERSION}")
    for section, fields in _SECTION_FIELDS.items():
        if section in spec:
            check_record(spec[section], fields, where=f"{path} ({section})", optional=tuple(_ORIGIN))
    _check_components(spec["components"], path)
    return spec


def _check_components(names: list[Any], path: Path) -> None:
    """Component entries are kinds a pipeline has, each at most once, the backbone among them.

    They name folders inside the pipeline folder; a path (``../x``, ``/abs``) is not a kind.
    """
    for name in names:
        if not isinstance(name, str) or name not in COMPONENT_KINDS:
            raise CheckpointError(
                f"{path}: components lists {short(name)}; valid entries: {', '.join(COMPONENT_KINDS)} (the names of "
                "component folders inside the pipeline folder)"
            )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise CheckpointError(f"{path}: components lists {', '.join(repeated)} more than once")
    if "backbone" not in names:
        raise CheckpointError(f"{path}: components lacks 'backbone' (every pipeline has one)")


def load_pipeline(
    folder: str | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    allow_nonfinite: bool = False,
) -> Pipeline:
    """The :class:`Pipeline` saved in ``folder`` by :meth:`Pipeline.save`, in eval mode.

    Every key of ``pipeline.json`` is checked before any weights are read; each component is
    read from its folder inside ``folder`` (symlinks resolved, never leaving it). A file older
    than ``default_guidance`` gets 1.0. Any failure is a :class:`~diffkit.errors.DiffkitError`
    naming the file; no file is written. ``allow_nonfinite``: as in :func:`diffkit.load_pretrained`. Files
    written before ``spacing`` and ``start_noise`` get the schedule's default grid and the σ_0·z start.
    """
    device, dtype = check_device(device), check_dtype(dtype)
    folder = Path(folder)
    path = folder / PIPELINE_FILE
    if not path.exists():
        raise CheckpointError(f"{folder} is not a pipeline folder: {PIPELINE_FILE} is missing")
    spec = read_spec(path)
    with naming_errors(path):
        _require("schedule", spec["schedule"], folder)
        _require("sampler", spec["sampler"], folder)
        schedule = registry.build("schedule", spec["schedule"]["name"], **spec["schedule"]["config"])
    components = {
        name: load_component(folder / name, kind=name, root=folder, allow_nonfinite=allow_nonfinite)
        for name in spec["components"]
    }
    with naming_errors(path):
        pipe = Pipeline(
            **components,
            schedule=schedule,
            sampler=spec["sampler"]["name"],
            sampler_options=spec["sampler"]["options"],
            parameterization=spec["parameterization"],
            objective=spec["objective"],
            sample_shape=spec["sample_shape"],
            default_steps=spec["default_steps"],
            default_guidance=spec.get("default_guidance", 1.0),
            spacing=spec.get("spacing", {}).get("name"),
            spacing_options=spec.get("spacing", {}).get("options"),
            start_noise=spec.get("start_noise", "sigma"),
            clip_x0=spec.get("clip_x0"),
        )
    return pipe.to(device=device, dtype=dtype).eval()
