"""The KL autoencoder (Rombach et al. 2022): parameter count of KL-f8, shapes for f = 2^(L−1),
the diagonal-Gaussian posterior, precision, the registry entry, and equivalence with diffusers'
AutoencoderKL."""

from __future__ import annotations

import attrs
import numpy as np
import pytest
import torch

from diffkit.errors import ConfigError, ShapeError, UnknownNameError
from diffkit.io.diffusers.kl import (
    config_from_diffusers,
    convert_diffusers_state_dict,
    kl_from_diffusers,
    load_diffusers_kl,
)
from diffkit.models.autoencoders import KL_PRESETS, DiagonalGaussian, KLAutoencoder, KLConfig
from tests.model_checks import check_registered
from tests.model_helpers import randomize

TINY = KLConfig(block_out_channels=(8, 16, 16), layers_per_block=1, latent_channels=3, norm_num_groups=4)


def images(config: KLConfig, batch: int = 2, size: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, config.in_channels, size, size, generator=g) * 2 - 1  # in [−1, 1]


# -- parameter count ------------------------------------------------------------------------------


def formula_count(widths, layers, *, z=4, c_in=3, c_out=3) -> int:
    """The architecture's parameters, from LDM's Encoder/Decoder description (App. G)."""

    def conv(cin, cout, k=3):
        return cin * cout * k * k + cout

    def norm(c):
        return 2 * c  # group norm: scale and shift

    def res(cin, cout):  # GN, conv, GN, conv, 1×1 shortcut when the width changes
        return norm(cin) + conv(cin, cout) + norm(cout) + conv(cout, cout) + (conv(cin, cout, 1) if cin != cout else 0)

    def attn(c):  # GN, q, k, v, output projection (C×C + bias each)
        return norm(c) + 4 * (c * c + c)

    top = widths[-1]
    mid = 2 * res(top, top) + attn(top)
    encoder, prev = conv(c_in, widths[0]), widths[0]
    for i, w in enumerate(widths):
        encoder += res(prev, w) + (layers - 1) * res(w, w) + (conv(w, w) if i < len(widths) - 1 else 0)
        prev = w
    encoder += mid + norm(top) + conv(top, 2 * z)
    decoder, prev = conv(z, top) + mid, top
    for i, w in enumerate(reversed(widths)):
        decoder += res(prev, w) + layers * res(w, w) + (conv(w, w) if i < len(widths) - 1 else 0)
        prev = w
    decoder += norm(widths[0]) + conv(widths[0], c_out)
    quant = conv(2 * z, 2 * z, 1) + conv(z, z, 1)
    return encoder + decoder + quant


def test_kl_f8_has_stable_diffusions_83_653_863_parameters():
    with torch.device("meta"):  # counts without allocating the weights
        model = KLAutoencoder(KL_PRESETS["kl-f8"])
    assert model.num_parameters() == formula_count((128, 256, 512, 512), 2) == 83_653_863
    assert KLConfig() == KL_PRESETS["kl-f8"] and KLConfig().scaling_factor == 0.18215


def test_tiny_count_matches_the_formula():
    cfg = attrs.evolve(TINY, in_channels=1, out_channels=2)
    assert KLAutoencoder(cfg).num_parameters() == formula_count((8, 16, 16), 1, z=3, c_in=1, c_out=2)


# -- configuration --------------------------------------------------------------------------------


def test_presets_are_frozen_values():
    cfg = KL_PRESETS["kl-f8"]
    assert cfg.block_out_channels == (128, 256, 512, 512) and cfg.downsampling_factor == 8
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.latent_channels = 8  # type: ignore[misc]
    changed = KLConfig.from_preset("kl-f8", latent_channels=16)
    assert changed.latent_channels == 16 and changed.block_out_channels == cfg.block_out_channels
    assert KLConfig.from_dict(changed.to_dict()) == changed  # lists from JSON become tuples
    with pytest.raises(UnknownNameError, match="kl-f8"):
        KLConfig.from_preset("kl_f8")
    with pytest.raises(UnknownNameError, match="latent_channels"):
        KLConfig.from_dict({"latent_channel": 4})


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"block_out_channels": ()}, "block_out_channels must be a non-empty tuple"),
        ({"block_out_channels": (8, 0)}, "block_out_channels must be a non-empty tuple"),
        ({"block_out_channels": (8, 10)}, "norm_num_groups 4 must divide"),
        ({"layers_per_block": 0}, "layers_per_block must be an integer ≥ 1"),
        ({"latent_channels": True}, "latent_channels must be an integer"),
        ({"scaling_factor": 0}, "scaling_factor must be a finite number > 0"),
        ({"double_z": 1}, "double_z must be True or False"),
        ({"dropout": 1.0}, r"dropout must be a finite number in \[0, 1\)"),
    ],
)
def test_bad_configs_are_rejected(fields, words):
    with pytest.raises(ConfigError, match=words):
        KLConfig(**{**TINY.to_dict(), **fields})


# -- shapes and channels ----------------------------------------------------------------------------


@pytest.mark.parametrize("widths", [(8,), (8, 8), (8, 16, 16, 16)])
def test_encode_decode_shapes_for_f_2_to_the_levels_minus_1(widths):
    cfg = attrs.evolve(TINY, block_out_channels=widths, in_channels=1, out_channels=2, latent_channels=5)
    model = KLAutoencoder(cfg)
    f = 2 ** (len(widths) - 1)
    assert model.downsampling_factor == f
    x = images(cfg, size=16)
    with torch.no_grad():
        posterior = model.encode(x)
        assert posterior.mean.shape == posterior.logvar.shape == (2, 5, 16 // f, 16 // f)
        assert model.decode(posterior.mode()).shape == (2, 2, 16, 16)
        assert model.encode(images(cfg, size=8 * f)).mean.shape == (2, 5, 8, 8)  # non-square is fine too
        assert model.encode(torch.zeros(1, 1, 2 * f, 4 * f)).mean.shape == (1, 5, 2, 4)


def test_shape_errors():
    model = KLAutoencoder(TINY)
    with pytest.raises(ShapeError, match="divisible by 4"):
        model.encode(torch.zeros(1, 3, 10, 16))
    with pytest.raises(ShapeError, match=r"\[B, 3, H, W\]"):
        model.encode(torch.zeros(1, 4, 16, 16))
    with pytest.raises(ShapeError, match=r"\[B, 3, h, w\]"):
        model.decode(torch.zeros(1, 4, 4, 4))


def test_latent_scaling_round_trip_and_forward():
    cfg = attrs.evolve(TINY, scaling_factor=0.5, shift_factor=0.25)
    model = randomize(KLAutoencoder(cfg)).eval()
    x = images(cfg)
    with torch.no_grad():
        posterior = model.encode(x)
        latents = model.encode_latents(x, sample=False)
        torch.testing.assert_close(latents, (posterior.mean - 0.25) * 0.5)
        torch.testing.assert_close(model.decode_latents(latents), model.decode(posterior.mean))
        recon, post = model(x, sample_posterior=False)
        torch.testing.assert_close(recon, model.decode(posterior.mean))
        torch.testing.assert_close(post.logvar, posterior.logvar)
        g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
        torch.testing.assert_close(model(x, generator=g1)[0], model.decode(posterior.sample(g2)))


def test_without_attention_or_quant_convs_and_deterministic_posterior():
    cfg = attrs.evolve(TINY, mid_block_attention=False, use_quant_conv=False, double_z=False)
    model = KLAutoencoder(cfg)
    assert model.quant_conv is None and model.encoder.mid_block.attention is None
    assert not any("attention" in k or "quant" in k for k in model.state_dict())
    with torch.no_grad():
        posterior = model.encode(images(cfg))
    assert posterior.mean.shape == (2, 3, 4, 4) and posterior.deterministic
    torch.testing.assert_close(posterior.sample(torch.Generator().manual_seed(0)), posterior.mean)
    assert torch.equal(posterior.kl(), torch.zeros(2))


# -- the posterior ------------------------------------------------------------------------------------


def test_posterior_sampling_is_reproducible_with_a_generator():
    moments = torch.randn(2, 6, 3, 3, generator=torch.Generator().manual_seed(0))
    post = DiagonalGaussian(moments)
    a = post.sample(torch.Generator().manual_seed(7))
    b = post.sample(torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, post.sample(torch.Generator().manual_seed(8)))
    eps = torch.randn(2, 3, 3, 3, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, moments[:, :3] + torch.exp(0.5 * moments[:, 3:]) * eps)
    assert torch.equal(post.mode(), moments[:, :3])
    # One generator per sample: sample k does not depend on the batch it is in.
    rows = post.sample([torch.Generator().manual_seed(s) for s in (3, 4)])
    alone = DiagonalGaussian(moments[1:]).sample([torch.Generator().manual_seed(4)])
    assert torch.equal(rows[1:], alone)


def test_logvar_is_clamped():
    moments = torch.zeros(1, 2, 1, 3)
    moments[0, 1, 0] = torch.tensor([-1000.0, 5.0, 1000.0])  # log σ² far outside [−30, 20]
    post = DiagonalGaussian(moments)
    assert post.logvar.flatten().tolist() == [-30.0, 5.0, 20.0]
    assert torch.isfinite(post.std).all() and torch.isfinite(post.kl()).all()
    half = DiagonalGaussian(moments.half())  # exp(½·20) = 22026 fits fp16
    assert torch.isfinite(half.std).all()


def test_kl_and_nll_match_the_gaussian_formulas_in_float64():
    rng = np.random.default_rng(0)
    mu, logvar, mu_p, logvar_p = (rng.normal(size=(2, 3, 2, 2)) for _ in range(4))
    z = rng.normal(size=(2, 3, 2, 2))
    q = DiagonalGaussian(torch.from_numpy(np.concatenate([mu, logvar], axis=1)))
    p = DiagonalGaussian(torch.from_numpy(np.concatenate([mu_p, logvar_p], axis=1)))
    var, var_p = np.exp(logvar), np.exp(logvar_p)
    # KL(N(μ, σ²) ‖ N(μ_p, σ_p²)) = log(σ_p/σ) + (σ² + (μ − μ_p)²)/(2σ_p²) − ½, summed per sample
    kl_p = (0.5 * (logvar_p - logvar) + (var + (mu - mu_p) ** 2) / (2 * var_p) - 0.5).sum(axis=(1, 2, 3))
    kl_0 = (-0.5 * logvar + (var + mu**2) / 2 - 0.5).sum(axis=(1, 2, 3))
    log_q = -0.5 * (np.log(2 * np.pi * var) + (z - mu) ** 2 / var)
    np.testing.assert_allclose(q.kl().numpy(), kl_0, rtol=1e-12)
    np.testing.assert_allclose(q.kl(p).numpy(), kl_p, rtol=1e-12)
    np.testing.assert_allclose(q.nll(torch.from_numpy(z)).numpy(), -log_q.sum(axis=(1, 2, 3)), rtol=1e-12)


# -- training and precision -----------------------------------------------------------------------------


def test_reconstruction_plus_kl_loss_reaches_every_parameter():
    model = randomize(KLAutoencoder(TINY), std=0.1)
    x = images(TINY)
    recon, posterior = model(x, generator=torch.Generator().manual_seed(0))
    loss = (recon - x).abs().mean() + 1e-6 * posterior.kl().mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() and g.any() for g in grads.values())


def test_bf16_autocast_and_bf16_weights():
    model = randomize(KLAutoencoder(TINY), std=0.1).eval()
    x = images(TINY)
    with torch.no_grad():
        ref_post = model.encode(x)
        reference = model.decode(ref_post.mean)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            post = model.encode(x)
            out = model.decode(post.mean)
        model = model.to(torch.bfloat16)
        pure_post = model.encode(x.bfloat16())
        pure = model.decode(pure_post.mean)
        sample = pure_post.sample(torch.Generator().manual_seed(0))
    assert pure.dtype == pure_post.mean.dtype == sample.dtype == torch.bfloat16
    for got, want in ((out, reference), (pure, reference), (post.mean, ref_post.mean), (pure_post.mean, ref_post.mean)):
        assert torch.isfinite(got).all()
        assert (got.float() - want).norm() <= 0.05 * want.norm()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp32_and_bf16_match_cpu():
    model = randomize(KLAutoencoder(TINY), std=0.1).eval()
    x = images(TINY, size=32)
    with torch.no_grad():
        reference = model.decode(model.encode(x).mean)
        model.cuda()
        fp32 = model.decode(model.encode(x.cuda()).mean).cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model.decode(model.encode(x.cuda()).mean).float().cpu()
    torch.testing.assert_close(fp32, reference, rtol=1e-3, atol=1e-3)  # TF32 may be on
    assert (bf16 - reference).norm() <= 0.05 * reference.norm()


# -- registry -------------------------------------------------------------------------------------------


def test_registered_as_autoencoder_kl():
    entry = check_registered("autoencoder", "kl", KLAutoencoder, TINY, ("kl-f8", {"latent_channels": 16}),
                             ("latent_channel", "latent_channels"))
    assert "Rombach" in entry.metadata["paper"]


# -- diffusers ------------------------------------------------------------------------------------------


def diffusers_kl(**config):
    diffusers = pytest.importorskip("diffusers")
    settings = {
        "block_out_channels": (8, 16, 16), "layers_per_block": 2, "latent_channels": 3, "norm_num_groups": 4,
        "down_block_types": ("DownEncoderBlock2D",) * 3, "up_block_types": ("UpDecoderBlock2D",) * 3,
        "in_channels": 3, "out_channels": 2, "scaling_factor": 0.3,
    }
    return randomize(diffusers.AutoencoderKL(**{**settings, **config}), seed=3, std=0.3).eval()


@pytest.mark.parametrize(
    "config",
    [{}, {"block_out_channels": (8, 8), "down_block_types": ("DownEncoderBlock2D",) * 2,
          "up_block_types": ("UpDecoderBlock2D",) * 2, "layers_per_block": 1, "shift_factor": 0.1}],
    ids=["f4", "f2"],
)
def test_outputs_agree_with_diffusers(config, tmp_path):
    theirs = diffusers_kl(**config)
    ours = kl_from_diffusers(theirs)
    assert ours.config.scaling_factor == 0.3 and ours.config.shift_factor == config.get("shift_factor", 0.0)
    x = images(ours.config, size=16)
    side = 16 // ours.downsampling_factor
    z = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected = theirs.encode(x).latent_dist
        decoded = theirs.decode(z).sample
        posterior = ours.encode(x)
        got = ours.decode(z)
    assert decoded.abs().max() > 1 and expected.mean.abs().max() > 1  # not trivially small
    torch.testing.assert_close(posterior.mean, expected.mean, rtol=0, atol=1e-5)
    torch.testing.assert_close(posterior.logvar, expected.logvar, rtol=0, atol=1e-5)
    torch.testing.assert_close(got, decoded, rtol=0, atol=1e-5)
    theirs.save_pretrained(tmp_path)  # a saved folder: config.json + safetensors
    with torch.no_grad():
        torch.testing.assert_close(load_diffusers_kl(tmp_path).decode(z), decoded, rtol=0, atol=1e-5)


def test_deprecated_attention_names_are_accepted():
    theirs = diffusers_kl()
    config = config_from_diffusers(theirs.config)
    modern = dict(theirs.state_dict())
    old = {}
    for key, value in modern.items():  # the pre-refactor layout, q/k/v as 1×1 convolutions
        for new, name in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")):
            if f".attentions.0.{new}." in key:
                key = key.replace(new, name)
                value = value[:, :, None, None] if value.ndim == 2 else value
        old[key] = value
    converted, expected = convert_diffusers_state_dict(old, config), convert_diffusers_state_dict(modern, config)
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[k], expected[k]) for k in expected)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"act_fn": "gelu"}, "act_fn='gelu'"),
        ({"down_block_types": ("DownBlock2D",) * 2}, "down_block_types"),
        ({"use_post_quant_conv": False}, "use_quant_conv and use_post_quant_conv differ"),
        ({"latents_mean": [0.0] * 4}, "latents_mean is set"),
        ({"encoder_hid_dim": 8}, "unknown keys .*: encoder_hid_dim"),
        ({"_class_name": "AutoencoderTiny"}, "not a diffusers KL autoencoder config"),
    ],
)
def test_config_conversion_rejects_what_kl_does_not_have(change, words):
    config = {"_class_name": "AutoencoderKL", "block_out_channels": [8, 16],
              "down_block_types": ["DownEncoderBlock2D"] * 2, "up_block_types": ["UpDecoderBlock2D"] * 2,
              "norm_num_groups": 4, **change}
    with pytest.raises(ConfigError, match=words):
        config_from_diffusers(config)


def test_sd_vae_config_is_the_kl_f8_preset():
    sd_vae = {  # CompVis/stable-diffusion-v1-4, vae/config.json
        "_class_name": "AutoencoderKL", "_diffusers_version": "0.2.2", "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3, "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
        "out_channels": 3, "sample_size": 512, "up_block_types": ["UpDecoderBlock2D"] * 4,
    }
    assert config_from_diffusers(sd_vae) == KL_PRESETS["kl-f8"]
