"""Whole diffusers pipeline folders (``model_index.json``) as :class:`diffkit.Pipeline` objects.

``diffkit.load_pretrained(folder)`` comes here when the folder holds a ``model_index.json``. The
pipeline's ``_class_name`` picks a *family* (:data:`FAMILIES`), which says where each diffkit
component comes from:

=============================  ==================  =====================  ===============
pipeline class                 backbone            conditioner            autoencoder
=============================  ==================  =====================  ===============
DDPMPipeline, DDIMPipeline     ``unet`` (native)   —                      —
DiTPipeline                    ``dit`` (native)    ``class_label``        ``kl`` (native)
StableDiffusionPipeline        ``latent_unet``     ``clip_text``          ``kl``
=============================  ==================  =====================  ===============

(the text conditioners are :mod:`diffkit.integrations.transformers`; the transformer families
wrap diffusers' own modules, :mod:`diffkit.integrations.diffusers.backbones`, docs/design.md
says why). Every family reads the same three things from the folder's scheduler config through
:func:`~diffkit.integrations.diffusers.noise.noise_process`:

* the noise process: the schedule (β table and its options, or the flow shift) and what the
  network predicts (the pipeline's ``parameterization``);
* the grid: spacing ``"diffusers"`` with the config's own keys (:func:`~.noise.grid_options`),
  so that every diffkit sampler steps on the scheduler's grid; on flow, FlowMatch's ``uniform``;
* the default sampler, named after the scheduler class (:func:`default_sampler`), and the
  start: diffusers' ``latents=`` is the sample of the noise path at the first σ (``start_noise
  ="path"``), except for Euler-type schedulers on "linspace"/"trailing" grids, whose pipelines
  scale it by ``init_noise_sigma`` = σ_max (``"sigma"``). DDPM and DiT pipelines never apply
  ``init_noise_sigma``, so for them the start is always the path's.

Nothing is written to the folder. Every file is checked before weights are read: the index, the
class, the subfolders it names, the scheduler config.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs
from torch import nn

from diffkit.errors import CheckpointError, UnknownNameError
from diffkit.integrations.diffusers.noise import EULER_CLASSES, NoiseProcess, grid_options, noise_process
from diffkit.io.files import read_json_object
from diffkit.io.records import check_numbers, naming_errors, short
from diffkit.pipeline import Pipeline
from diffkit.sampling.draw import DEFAULT_SAMPLER
from diffkit.schedules.flow import FLOW_SPACING

INDEX_FILE = "model_index.json"
SCHEDULER_FILE = "scheduler_config.json"

SAMPLER_OF_SCHEDULER: Mapping[str, str] = {
    "DDIMScheduler": "ddim", "DDPMScheduler": "ddpm", "EulerDiscreteScheduler": "euler",
    "EulerAncestralDiscreteScheduler": "euler_ancestral", "HeunDiscreteScheduler": "heun",
    "LMSDiscreteScheduler": "lms", "KDPM2DiscreteScheduler": "dpm2", "UniPCMultistepScheduler": "unipc",
    "FlowMatchEulerDiscreteScheduler": "euler", "FlowMatchHeunDiscreteScheduler": "heun",
    "DPMSolverMultistepScheduler": "dpmpp_2m",
}
"""diffusers scheduler class → the diffkit sampler of the same algorithm (tests check each pair's parity).
``DPMSolverMultistepScheduler`` is refined by its config (:func:`default_sampler`)."""


@attrs.frozen
class Source:
    """A diffusers pipeline folder being read, and how its weights may be read."""

    path: Path
    index: dict[str, Any]
    allow_pickle: bool = False
    variant: str | None = None
    allow_nonfinite: bool = False

    @property
    def class_name(self) -> str:
        return str(self.index["_class_name"])

    def has(self, key: str) -> bool:
        """Whether the index names component ``key`` (``[library, class]``, not ``[null, null]``) and its folder exists."""
        entry = self.index.get(key)
        return isinstance(entry, list) and len(entry) == 2 and entry[1] is not None and (self.path / key).is_dir()

    def folder(self, key: str) -> Path:
        """The subfolder of component ``key``, which the pipeline class needs."""
        if not self.has(key):
            named = sorted(k for k in self.index if not k.startswith("_"))
            folders = sorted(p.name for p in self.path.iterdir() if p.is_dir())
            raise CheckpointError(
                f"{self.path} is a {self.class_name} folder without its {key!r} component (model_index.json names "
                f"{', '.join(named) or 'none'}; subfolders: {', '.join(folders) or 'none'})"
            )
        return self.path / key

    def native(self, key: str) -> nn.Module:
        """The diffkit module converted from the diffusers model in subfolder ``key``."""
        from diffkit.io.pretrained import load_pretrained

        return load_pretrained(
            self.folder(key), allow_pickle=self.allow_pickle, variant=self.variant,
            allow_nonfinite=self.allow_nonfinite,
        )

    def config(self, key: str, file: str = "config.json", *, allow_infinity: bool = False) -> dict[str, Any]:
        """The checked JSON config ``file`` of component ``key``."""
        path = self.folder(key) / file
        what = f"the {key} config of a {self.class_name} folder"
        config = read_json_object(path, what=what, allow_infinity=allow_infinity)
        check_numbers(config, where=str(path), allow_infinity=allow_infinity)
        return config


Family = Callable[[Source, NoiseProcess], dict[str, Any]]
"""Reads a family's components: (source, noise process) → :class:`Pipeline` keyword arguments."""


def _unet_family(source: Source, noise: NoiseProcess) -> dict[str, Any]:
    """DDPMPipeline / DDIMPipeline: an unconditional pixel-space UNet2DModel."""
    return {"backbone": source.native("unet")}


def _dit_family(source: Source, noise: NoiseProcess) -> dict[str, Any]:
    """DiTPipeline: a class-conditional DiT on SD's VAE latents; the null class is num_classes (1000)."""
    backbone = source.native("transformer")
    classes = backbone.config.num_classes
    return {
        "backbone": backbone,
        "conditioner": ("class_label", {"num_classes": classes, "drop_prob": 0.1}),
        "autoencoder": source.native("vae"),
        "default_guidance": 4.0,  # DiTPipeline's guidance_scale default
    }


def _text_conditioner(source: Source) -> Any:
    """The pipeline's text encoders and tokenizers as the conditioner reproducing its ``encode_prompt``."""
    from diffkit.integrations.transformers.folders import conditioner_name_for, from_pipeline_folder

    name = conditioner_name_for(source.index)
    return from_pipeline_folder(name, source.path, source.index, variant=source.variant,
                                allow_pickle=source.allow_pickle)


def _wrapped_transformer(source: Source) -> nn.Module:
    """The folder's ``transformer`` as the ``diffusers_transformer`` backbone (diffusers' own module)."""
    from diffkit.integrations.diffusers.backbones import from_diffusers_folder

    return from_diffusers_folder(
        source.path, subfolder="transformer", variant=source.variant, allow_pickle=source.allow_pickle,
        allow_nonfinite=source.allow_nonfinite,
    )


def _stable_diffusion_family(source: Source, noise: NoiseProcess) -> dict[str, Any]:
    """StableDiffusionPipeline (1.x ε, 2.x v) and StableDiffusionXLPipeline: LatentUNet (SDXL's with its
    text-time embedding), the CLIP text encoder(s), SD's VAE."""
    xl = source.class_name == "StableDiffusionXLPipeline"
    return {
        "backbone": source.native("unet"),
        "conditioner": _text_conditioner(source),
        "autoencoder": source.native("vae"),
        "default_guidance": 5.0 if xl else 7.5,  # the pipelines' guidance_scale defaults
    }


def _transformer_family(source: Source, noise: NoiseProcess) -> dict[str, Any]:
    """PixArt-α/Σ, SD3, Flux: diffusers' transformer wrapped, T5 (+ CLIP) text encoders, a KL VAE.

    Flux-dev's guidance is the transformer's input (``embedded_guidance``); FluxPipeline's grid ends
    its uniform t at 1/N and shifts it by μ of the image's token count.
    """
    backbone = _wrapped_transformer(source)
    settings: dict[str, Any] = {
        "backbone": backbone,
        "conditioner": _text_conditioner(source),
        "autoencoder": source.native("vae"),
        "default_guidance": TRANSFORMER_GUIDANCE[source.class_name],
    }
    if source.class_name == "FluxPipeline" and not backbone.embedded_guidance:
        settings["default_guidance"] = 1.0  # Flux-schnell: neither CFG nor a guidance input
    if noise.is_flow:
        size = backbone.config.sample_size
        tokens = (size // 2) ** 2 if source.class_name == "FluxPipeline" else (size // backbone.config.patch_size) ** 2
        options: dict[str, Any] = {}
        if getattr(noise.schedule, "use_dynamic_shifting", False):
            options["image_seq_len"] = tokens
        if source.class_name == "FluxPipeline":
            options["t_end"] = "1/steps"
        if options:
            settings.update(spacing=FLOW_SPACING, spacing_options=options)
    return settings


TRANSFORMER_GUIDANCE = {"PixArtAlphaPipeline": 4.5, "PixArtSigmaPipeline": 4.5, "StableDiffusion3Pipeline": 7.0,
                        "FluxPipeline": 3.5}
"""The pipelines' ``guidance_scale`` defaults (Flux-dev's is its embedded guidance)."""

FAMILIES: dict[str, Family] = {
    "DDPMPipeline": _unet_family,
    "DDIMPipeline": _unet_family,
    "DiTPipeline": _dit_family,
    "StableDiffusionPipeline": _stable_diffusion_family,
    "StableDiffusionXLPipeline": _stable_diffusion_family,
    "PixArtAlphaPipeline": _transformer_family,
    "PixArtSigmaPipeline": _transformer_family,
    "StableDiffusion3Pipeline": _transformer_family,
    "FluxPipeline": _transformer_family,
}
"""diffusers pipeline ``_class_name`` → how its folder becomes a :class:`Pipeline`."""

CLIPPING_BY_DEFAULT = ("DDPMScheduler", "DDIMScheduler")
"""Schedulers whose ``clip_sample`` is True when their config leaves it out."""

COMPONENTS: dict[str, tuple[str, ...]] = {
    "DDPMPipeline": ("unet", "scheduler"),
    "DDIMPipeline": ("unet", "scheduler"),
    "DiTPipeline": ("transformer", "vae", "scheduler"),
    "StableDiffusionPipeline": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "StableDiffusionXLPipeline": ("unet", "vae", "text_encoder_2", "tokenizer_2", "scheduler"),
    "PixArtAlphaPipeline": ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
    "PixArtSigmaPipeline": ("transformer", "vae", "text_encoder", "tokenizer", "scheduler"),
    "StableDiffusion3Pipeline": ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2",
                                 "scheduler"),
    "FluxPipeline": ("transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"),
}
"""The subfolders each pipeline class needs, checked before any is read."""

NO_INIT_NOISE_SIGMA = ("DDPMPipeline", "DiTPipeline")
"""Pipelines that take ``latents=`` as x_T whatever the scheduler's ``init_noise_sigma``."""


def default_sampler(config: Mapping[str, Any]) -> str:
    """The diffkit sampler that runs the algorithm of the scheduler ``config`` (:data:`SAMPLER_OF_SCHEDULER`).

    DPM-Solver++ of order 3 is ``dpmpp_3m``, its SDE variant ``dpmpp_2m_sde``. A scheduler without a
    diffkit namesake (PNDM, DEIS, …) gets :data:`~diffkit.sampling.draw.DEFAULT_SAMPLER` with a warning
    naming it; any sampler can be chosen per call (``Pipeline.sample(sampler=...)``).
    """
    class_name = str(config.get("_class_name"))
    name = SAMPLER_OF_SCHEDULER.get(class_name)
    if class_name == "DPMSolverMultistepScheduler":
        algorithm, order = config.get("algorithm_type", "dpmsolver++"), config.get("solver_order", 2)
        name = {("dpmsolver++", 2): "dpmpp_2m", ("dpmsolver++", 3): "dpmpp_3m",
                ("sde-dpmsolver++", 2): "dpmpp_2m_sde"}.get((algorithm, order))
    if name is None:
        warnings.warn(
            f"the folder's scheduler {class_name} has no diffkit namesake; sampling with {DEFAULT_SAMPLER!r} on its "
            f"grid (choose another with sample(sampler=...); namesakes: {', '.join(sorted(SAMPLER_OF_SCHEDULER))})",
            stacklevel=4,
        )
        return DEFAULT_SAMPLER
    return name


def warn_unmatched(config: Mapping[str, Any]) -> None:
    """Warn about the scheduler settings diffkit's samplers do not reproduce (images will differ from diffusers')."""
    class_name = config.get("_class_name")
    unmatched = []
    if class_name == "DDIMScheduler" and config.get("timestep_spacing", "leading") != "leading":
        unmatched.append(f"timestep_spacing={config['timestep_spacing']!r}: diffusers' DDIM steps from each t to "
                         "t − T/N, off its own grid; diffkit steps between the grid's timesteps")
    if class_name == "DDIMScheduler" and not config.get("set_alpha_to_one", True):
        unmatched.append("set_alpha_to_one=False: diffusers' DDIM ends at ᾱ_0 (σ ≈ 0.01–0.03); diffkit ends at σ = 0")
    if class_name == "DDIMScheduler" and config.get("clip_sample", True):
        unmatched.append("clip_sample=True: diffusers' DDIM keeps the network's ε beside the clipped x0; diffkit "
                         "derives ε from the clipped x0 (diffusers' use_clipped_model_output=True)")
    if config.get("thresholding"):
        unmatched.append("thresholding=True: diffkit does not threshold the x0 estimate (dynamic thresholding)")
    if unmatched:
        warnings.warn(
            f"the folder's {class_name} has settings diffkit's samplers do not reproduce, so images differ "
            f"slightly from diffusers': {'; '.join(unmatched)}", stacklevel=4,
        )


def start_noise_of(config: Mapping[str, Any], pipeline_class: str) -> str:
    """How the pipeline reads ``latents=`` (module docstring): ``"sigma"`` or ``"path"``."""
    euler_scaled = config.get("_class_name") in EULER_CLASSES and config.get("timestep_spacing") in (
        "linspace", "trailing")
    return "sigma" if euler_scaled and pipeline_class not in NO_INIT_NOISE_SIGMA else "path"


def read_index(folder: Path) -> dict[str, Any]:
    """The checked ``model_index.json`` of ``folder``: a supported ``_class_name`` (else the supported ones listed)."""
    path = folder / INDEX_FILE
    index = read_json_object(path, what="diffusers pipeline index")
    check_numbers(index, where=str(path))
    class_name = index.get("_class_name")
    if not isinstance(class_name, str):
        raise CheckpointError(f"{path}: _class_name must name the diffusers pipeline class, got {short(class_name)}")
    if class_name not in FAMILIES:
        raise UnknownNameError("diffusers pipeline class (model_index.json's _class_name)", class_name, list(FAMILIES))
    return index


def load_pipeline_folder(
    folder: str | os.PathLike[str], *, allow_pickle: bool = False, variant: str | None = None,
    allow_nonfinite: bool = False,
) -> Pipeline:
    """The :class:`Pipeline` of a diffusers pipeline folder (module docstring), on the CPU in float32, eval mode.

    Called by :func:`diffkit.load_pretrained` (which checks the arguments and moves the result).
    """
    folder = Path(folder)
    index = read_index(folder)
    source = Source(folder, index, allow_pickle=allow_pickle, variant=variant, allow_nonfinite=allow_nonfinite)
    for key in COMPONENTS[source.class_name]:
        source.folder(key)
    scheduler = source.config("scheduler", SCHEDULER_FILE, allow_infinity=True)  # lambda_min_clipped: -inf
    with naming_errors(source.folder("scheduler") / SCHEDULER_FILE):
        noise = noise_process(scheduler)
        sampler = default_sampler(scheduler)
        warn_unmatched(scheduler)
    components = FAMILIES[source.class_name](source, noise)
    settings: dict[str, Any] = {
        "schedule": noise.schedule,
        "parameterization": "flow" if noise.is_flow else noise.prediction,
        "sampler": sampler,
        "start_noise": start_noise_of(scheduler, source.class_name),
    }
    if not noise.is_flow:
        settings.update(spacing="diffusers", spacing_options=grid_options(scheduler))
    if scheduler.get("clip_sample", scheduler.get("_class_name") in CLIPPING_BY_DEFAULT):
        settings["clip_x0"] = float(scheduler.get("clip_sample_range", 1.0))
    settings.update(components)
    with naming_errors(folder / INDEX_FILE):
        pipe = Pipeline(**settings)
    return pipe.eval()


def supported_pipelines() -> list[str]:
    """The diffusers pipeline classes whose folders :func:`diffkit.load_pretrained` reads."""
    return list(FAMILIES)


__all__ = ["FAMILIES", "SAMPLER_OF_SCHEDULER", "Source", "default_sampler", "load_pipeline_folder",
           "read_index", "start_noise_of", "supported_pipelines"]
