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
integrated by the sampler through the parameterization adapter (:mod:`diffkit.denoisers`),
with classifier-free guidance (:class:`diffkit.CFGDenoiser`) batching [cond; uncond] in
one forward; latents are decoded by the autoencoder when there is one.
"""

from __future__ import annotations

import json
import math
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
from diffkit.atomic import fsync_dir, write_atomic
from diffkit.checkpoints import PIPELINE_FILE, entry_for_config, load_pretrained, save_pretrained
from diffkit.denoisers import PREDICTIONS, VPDenoiser
from diffkit.errors import CheckpointError, ConfigError, ShapeError, UnknownNameError, check_choice
from diffkit.guidance import CFGDenoiser
from diffkit.precision import BF16Network, bf16_enabled
from diffkit.samplers.common import Callback
from diffkit.schedules.base import DiscreteSchedule
from diffkit.training.objectives import Objective, diffusion_loss

PIPELINE_FORMAT_VERSION = 1
ComponentSpec = Any  # a registry name, a (name, config) pair, or an object


def _build(kind: str, spec: ComponentSpec) -> Any:
    """A component from a name, a (name, config mapping) pair, or the object itself."""
    if isinstance(spec, str):
        return registry.build(kind, spec)
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str) and isinstance(spec[1], Mapping):
        return registry.build(kind, spec[0], **dict(spec[1]))
    return spec


def _seeded(generator: torch.Generator | int | Sequence[torch.Generator] | None) -> Any:
    """An int seed becomes a CPU ``torch.Generator``; generators and lists pass through."""
    if isinstance(generator, bool):
        raise ConfigError("generator must be a torch.Generator, a list of them, an int seed or None")
    if isinstance(generator, int):
        return torch.Generator().manual_seed(generator)
    return generator


class Pipeline(nn.Module):
    """A trainable and samplable composition of registered components.

    Args:
        backbone: the network ``F(x_t, t, cond)`` (kind ``"backbone"``).
        schedule: the training noise schedule (kind ``"schedule"``; default ``"linear"``).
        sampler: the default sampler name (kind ``"sampler"``) and ``sampler_options``.
        conditioner: turns user inputs (labels, prompts, images) into the backbone's
            :class:`~diffkit.conditioners.Conditioning` (kind ``"conditioner"``); None for an
            unconditional model.
        autoencoder: maps images to the latents the backbone works on (kind ``"autoencoder"``);
            None for pixel-space models. It is frozen: not trained by :meth:`loss`.
        parameterization: what the backbone predicts: ``"eps"``, ``"x0"`` or ``"v"``.
        objective: training options (:class:`~diffkit.training.objectives.Objective`) other
            than the prediction target, which ``parameterization`` sets.
        sample_shape: (C, H, W) of one sample in the backbone's space; read from the backbone's
            config (``in_channels`` and ``sample_size``/``input_size``) when not given.
        default_steps: sampler steps when :meth:`sample` is given none.
    """

    def __init__(
        self,
        *,
        backbone: ComponentSpec,
        schedule: ComponentSpec = "linear",
        sampler: str = "unipc",
        sampler_options: Mapping[str, Any] | None = None,
        conditioner: ComponentSpec | None = None,
        autoencoder: ComponentSpec | None = None,
        parameterization: str = "eps",
        objective: Objective | Mapping[str, Any] | None = None,
        sample_shape: Sequence[int] | None = None,
        default_steps: int = 25,
    ) -> None:
        super().__init__()
        self.backbone = _build("backbone", backbone)
        self.conditioner = None if conditioner is None else _build("conditioner", conditioner)
        self.autoencoder = None if autoencoder is None else _build("autoencoder", autoencoder)
        if self.autoencoder is not None:
            self.autoencoder.requires_grad_(False).eval()
        self.schedule: DiscreteSchedule = _build("schedule", schedule)
        if not isinstance(self.schedule, DiscreteSchedule):
            raise ConfigError(f"schedule must be a registered schedule, got {type(self.schedule).__name__}")
        registry.get_entry("sampler", sampler)  # unknown names fail now, with close matches
        self.sampler = sampler
        self.sampler_options = dict(sampler_options or {})
        self.parameterization = check_choice("parameterization", parameterization, PREDICTIONS)
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
        self.sample_shape = tuple(int(n) for n in (sample_shape or self._shape_from_backbone()))
        if isinstance(default_steps, bool) or not isinstance(default_steps, int) or default_steps < 1:
            raise ConfigError(f"default_steps must be an integer ≥ 1, got {default_steps!r}")
        self.default_steps = default_steps
        self._check_classes()
        out_channels = getattr(getattr(self.backbone, "config", None), "out_channels", self.sample_shape[0])
        self.learned_variance = out_channels == 2 * self.sample_shape[0]

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

    def _shape_from_backbone(self) -> tuple[int, int, int]:
        config = getattr(self.backbone, "config", None)
        size = getattr(config, "sample_size", None) or getattr(config, "input_size", None)
        channels = getattr(config, "in_channels", None)
        if size is None or channels is None:
            raise ConfigError(
                f"cannot read the sample shape from a {type(self.backbone).__name__}: pass sample_shape=(C, H, W)"
            )
        return int(channels), int(size), int(size)

    # -- conditioning ----------------------------------------------------------------------

    def condition(
        self, inputs: Any, *, force_drop: Any = None, generator: torch.Generator | None = None
    ) -> Any:
        """The backbone's conditioning record for user ``inputs`` (None without a conditioner)."""
        if self.conditioner is None:
            if inputs is not None:
                raise ConfigError("this pipeline has no conditioner: pass cond=None")
            return None
        if inputs is None:
            raise ConfigError(
                f"this pipeline is conditioned by a {type(self.conditioner).__name__}: pass cond= "
                "(e.g. class labels or prompts)"
            )
        record = self.conditioner(inputs, force_drop=force_drop, generator=generator)
        return self._on_backbone_device(record)

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

    def denoiser(self, *, precision: str = "fp32") -> VPDenoiser:
        """The σ-form denoiser D(x, σ, cond) of the backbone (see :mod:`diffkit.denoisers`).

        ``precision``: ``"auto"``/``"bf16"`` run the backbone under bf16 autocast on CUDA
        (:mod:`diffkit.precision`); the denoiser's own arithmetic stays in float32/64.
        """
        device = self._backbone_device() or torch.device("cpu")
        network = BF16Network(self.backbone) if bf16_enabled(precision, device) else self.backbone
        return VPDenoiser(network, self.schedule, self.parameterization, learned_variance=self.learned_variance)

    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        cond: Any = None,
        negative: Any = None,
        steps: int | None = None,
        guidance: float = 1.0,
        guidance_rescale: float = 0.0,
        generator: torch.Generator | int | Sequence[torch.Generator] | None = None,
        callback: Callback | None = None,
        sampler: str | None = None,
        sampler_options: Mapping[str, Any] | None = None,
        spacing: str | None = None,
        decode: bool = True,
        progress: bool = False,
        precision: str = "auto",
    ) -> torch.Tensor:
        """``n`` samples [n, C, H, W] (images in about [−1, 1], or latents with ``decode=False``).

        Args:
            cond: the conditioner's inputs for the n samples (labels, prompts, …).
            negative: inputs for the unconditional branch of CFG instead of the null
                condition (a negative prompt).
            steps: sampler steps (default ``default_steps``).
            guidance: classifier-free guidance scale w ≥ 0 (1 = none, 0 = unconditional).
            guidance_rescale: φ of Lin et al. 2024 (0 = off).
            generator: a seed, a ``torch.Generator`` or one per sample (batch-invariant).
            callback: called once per step with the sampler's dict (``x``, ``i``, ``sigma``, …).
            sampler, sampler_options, spacing: override the pipeline's sampler and grid.
            decode: decode latents with the autoencoder (when there is one).
            progress: show a progress bar (steps, it/s) while sampling.
            precision: the backbone's precision: ``"auto"`` (bf16 autocast on CUDA, fp32 on the
                CPU), ``"fp32"`` or ``"bf16"``; the sampler's arithmetic is fp32/fp64 either way.
        """
        from diffkit.sampling import sample as run_sampler

        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"n must be an integer ≥ 1, got {n!r}")
        steps = self.default_steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ConfigError(f"steps must be an integer ≥ 1, got {steps!r}")
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)) or not math.isfinite(guidance):
            raise ConfigError(f"guidance must be a finite number ≥ 0 (1 = no guidance), got {guidance!r}")
        if guidance < 0:
            raise ConfigError(f"guidance must be ≥ 0 (1 = no guidance, 0 = unconditional), got {guidance}")
        was_training = self.training
        self.eval()
        try:
            device = self._backbone_device() or torch.device("cpu")
            record = self.condition(cond)
            if record is not None and getattr(record, "batch_size", n) not in (None, n):
                raise ShapeError(f"cond gives {record.batch_size} conditions for n={n} samples")
            denoiser: Callable[..., torch.Tensor] = self.denoiser(precision=precision)
            if self.conditioner is not None and (guidance != 1 or guidance_rescale):
                # ∅: the negative prompt, or these inputs forced to the null condition
                uncond = self.condition(negative) if negative is not None else self.condition(cond, force_drop=True)
                denoiser = CFGDenoiser(denoiser, guidance, uncond=uncond, rescale=guidance_rescale)
            elif negative is not None:
                raise ConfigError("negative= needs a conditioned pipeline and guidance ≠ 1")
            elif guidance != 1 or guidance_rescale:
                raise ConfigError(
                    f"guidance={guidance} needs a conditioned pipeline; this one has no conditioner (use guidance=1)"
                )
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=steps, desc="sample", unit="step", dynamic_ncols=True)
                callback = _ticking(bar, callback)
            try:
                x = run_sampler(
                    denoiser, (n, *self.sample_shape), cond=record, schedule=self.schedule,
                    sampler=sampler or self.sampler,
                    sampler_options=sampler_options if sampler_options is not None else self.sampler_options,
                    steps=steps, spacing=spacing,
                    generator=_seeded(generator), callback=callback, device=device,
                )
            finally:
                if bar is not None:
                    bar.close()
            if decode and self.autoencoder is not None:
                x = self.autoencoder.decode_latents(x)
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
            "components": [name for name in ("backbone", "conditioner", "autoencoder") if getattr(self, name) is not None],
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
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            staging.mkdir()
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


def load_pipeline(
    folder: str | os.PathLike[str], *, device: torch.device | str | None = None, dtype: torch.dtype | None = None
) -> Pipeline:
    """The :class:`Pipeline` saved in ``folder`` by :meth:`Pipeline.save`, in eval mode."""
    folder = Path(folder)
    path = folder / PIPELINE_FILE
    if not path.is_file():
        raise CheckpointError(f"{folder} is not a pipeline folder: {PIPELINE_FILE} is missing")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} cannot be read as JSON: {exc}") from exc
    version = spec.get("format_version")
    if not isinstance(version, int) or version > PIPELINE_FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {version!r}; this diffkit reads up to {PIPELINE_FORMAT_VERSION}")
    try:
        schedule = spec["schedule"]
        _require("schedule", schedule, folder)
        _require("sampler", spec["sampler"], folder)
        components = {name: load_pretrained(folder / name) for name in spec["components"]}
        schedule_obj = registry.build("schedule", schedule["name"], **schedule["config"])
        pipe = Pipeline(
            **components,
            schedule=schedule_obj,
            sampler=spec["sampler"]["name"],
            sampler_options=spec["sampler"]["options"],
            parameterization=spec["parameterization"],
            objective=spec["objective"],
            sample_shape=spec["sample_shape"],
            default_steps=spec["default_steps"],
        )
    except KeyError as exc:
        raise CheckpointError(f"{path} lacks the entry {exc}") from exc
    return pipe.to(device=device, dtype=dtype).eval()
