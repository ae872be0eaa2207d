"""``Pipeline.sample(image=, strength=)`` is diffusers' image-to-image.

Each family's img2img pipeline (built by diffusers from the same tiny components) and the diffkit
pipeline loaded from the saved folder run from the same images with the same seeded generator:
the autoencoder's posterior sample is drawn first and the start noise second in both, so the
images must agree to 1e-4 — which checks the encoding, the tail of the grid that ⌊steps·strength⌋
selects, the noising x0 + σ·z (``add_noise`` / ``scale_noise``) and the fresh multistep history.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import diffkit
from diffkit.errors import ConfigError, ShapeError
from diffkit.sampling.img2img import steps_run

diffusers = pytest.importorskip("diffusers")

from .test_pipeline_folders import FAMILIES, PROMPTS, TOLERANCE, as_images, saved
from .tiny_pipelines import ddpm_pipeline

IMG2IMG = {  # family → diffusers' image-to-image pipeline class over the same components
    "sd1": "StableDiffusionImg2ImgPipeline",
    "sd2_v_euler_trailing": "StableDiffusionImg2ImgPipeline",
    "sdxl": "StableDiffusionXLImg2ImgPipeline",
    "sd3": "StableDiffusion3Img2ImgPipeline",
    "flux": "FluxImg2ImgPipeline",
}


def images_like(latent, factor, seed=5):
    """Two smooth images [2, 3, H, W] in [−1, 1] of the pipeline's own size (H = factor · latent side)."""
    height, width = latent[1] * factor, latent[2] * factor
    coarse = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("strength", [0.6, 1.0])
@pytest.mark.parametrize("family", list(IMG2IMG))
def test_image_to_image_gives_diffusers_images(family, strength, kit, tmp_path):
    build, latent, _, _, scale = FAMILIES[family]
    pipe = build(kit, tmp_path)
    img2img = getattr(diffusers, IMG2IMG[family])(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    ours = diffkit.load_pretrained(saved(pipe, tmp_path))
    image = images_like(latent, pipe.vae_scale_factor)
    theirs = img2img(PROMPTS, image=(image + 1) / 2, strength=strength, num_inference_steps=5, guidance_scale=scale,
                     generator=torch.Generator().manual_seed(11), output_type="np").images
    samples = ours.sample(2, cond=PROMPTS, image=image, strength=strength, steps=5, guidance=scale,
                          generator=torch.Generator().manual_seed(11))
    assert theirs.std() > 0.01
    np.testing.assert_allclose(as_images(samples), theirs, rtol=0, atol=TOLERANCE)


def test_strength_selects_the_tail_of_the_grid(tmp_path):
    """⌊N·s⌋ steps run, from σ_{N − ⌊N·s⌋}; the sampler sees that tail and nothing above it."""
    ours = diffkit.load_pretrained(saved(ddpm_pipeline(diffusers.DDPMScheduler()), tmp_path))
    image = torch.zeros(1, 3, 8, 8)
    full = []
    ours.sample(1, steps=10, generator=0, callback=lambda info: full.append(info["sigma"]))
    for strength, kept in ((0.25, 2), (0.5, 5), (0.99, 9), (1.0, 10)):
        seen = []
        ours.sample(1, steps=10, image=image, strength=strength, generator=0,
                    callback=lambda info, seen=seen: seen.append(info["sigma"]))
        assert steps_run(10, strength) == kept and seen == full[10 - kept:]


def test_the_start_is_the_image_noised_to_the_tails_first_level(tmp_path):
    """The network's first input is x_t = (x0 + σ·z)/√(1 + σ²): the image on the VP path at the tail's first σ."""
    ours = diffkit.load_pretrained(saved(ddpm_pipeline(diffusers.DDPMScheduler()), tmp_path))
    image = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    z = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    inputs, sigmas = [], []
    ours.backbone.register_forward_pre_hook(lambda module, args: inputs.append(args[0].clone()))
    ours.sample(2, steps=10, image=image, strength=0.5, noise=z, generator=0,
                callback=lambda info: sigmas.append(info["sigma"]))
    sigma = sigmas[0]
    torch.testing.assert_close(inputs[0], (image + sigma * z) / math.sqrt(1 + sigma**2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"strength": 0.5}, ConfigError, "strength= goes with image="),
        ({"image": "cat.png"}, ConfigError, r"image must be a tensor \[n, C, H, W\]"),
        ({"image": torch.zeros(3, 3, 8, 8)}, ShapeError, r"image must be \[n=2, C, H, W\]"),
        ({"image": torch.zeros(2, 4, 8, 8)}, ShapeError, "image has 4 channel"),
        ({"image": torch.full((3, 8, 8), math.nan)}, ConfigError, "NaN"),
        ({"image": torch.zeros(2, 3, 8, 8, dtype=torch.uint8)}, ConfigError, "floating-point"),
        ({"image": torch.zeros(3, 8, 8), "strength": 0.0}, ConfigError, r"strength must be a finite number in \(0, 1\]"),
        ({"image": torch.zeros(3, 8, 8), "strength": 1.5}, ConfigError, "strength must be"),
        ({"image": torch.zeros(3, 8, 8), "strength": math.nan}, ConfigError, "strength must be"),
        ({"image": torch.zeros(3, 8, 8), "strength": 0.05}, ConfigError, r"runs no step .* steps ≥ 20"),
        ({"image": torch.zeros(3, 8, 8), "height": 16}, ConfigError, r"image= sets the size \(8×8 pixels\)"),
    ],
)
def test_bad_image_to_image_arguments_are_refused_before_any_work(kwargs, error, message, tmp_path):
    ours = diffkit.load_pretrained(saved(ddpm_pipeline(diffusers.DDPMScheduler()), tmp_path))
    calls = []
    ours.backbone.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises(error, match=message):
        ours.sample(2, steps=10, **kwargs)
    assert not calls


def test_one_image_for_every_sample_and_another_size(tmp_path):
    ours = diffkit.load_pretrained(saved(ddpm_pipeline(diffusers.DDPMScheduler()), tmp_path))
    image = torch.rand(3, 12, 20, generator=torch.Generator().manual_seed(3)) * 2 - 1  # not the pipeline's 8×8
    samples = ours.sample(3, steps=4, image=image, strength=0.5, generator=0)
    assert samples.shape == (3, 3, 12, 20) and torch.isfinite(samples).all()


def test_diffkit_sample_takes_a_start_image(tmp_path, capsys):
    from PIL import Image

    from diffkit.cli.commands import main

    folder = saved(ddpm_pipeline(diffusers.DDPMScheduler()), tmp_path)
    start = tmp_path / "start.png"
    Image.fromarray(np.full((12, 20), 128, dtype=np.uint8)).save(start)  # a grey picture, not the pipeline's 8×8
    out = tmp_path / "grid.png"
    assert main(["sample", "--from", str(folder), "--n", "1", "--steps", "4", "--image", str(start),
                 "--strength", "0.5", "--out", str(out)]) == 0
    with Image.open(out) as grid:
        assert grid.size[0] > grid.size[1]  # one 12×20 sample (in its padded frame)
    for bad, message in ((["--strength", "0.5"], "--strength goes with --image"),
                         (["--image", str(tmp_path / "missing.png")], "cannot read it as a picture"),
                         (["--image", str(start), "--strength", "2"], "strength must be")):
        assert main(["sample", "--from", str(folder), "--n", "2", "--out", str(tmp_path / "bad.png"), *bad]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()


def test_a_half_precision_autoencoder_encodes_the_images_in_its_dtype(kit, tmp_path):
    build, latent, _, _, _ = FAMILIES["sd1"]
    ours = diffkit.load_pretrained(saved(build(kit, tmp_path), tmp_path))
    image = images_like(latent, 2)[:1]
    plain = ours.encode_images(image, generator=torch.Generator().manual_seed(0))
    ours.autoencoder.to(torch.bfloat16)
    half = ours.encode_images(image, generator=torch.Generator().manual_seed(0))
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), plain, rtol=0.05, atol=0.05)
