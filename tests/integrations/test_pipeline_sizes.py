"""``Pipeline.sample(height=, width=)``: other image sizes than a pipeline's own, as diffusers' pipelines take them.

The text-to-image families sample a 16×24 image (latents 8×12 through the tiny VAEs' ×2) and
must give diffusers' images for ``height=16, width=24`` from the same latents to 1e-4 — which
also checks what follows the size: Flux's dynamic shift (its grid is placed by the token
count), SDXL's time ids (original and target size), PixArt's recomputed and SD3's cropped
position embeddings. Sizes a pipeline cannot take are refused before any work, naming the
valid ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import diffkit
from diffkit.errors import ConfigError
from diffkit.models.backbones.sizes import SizeRule, sample_shape_at, spacing_options_at

diffusers = pytest.importorskip("diffusers")

from .test_pipeline_folders import FAMILIES, PROMPTS, TOLERANCE, _flux_noise, as_images, saved
from .tiny_pipelines import ddpm_pipeline, dit_pipeline

# family → (height, width) in pixels; the tiny VAEs downsample ×2. Flux's own latent is 128² (1024 px
# through a real ×8 VAE): a 96×160 image, latents 48×80, 960 tokens instead of 4096.
SIZES = {"flux": (96, 160)}
DEFAULT_SIZE = (16, 24)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_another_size_gives_diffusers_images_at_that_size(family, kit, tmp_path):
    build, latent, extra, _, scale = FAMILIES[family]
    pipe = build(kit, tmp_path)
    ours = diffkit.load_pretrained(saved(pipe, tmp_path))
    height, width = SIZES.get(family, DEFAULT_SIZE)
    factor = pipe.vae_scale_factor
    noise = torch.randn((2, latent[0], height // factor, width // factor), generator=torch.Generator().manual_seed(9))
    latents = _flux_noise(pipe, noise) if family == "flux" else noise
    theirs = pipe(PROMPTS, height=height, width=width, num_inference_steps=4, guidance_scale=scale, latents=latents,
                  output_type="np", **extra).images
    images = ours.sample(2, cond=PROMPTS, guidance=scale, steps=4, noise=noise, height=height, width=width)
    assert images.shape == (2, 3, height, width) and theirs.shape == (2, height, width, 3)
    assert theirs.std() > 0.01
    np.testing.assert_allclose(as_images(images), theirs, rtol=0, atol=TOLERANCE)


def test_the_own_size_asked_for_explicitly_changes_nothing(kit, tmp_path):
    build, latent, _, _, scale = FAMILIES["sdxl"]
    ours = diffkit.load_pretrained(saved(build(kit, tmp_path), tmp_path))
    noise = torch.randn((1, *latent), generator=torch.Generator().manual_seed(3))
    plain = ours.sample(1, cond=PROMPTS[:1], guidance=scale, steps=2, noise=noise)
    sized = ours.sample(1, cond=PROMPTS[:1], guidance=scale, steps=2, noise=noise, height=16, width=16)
    assert torch.equal(plain, sized)
    assert ours.conditioner.for_image_size(16, 16) is ours.conditioner
    other = ours.conditioner.for_image_size(24, 40)
    assert other.config.original_size == other.config.target_size == (24, 40)
    assert other.text_encoder is ours.conditioner.text_encoder  # a view: the encoders are shared
    assert ours.conditioner.config.target_size == (16, 16)  # the pipeline's own is unchanged


def test_a_pixel_unet_pipeline_samples_other_sizes(tmp_path):
    ours = diffkit.load_pretrained(saved(ddpm_pipeline(diffusers.DDPMScheduler()), tmp_path))
    images = ours.sample(2, steps=3, generator=0, height=12, width=20)  # the UNet halves once: even sides
    assert images.shape == (2, 3, 12, 20) and torch.isfinite(images).all()
    with pytest.raises(ConfigError, match=r"multiples of 2 pixels .*got 12×7"):
        ours.sample(1, steps=3, height=12, width=7)


def test_dit_samples_only_at_its_own_size(tmp_path):
    ours = diffkit.load_pretrained(saved(dit_pipeline(diffusers.DPMSolverMultistepScheduler()), tmp_path))
    with pytest.raises(ConfigError, match=r"samples only at 16×16 pixels: its DiT backbone takes only the size"):
        ours.sample(1, cond=[0], steps=2, height=32)


@pytest.mark.parametrize(
    "size, message",
    [
        ({"height": 18}, r"multiples of 4 pixels .*\(latents multiples of 2, through the autoencoder's ×2\); got 18×16"),
        ({"width": 34}, r"multiples of 2 up to 32 pixels"),  # SD3's position table: 16 patches a side
        ({"height": 0}, r"height \(pixels\) must be an integer in \[1, "),
        ({"height": True}, r"height \(pixels\) must be an integer"),
        ({"width": 16.0}, r"width \(pixels\) must be an integer"),
        ({"width": 10**9}, r"width \(pixels\) must be an integer"),
    ],
)
def test_sizes_a_pipeline_cannot_take_are_refused_before_any_work(size, message, kit, tmp_path):
    family = "sd3" if "width" in size and size["width"] == 34 else "sd1"
    ours = diffkit.load_pretrained(saved(FAMILIES[family][0](kit, tmp_path), tmp_path))
    calls = []
    ours.backbone.register_forward_pre_hook(lambda *args: calls.append(1))
    with pytest.raises(ConfigError, match=message):
        ours.sample(1, cond=PROMPTS[:1], steps=2, **size)
    assert not calls


def test_the_size_rule_and_flux_token_count():
    rule = SizeRule(2, max_side=16)
    assert rule.admits(8, 12) and not rule.admits(8, 11) and not rule.admits(18, 8)
    assert rule.describe(4) == "multiples of 8 up to 64"
    own, other = (16, 128, 128), (16, 48, 80)
    assert spacing_options_at({"image_seq_len": 4096, "t_end": "1/steps"}, own, other) == {
        "image_seq_len": 960, "t_end": "1/steps"}  # (48/2)·(80/2) tokens, as FluxPipeline counts them
    assert spacing_options_at({"rho": 7.0}, own, other) == {"rho": 7.0}


def test_samples_that_are_not_images_keep_their_shape():
    assert sample_shape_at((2,), None, None, None, None) == (2,)
    with pytest.raises(ConfigError, match=r"height= and width= size images \(C, H, W\); .*shape \(2,\)"):
        sample_shape_at((2,), None, None, 4, None)


def test_diffkit_sample_takes_height_and_width(kit, tmp_path, capsys):
    from PIL import Image

    from diffkit.cli.commands import main

    folder = saved(FAMILIES["sd1"][0](kit, tmp_path), tmp_path)
    out = tmp_path / "grid.png"
    assert main(["sample", "--from", str(folder), "--prompt", "a red cat", "--n", "1", "--steps", "2",
                 "--height", "16", "--width", "40", "--out", str(out)]) == 0
    with Image.open(out) as image:
        width, height = image.size
    assert width > 2 * height  # a 16×40 sample in its padded frame (the pipeline's own is square)
    assert main(["sample", "--from", str(folder), "--prompt", "a red cat", "--n", "1", "--steps", "2",
                 "--height", "18", "--out", str(tmp_path / "bad.png")]) == 2
    assert "multiples of 4 pixels" in capsys.readouterr().err
    assert not (tmp_path / "bad.png").exists()
