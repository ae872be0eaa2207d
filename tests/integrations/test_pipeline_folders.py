"""Whole diffusers pipeline folders load as diffkit pipelines and give diffusers' images.

Each tiny pipeline is built with random weights in the test (tiny_pipelines.py), saved by
diffusers' own ``save_pretrained`` and read back by ``diffkit.load_pretrained``. The diffkit
pipeline then samples with the sampler the folder's scheduler maps to, on that scheduler's grid,
from the same initial noise as diffusers' run, and the images must agree to 1e-4 (float32,
images in [0, 1]). Pipelines without ``latents=`` (DDPM, DDIM, DiT) draw their noise first from
the generator, so diffkit is given that noise and a generator in the same state.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import diffkit
from diffkit.errors import CheckpointError, ConfigError, UnknownNameError

diffusers = pytest.importorskip("diffusers")

from .tiny_pipelines import (  # noqa: E402
    ddpm_pipeline,
    dit_pipeline,
    flux_pipeline,
    pixart_pipeline,
    sd3_pipeline,
    sd_pipeline,
    sdxl_pipeline,
)

TOLERANCE = 1e-4


def as_images(x: torch.Tensor) -> np.ndarray:
    """diffkit's samples in [−1, 1] [B, C, H, W] → diffusers' ``output_type="np"`` [B, H, W, C] in [0, 1]."""
    return (x / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def saved(pipe, tmp_path):
    folder = tmp_path / "diffusers"
    pipe.save_pretrained(folder)
    return folder


def first_noise(shape, seed):
    """The noise a pipeline without ``latents=`` draws first, and the generator in the state it leaves."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator), generator


@pytest.mark.parametrize("clip", [True, False])
def test_ddpm_pipeline_folder(clip, tmp_path):
    """diffusers' DDPM step, including its x0 clipping (``clip_sample``, on by default): equal to diffkit's ``ddpm``."""
    pipe = ddpm_pipeline(diffusers.DDPMScheduler(clip_sample=clip, clip_sample_range=0.8))
    theirs = pipe(batch_size=2, num_inference_steps=10, generator=torch.Generator().manual_seed(1),
                  output_type="np").images
    ours = diffkit.load_pretrained(saved(pipe, tmp_path))
    assert isinstance(ours, diffkit.Pipeline) and ours.sampler == "ddpm" and ours.sample_shape == (3, 8, 8)
    assert ours.clip_x0 == (0.8 if clip else None)
    noise, generator = first_noise((2, 3, 8, 8), 1)
    images = ours.sample(2, steps=10, noise=noise, generator=generator)
    assert theirs.std() > 0.05
    np.testing.assert_allclose(as_images(images), theirs, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("offset", [0, 1])
def test_ddim_pipeline_folder(offset, tmp_path):
    pipe = diffusers.DDIMPipeline(
        unet=ddpm_pipeline(diffusers.DDPMScheduler()).unet,
        scheduler=diffusers.DDIMScheduler(clip_sample=False, steps_offset=offset),
    )
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(batch_size=2, num_inference_steps=7, generator=torch.Generator().manual_seed(2),
                  output_type="np").images
    ours = diffkit.load_pretrained(saved(pipe, tmp_path))
    assert ours.sampler == "ddim" and ours.spacing == "diffusers"
    noise, _ = first_noise((2, 3, 8, 8), 2)
    np.testing.assert_allclose(as_images(ours.sample(2, steps=7, noise=noise)), theirs, rtol=0, atol=TOLERANCE)


DIT_SCHEDULERS = {
    "dpmpp_2m": lambda: diffusers.DPMSolverMultistepScheduler(),
    "ddim": lambda: diffusers.DDIMScheduler(clip_sample=False),
    "unipc": lambda: diffusers.UniPCMultistepScheduler(),
}


@pytest.mark.parametrize("guidance", [1.0, 4.0])
@pytest.mark.parametrize("sampler", list(DIT_SCHEDULERS))
def test_dit_pipeline_folder(sampler, guidance, tmp_path):
    pipe = dit_pipeline(DIT_SCHEDULERS[sampler]())
    labels = [3, 7]
    theirs = pipe(class_labels=labels, guidance_scale=guidance, num_inference_steps=6,
                  generator=torch.Generator().manual_seed(4), output_type="np").images
    ours = diffkit.load_pretrained(saved(pipe, tmp_path))
    assert ours.sampler == sampler and ours.default_guidance == 4.0
    noise, _ = first_noise((2, 4, 8, 8), 4)
    images = ours.sample(2, cond=labels, guidance=guidance, steps=6, noise=noise)
    np.testing.assert_allclose(as_images(images), theirs, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("quirk", [{"timestep_spacing": "trailing"}, {"set_alpha_to_one": False},
                                   {"clip_sample": True}])
def test_what_diffkit_does_not_reproduce_is_said_on_loading(quirk, tmp_path):
    """DDIM's steps to t − T/N off a "trailing"/"linspace" grid, its last step to ᾱ_0, and x0 clipping."""
    pipe = ddpm_pipeline(diffusers.DDIMScheduler(**{"clip_sample": False, **quirk}))
    with pytest.warns(UserWarning, match=next(iter(quirk))):
        diffkit.load_pretrained(saved(pipe, tmp_path))


# -- the text-to-image families -----------------------------------------------------------------------------

PROMPTS = ["a red cat", "a photo of a blue dog"]
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1}


def _flux_noise(pipe, noise):
    b, c, h, w = noise.shape
    return pipe._pack_latents(noise, b, c, h, w)


FAMILIES = {
    # name: (build the diffusers pipeline, latent shape, extra call arguments, the scheduler's sampler, CFG scale)
    "sd1": (lambda kit, tmp: sd_pipeline(diffusers.DPMSolverMultistepScheduler(**SD_BETAS), tmp / "tok"),
            (4, 8, 8), {}, "dpmpp_2m", 7.5),
    "sd2_v_euler_trailing": (
        lambda kit, tmp: sd_pipeline(diffusers.EulerDiscreteScheduler(
            **SD_BETAS, prediction_type="v_prediction", timestep_spacing="trailing"), tmp / "tok"),
        (4, 8, 8), {}, "euler", 7.5),
    "sdxl": (lambda kit, tmp: sdxl_pipeline(diffusers.EulerDiscreteScheduler(**SD_BETAS), kit),
             (4, 8, 8), {}, "euler", 5.0),
    "pixart_alpha": (lambda kit, tmp: pixart_pipeline(diffusers.DPMSolverMultistepScheduler(), kit),
                     (4, 8, 8), {"clean_caption": False, "use_resolution_binning": False}, "dpmpp_2m", 4.5),
    "pixart_sigma": (lambda kit, tmp: pixart_pipeline(diffusers.DPMSolverMultistepScheduler(), kit, sigma=True),
                     (4, 8, 8), {"clean_caption": False, "use_resolution_binning": False}, "dpmpp_2m", 4.5),
    "sd3": (lambda kit, tmp: sd3_pipeline(diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0), kit),
            (4, 8, 8), {}, "euler", 7.0),
    "flux": (lambda kit, tmp: flux_pipeline(diffusers.FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096), kit), (4, 128, 128), {}, "euler", 3.5),
}


@pytest.mark.parametrize("guided", [False, True], ids=["no-guidance", "guidance"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_text_to_image_folder_gives_diffusers_images(family, guided, kit, tmp_path):
    """Prompts, the text encoders, CFG (or Flux's embedded guidance), the VAE: whole pipelines, 4 steps."""
    build, latent, extra, sampler, scale = FAMILIES[family]
    pipe = build(kit, tmp_path)
    ours = diffkit.load_pretrained(saved(pipe, tmp_path))
    assert ours.sampler == sampler and ours.sample_shape == latent and ours.default_guidance == scale
    guidance = scale if guided else 1.0
    noise = torch.randn((2, *latent), generator=torch.Generator().manual_seed(7))
    latents = _flux_noise(pipe, noise) if family == "flux" else noise
    theirs = pipe(PROMPTS, num_inference_steps=4, guidance_scale=guidance, latents=latents, output_type="np",
                  **extra).images
    images = ours.sample(2, cond=PROMPTS, guidance=guidance, steps=4, noise=noise)
    assert theirs.std() > 0.01  # the tiny networks draw something, not a constant image
    np.testing.assert_allclose(as_images(images), theirs, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_text_to_image_folder_saves_and_loads_back_exactly(family, kit, tmp_path):
    build, latent, _, _, scale = FAMILIES[family]
    ours = diffkit.load_pretrained(saved(build(kit, tmp_path), tmp_path))
    again = diffkit.load_pretrained(ours.save(tmp_path / "diffkit"))
    assert again.spec() == ours.spec()
    for (name, a), (other, b) in zip(ours.state_dict().items(), again.state_dict().items(), strict=True):
        assert name == other and torch.equal(a, b), name
    noise = torch.randn((1, *latent), generator=torch.Generator().manual_seed(8))
    first = ours.sample(1, cond=PROMPTS[:1], guidance=scale, steps=2, noise=noise)
    assert torch.equal(again.sample(1, cond=PROMPTS[:1], guidance=scale, steps=2, noise=noise), first)


def test_a_loaded_folder_saves_and_loads_back_exactly(tmp_path):
    pipe = dit_pipeline(diffusers.DPMSolverMultistepScheduler(timestep_spacing="trailing"))
    ours = diffkit.load_pretrained(saved(pipe, tmp_path))
    again = diffkit.load_pretrained(ours.save(tmp_path / "diffkit"))
    assert again.spec() == ours.spec()
    for a, b in zip(ours.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    noise, _ = first_noise((2, 4, 8, 8), 5)
    first = ours.sample(2, cond=[1, 2], guidance=3.0, steps=5, noise=noise)
    assert torch.equal(again.sample(2, cond=[1, 2], guidance=3.0, steps=5, noise=noise), first)


def test_any_sampler_runs_on_the_folders_grid(tmp_path):
    """The scheduler's grid is the pipeline's default; another sampler steps on it, another grid can be asked for."""
    pipe = dit_pipeline(diffusers.DPMSolverMultistepScheduler())
    ours = diffkit.load_pretrained(saved(pipe, tmp_path))
    noise, _ = first_noise((1, 4, 8, 8), 6)
    grid = diffusers.DPMSolverMultistepScheduler()
    grid.set_timesteps(5)
    seen = []
    ours.sample(1, cond=[0], steps=5, noise=noise, sampler="euler", callback=lambda info: seen.append(info["sigma"]))
    np.testing.assert_allclose(seen, grid.sigmas[:-1].numpy(), rtol=1e-6)
    karras = ours.sample(1, cond=[0], steps=5, noise=noise, spacing="karras")
    assert torch.isfinite(karras).all()


def test_the_start_follows_the_schedulers_init_noise_sigma():
    from diffkit.integrations.diffusers.folders import start_noise_of

    euler = {"_class_name": "EulerDiscreteScheduler", "timestep_spacing": "trailing"}
    assert start_noise_of(euler, "StableDiffusionPipeline") == "sigma"
    assert start_noise_of(euler, "DiTPipeline") == "path"  # DiT never applies init_noise_sigma
    assert start_noise_of(dict(euler, timestep_spacing="leading"), "StableDiffusionPipeline") == "path"
    assert start_noise_of({"_class_name": "DDIMScheduler"}, "StableDiffusionPipeline") == "path"


def test_default_sampler_follows_the_scheduler():
    from diffkit.integrations.diffusers.folders import default_sampler

    assert default_sampler({"_class_name": "DPMSolverMultistepScheduler"}) == "dpmpp_2m"
    assert default_sampler({"_class_name": "DPMSolverMultistepScheduler", "solver_order": 3}) == "dpmpp_3m"
    assert default_sampler({"_class_name": "DPMSolverMultistepScheduler",
                            "algorithm_type": "sde-dpmsolver++"}) == "dpmpp_2m_sde"
    assert default_sampler({"_class_name": "FlowMatchEulerDiscreteScheduler"}) == "euler"
    with pytest.warns(UserWarning, match="PNDMScheduler has no diffkit namesake; sampling with 'unipc'"):
        assert default_sampler({"_class_name": "PNDMScheduler"}) == "unipc"


def test_bad_folders_are_refused_by_name(tmp_path):
    pipe = ddpm_pipeline(diffusers.DDPMScheduler())
    folder = saved(pipe, tmp_path)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(dict(index, _class_name="KandinskyPipeline")))
    with pytest.raises(UnknownNameError, match="KandinskyPipeline(.|\n)*DDPMPipeline"):
        diffkit.load_pretrained(folder)
    (folder / "model_index.json").write_text(json.dumps(index))
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps(dict(json.loads(config.read_text()), beta_schedule="exp")))
    with pytest.raises(ConfigError, match="beta_schedule 'exp'"):
        diffkit.load_pretrained(folder)
    (folder / "model_index.json").write_text(json.dumps({k: v for k, v in index.items() if k != "unet"}))
    with pytest.raises(CheckpointError, match="without its 'unet' component \\(model_index.json names scheduler;"):
        diffkit.load_pretrained(folder)


def test_noise_must_fit_the_samples(tmp_path):
    ours = diffkit.load_pretrained(saved(ddpm_pipeline(diffusers.DDPMScheduler()), tmp_path))
    with pytest.raises(diffkit.errors.ShapeError, match=r"noise has shape \[1, 3, 8, 8\]; the samples need \[2, 3, 8, 8\]"):
        ours.sample(2, steps=2, noise=torch.zeros(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="NaN"):
        ours.sample(1, steps=2, noise=torch.full((1, 3, 8, 8), float("nan")))
    with pytest.raises(ConfigError, match="floating-point"):
        ours.sample(1, steps=2, noise=torch.zeros(1, 3, 8, 8, dtype=torch.int64))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_diffkit_sample_from_a_folder_on_the_command_line(family, kit, tmp_path, capsys):
    """``diffkit sample --from FOLDER --prompt …`` works on every text-to-image family (2 steps, 2 images)."""
    from PIL import Image

    from diffkit.cli.commands import main

    build, latent, _, _, scale = FAMILIES[family]
    folder = saved(build(kit, tmp_path), tmp_path)
    out = tmp_path / "grid.png"
    assert main(["sample", "--from", str(folder), "--prompt", "a red cat", "--prompt", "a blue dog", "--n", "2",
                 "--steps", "2", "--out", str(out)]) == 0
    assert f"guidance {scale:g}, 2 steps" in capsys.readouterr().out
    with Image.open(out) as image:
        assert image.size[0] >= latent[-1] and image.size[1] >= latent[-2]


def test_diffkit_sample_from_a_class_conditional_folder(tmp_path, capsys):
    from diffkit.cli.commands import main

    folder = saved(dit_pipeline(diffusers.DPMSolverMultistepScheduler()), tmp_path)
    assert main(["sample", "--from", str(folder), "--class", "207", "--n", "2", "--steps", "2",
                 "--out", str(tmp_path / "dit.png")]) == 0
    assert "wrote 2 samples" in capsys.readouterr().out


def test_the_x0_clamp_travels_with_the_pipeline_and_is_checked(tmp_path):
    ours = diffkit.load_pretrained(saved(ddpm_pipeline(diffusers.DDPMScheduler(clip_sample_range=0.5)), tmp_path))
    again = diffkit.load_pretrained(ours.save(tmp_path / "diffkit"))
    assert again.clip_x0 == 0.5
    x0 = []
    again.sample(1, steps=3, generator=0, callback=lambda info: x0.append(info["denoised"]))
    assert all(float(d.abs().max()) <= 0.5 for d in x0)
    for bad in (0.0, -1.0, float("nan"), float("inf"), "1"):
        with pytest.raises(ConfigError, match="x0 clamp bound must be a positive finite number"):
            diffkit.Pipeline(backbone=ours.backbone, clip_x0=bad)
