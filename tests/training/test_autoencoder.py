"""Autoencoder training: the loss, PSNR, the latent scaling factor, determinism, bad input."""

from __future__ import annotations

import math

import attrs
import pytest
import torch

from diffkit.demos.shapes.recipe import SHAPES_AUTOENCODER
from diffkit.errors import ConfigError, ShapeError, UnknownNameError
from diffkit.models.autoencoders.kl import KLAutoencoder, KLConfig
from diffkit.training import (
    AutoencoderTrainConfig,
    encode_dataset,
    latent_scaling_factor,
    psnr,
    reconstruction_psnr,
    train_autoencoder,
    with_scaling_factor,
)
from diffkit.training.autoencoder import autoencoder_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_autoencoder(seed: int = 0, **changes) -> KLAutoencoder:
    torch.manual_seed(seed)  # the initial weights
    config = {
        "block_out_channels": (8, 8), "layers_per_block": 1, "latent_channels": 2, "norm_num_groups": 4,
        "mid_block_attention": False, "scaling_factor": 1.0,
    }
    return KLAutoencoder(KLConfig(**{**config, **changes}))


def blobs(n: int = 16, size: int = 8, seed: int = 1) -> torch.Tensor:
    """Squares of random colours on a dark background, [n, 3, size, size] in [−1, 1]."""
    g = torch.Generator().manual_seed(seed)
    images = torch.full((n, 3, size, size), -0.8)
    for i in range(n):
        top, left = torch.randint(0, size // 2, (2,), generator=g).tolist()
        side = int(torch.randint(2, size // 2 + 1, (1,), generator=g))
        images[i, :, top : top + side, left : left + side] = torch.rand(3, 1, 1, generator=g) * 2 - 1
    return images


def small_config(**changes) -> AutoencoderTrainConfig:
    base = {"steps": 30, "batch_size": 8, "lr": 3e-3, "warmup_steps": 3, "eval_images": 8}
    return AutoencoderTrainConfig(**{**base, **changes})


# -- PSNR -------------------------------------------------------------------------------------


def test_psnr_of_a_constant_offset_is_the_hand_value():
    x = torch.rand(3, 3, 4, 4) * 1.6 - 0.8  # away from ±1, so the offset is never clipped
    # an offset of 0.1 in [−1, 1] is 0.05 in [0, 1]: MSE = 0.0025, PSNR = 10·log10(1/0.0025) = 10·log10(400)
    assert torch.allclose(psnr(x, x + 0.1), torch.full((3,), 10 * math.log10(400.0), dtype=torch.float64))


def test_psnr_is_per_image_and_clips_the_reconstruction():
    x = torch.full((2, 1, 2, 2), -1.0)
    rec = x.clone()
    rec[0, 0, 0, 0] = 1.0  # one pixel of four off by 1 in [0, 1]: MSE = 1/4 → 10·log10(4)
    rec[1] = -3.0  # below the range: clipped to 0 in [0, 1], equal to x → +inf
    values = psnr(x, rec)
    assert values[0].item() == pytest.approx(10 * math.log10(4.0))
    assert values[1].item() == math.inf


def test_reconstruction_psnr_uses_the_posterior_mode_and_averages_images():
    ae = tiny_autoencoder()
    x = blobs(5)
    with torch.no_grad():
        rec = ae.decode(ae.encode(x).mode())
    ref = (x.double() + 1) / 2
    out = ((rec.double() + 1) / 2).clamp(0, 1)
    by_hand = [10 * math.log10(1 / float(((out[i] - ref[i]) ** 2).mean())) for i in range(5)]
    # batches of 2 (2 + 2 + 1 images) give the same mean over images, and no randomness is used
    assert reconstruction_psnr(ae, x, batch_size=2) == pytest.approx(sum(by_hand) / 5, rel=1e-6)
    assert reconstruction_psnr(ae, x) == pytest.approx(sum(by_hand) / 5, rel=1e-6)
    assert ae.training  # the mode is restored


def test_psnr_rejects_images_outside_minus_one_to_one():
    with pytest.raises(ConfigError, match=r"\[−1, 1\].*\[0, 255\]"):
        reconstruction_psnr(tiny_autoencoder(), torch.zeros(2, 3, 8, 8).index_fill_(1, torch.tensor([0]), 255.0))


# -- scaling factor ----------------------------------------------------------------------------


def test_scaling_factor_makes_the_latents_unit_std():
    ae = tiny_autoencoder()
    x = blobs(12)
    factor = latent_scaling_factor(ae, x, batch_size=5)
    with torch.no_grad():
        mu = ae.encode(x).mode().double()
    assert factor == pytest.approx(1 / mu.std(unbiased=False).item(), rel=1e-6)
    scaled = with_scaling_factor(ae, factor)
    latents = encode_dataset(scaled, x, batch_size=5)
    assert latents.shape == (12, 2, 4, 4)
    assert latents.double().std(unbiased=False).item() == pytest.approx(1.0, rel=1e-5)


def test_with_scaling_factor_is_a_copy_with_the_factor_in_its_config():
    ae = tiny_autoencoder(shift_factor=0.3)
    copy = with_scaling_factor(ae, 2.5)
    assert copy is not ae and copy.config == attrs.evolve(ae.config, scaling_factor=2.5)
    assert ae.config.scaling_factor == 1.0  # the original is unchanged
    for (name, a), (_, b) in zip(ae.state_dict().items(), copy.state_dict().items()):
        assert torch.equal(a, b), name
        assert a.data_ptr() != b.data_ptr()  # its own weights, not shared


def test_scaled_latents_round_trip_through_decode_latents():
    ae = tiny_autoencoder(shift_factor=0.2).eval()
    scaled = with_scaling_factor(ae, 3.0).eval()
    x = blobs(4)
    latents = encode_dataset(scaled, x)
    with torch.no_grad():
        mu = ae.encode(x).mode()
        assert torch.allclose(latents, (mu - 0.2) * 3.0, atol=1e-6)  # (z − shift)·scale
        # decoding the scaled latents with the scaled model gives the unscaled model's decoding of μ
        assert torch.allclose(scaled.decode_latents(latents), ae.decode(mu), atol=1e-5)
        assert torch.allclose(scaled.encode_latents(x, sample=False), latents)


def test_encode_dataset_samples_reproducibly_with_a_generator():
    ae = tiny_autoencoder()
    x = blobs(4)
    a = encode_dataset(ae, x, sample=True, generator=torch.Generator().manual_seed(3))
    b = encode_dataset(ae, x, sample=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert not torch.equal(a, encode_dataset(ae, x))  # the posterior of an untrained model is wide


def test_a_non_positive_scaling_factor_is_rejected():
    with pytest.raises(ConfigError, match="scaling_factor"):
        with_scaling_factor(tiny_autoencoder(), 0.0)


# -- the loss and training ----------------------------------------------------------------------


def test_the_loss_is_reconstruction_plus_weighted_kl_per_pixel():
    ae = tiny_autoencoder()
    x = blobs(4)
    config = AutoencoderTrainConfig(loss="l1+mse", kl_weight=0.01)
    loss = autoencoder_loss(ae, x, config, generator=torch.Generator().manual_seed(5))
    rec, posterior = ae(x, generator=torch.Generator().manual_seed(5))
    diff = rec - x
    per_image = (diff.abs() + diff**2).sum(dim=(1, 2, 3)) + 0.01 * posterior.kl()
    assert loss.item() == pytest.approx((per_image.mean() / (3 * 8 * 8)).item(), rel=1e-5)


def test_training_reduces_the_reconstruction_error():
    ae = tiny_autoencoder()
    x = blobs(16)
    before = reconstruction_psnr(ae, x)
    result = train_autoencoder(ae, x, small_config(), progress=False)
    assert result.steps == 30 and result.seconds > 0
    assert result.autoencoder is ae and not ae.training
    assert result.final_loss < 0.5 * result.initial_loss
    assert result.train_psnr == pytest.approx(reconstruction_psnr(ae, x[:8]))
    assert reconstruction_psnr(ae, x) > before + 3  # dB


def test_training_is_deterministic_given_the_seed():
    x = blobs(16)
    runs = []
    for seed in (0, 0, 1):
        ae = tiny_autoencoder()
        train_autoencoder(ae, x, small_config(steps=5, seed=seed), progress=False)
        runs.append(ae.state_dict())
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_ema_returns_an_averaged_copy():
    ae = tiny_autoencoder()
    result = train_autoencoder(ae, blobs(16), small_config(steps=5, ema_decay=0.9), progress=False)
    assert result.autoencoder is not ae
    averaged, trained = result.autoencoder.state_dict(), ae.state_dict()
    assert any(not torch.equal(averaged[k], trained[k]) for k in trained)


def test_the_learning_rate_warms_up_then_decays_to_the_floor():
    config = AutoencoderTrainConfig(steps=100, lr=1e-3, warmup_steps=10, min_lr_ratio=0.1)
    assert config.learning_rate(0) == pytest.approx(1e-4)
    assert config.learning_rate(9) == pytest.approx(1e-3)
    assert config.learning_rate(55) == pytest.approx(1e-4 + 0.9e-3 * 0.5)  # half-way through the cosine
    assert config.learning_rate(100) == pytest.approx(1e-4)


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("steps", 0), ("batch_size", 0), ("batch_size", 2.5), ("lr", -1e-3), ("lr", math.nan),
        ("warmup_steps", -1), ("kl_weight", -1e-6), ("grad_clip", math.inf), ("seed", -1),
        ("ema_decay", 1.0), ("min_lr_ratio", 2.0), ("steps", True),
    ],
)
def test_bad_config_values_are_rejected(field, value):
    with pytest.raises(ConfigError, match=field):
        AutoencoderTrainConfig(**{field: value})


def test_an_unknown_loss_suggests_the_close_one():
    with pytest.raises(UnknownNameError, match="did you mean 'mse'"):
        AutoencoderTrainConfig(loss="msee")
    with pytest.raises(UnknownNameError, match=r"did you mean 'l1\+mse'"):
        AutoencoderTrainConfig(loss="l1mse")


def test_images_not_divisible_by_the_factor_raise_a_shape_error():
    ae = tiny_autoencoder(block_out_channels=(8, 8, 8))  # f = 4
    images = torch.zeros(4, 3, 10, 12)
    for call in (
        lambda: train_autoencoder(ae, images, small_config(), progress=False),
        lambda: reconstruction_psnr(ae, images),
        lambda: latent_scaling_factor(ae, images),
        lambda: encode_dataset(ae, images),
    ):
        with pytest.raises(ShapeError, match=r"10×12.*f = 4.*multiples of 4"):
            call()


@pytest.mark.parametrize(
    "images",
    [torch.zeros(4, 1, 8, 8), torch.zeros(3, 8, 8), torch.zeros(0, 3, 8, 8), torch.zeros(4, 3, 8, 8, dtype=torch.long)],
)
def test_images_of_the_wrong_layout_raise_a_shape_error(images):
    with pytest.raises(ShapeError, match=r"\[N"):
        train_autoencoder(tiny_autoencoder(), images, small_config(), progress=False)


def test_training_rejects_unscaled_images_and_a_wrong_config_type():
    with pytest.raises(ConfigError, match=r"\[−1, 1\]"):
        train_autoencoder(tiny_autoencoder(), blobs(4) * 127.5 + 127.5, small_config(), progress=False)
    with pytest.raises(ConfigError, match="AutoencoderTrainConfig"):
        train_autoencoder(tiny_autoencoder(), blobs(4), {"steps": 3}, progress=False)  # type: ignore[arg-type]


# -- the preset ---------------------------------------------------------------------------------


def test_the_shapes_preset_maps_32x32x3_to_8x8x4():
    config = KLConfig.from_dict(SHAPES_AUTOENCODER)
    assert config.downsampling_factor == 4 and config.latent_channels == 4
    ae = KLAutoencoder(config)
    with torch.no_grad():
        posterior = ae.encode(torch.zeros(2, 3, 32, 32))
        assert posterior.mean.shape == (2, 4, 8, 8)
        assert ae.decode(posterior.mode()).shape == (2, 3, 32, 32)


def test_the_progress_bar_names_the_run_and_shows_the_loss(capsys):
    train_autoencoder(tiny_autoencoder(), blobs(8), small_config(steps=2, eval_images=0), progress=True)
    err = capsys.readouterr().err
    assert "autoencoder" in err and "loss=" in err
