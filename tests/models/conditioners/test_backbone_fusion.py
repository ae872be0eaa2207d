"""Records into backbones: class labels (unet), context + mask (latent_unet), vector added to
the time embedding (unet, dit, latent_unet), concat channels (unet, latent_unet), and the
check that a backbone can use what a record carries."""

from __future__ import annotations

import pytest
import torch

import diffkit
from diffkit.errors import ConfigError, ShapeError
from diffkit.models.backbones.dit import DiT, DiTConfig
from diffkit.models.backbones.embeddings import class_labels
from diffkit.models.backbones.latent_unet import PRESETS as LATENT_PRESETS
from diffkit.models.backbones.latent_unet import LatentUNet, cross_attention_context
from diffkit.models.backbones.unet import UNet, UNetConfig
from diffkit.models.conditioners import Conditioning, TextConfig
from tests.model_helpers import perturb

UNET = UNetConfig(
    sample_size=8,
    block_out_channels=(8, 16),
    layers_per_block=1,
    attention_levels=(),
    mid_attention=False,
    norm_groups=4,
    dropout=0.0,
)
LATENT = LATENT_PRESETS["tiny"]


def randomized(model: torch.nn.Module, scale: float = 0.1) -> torch.nn.Module:
    """Perturbed weights: the zero-initialised output layers would hide the conditioning."""
    return perturb(model, scale=scale).eval()


def noise(*shape: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_backbones_read_the_record_by_attribute():
    labels = torch.tensor([1, 4])
    assert torch.equal(class_labels(Conditioning(labels=labels), 2, 9, torch.device("cpu")), labels)
    no_labels = Conditioning(vector=torch.zeros(2, 3))
    assert torch.equal(class_labels(no_labels, 2, 9, torch.device("cpu")), torch.tensor([9, 9]))
    context, mask = noise(2, 5, 32), torch.tensor([[True] * 5, [True, True, False, False, False]])
    got_context, got_mask = cross_attention_context(Conditioning(context=context, mask=mask), 2, 32)
    assert got_context is context and got_mask is mask


def test_class_unet_on_class_label_records():
    model = randomized(UNet(UNetConfig(**{**UNET.to_dict(), "num_classes": 5})))
    conditioner = diffkit.build("conditioner", "class_label", num_classes=5).eval()
    x, t = noise(3, 3, 8, 8), torch.tensor([1.0, 50.0, 900.0])
    record = conditioner([0, 4, 2])
    with torch.no_grad():
        torch.testing.assert_close(model(x, t, record), model(x, t, torch.tensor([0, 4, 2])), rtol=0, atol=0)
        torch.testing.assert_close(model(x, t, conditioner.null(3)), model(x, t, None), rtol=0, atol=0)
        assert not torch.allclose(model(x, t, record), model(x, t, None))


def test_latent_unet_on_text_records():
    model = randomized(LatentUNet(LATENT))
    torch.manual_seed(0)
    text = diffkit.build("conditioner", "text", **TextConfig(width=32, depth=1, heads=2, max_length=12,
                                                             context_dim=LATENT.context_dim).to_dict()).eval()
    x, t = noise(2, 4, 16, 16), torch.tensor([3.0, 700.0])
    record = text(["a cat", "a much longer prompt"])
    with torch.no_grad():
        out = model(x, t, record)  # the record's vector is ignored: this model has vector_dim = 0
        torch.testing.assert_close(out, model(x, t, {"context": record.context, "mask": record.mask}), rtol=0, atol=0)
        assert not torch.allclose(out, model(x, t, text.null(2)))
        # Only the kept tokens count: a context that differs on masked tokens gives the same output.
        scrambled = record.context.masked_fill(~record.mask[:, :, None], 7.0)
        torch.testing.assert_close(model(x, t, record.replace(context=scrambled)), out, rtol=1e-5, atol=1e-5)


def test_vector_is_added_to_the_time_embedding():
    model = randomized(UNet(UNetConfig(**{**UNET.to_dict(), "vector_dim": 6})))
    assert model.vector_embed.in_features == 6 and model.vector_embed.out_features == UNET.embed_dim
    x, t, v = noise(2, 3, 8, 8), torch.tensor([5.0, 500.0]), noise(2, 6, seed=2)
    with torch.no_grad():
        e = model.embed(t, Conditioning(vector=v))
        torch.testing.assert_close(e, model.embed(t) + model.vector_embed(v))  # e = e_t + W·v + b
        with_vector = model(x, t, Conditioning(vector=v))
        assert not torch.allclose(with_vector, model(x, t))
        model.vector_embed.weight.zero_()
        model.vector_embed.bias.zero_()
        torch.testing.assert_close(model(x, t, Conditioning(vector=v)), model(x, t), rtol=0, atol=0)
    with pytest.raises(ShapeError, match=r"\[B, vector_dim\] = \[2, 6\]"):
        model(x, t, Conditioning(vector=noise(2, 5)))


def test_vector_in_dit_and_latent_unet():
    dit = randomized(DiT(DiTConfig(input_size=8, patch_size=2, hidden_size=32, depth=1, num_heads=4,
                                   num_classes=0, vector_dim=6)), scale=0.2)
    latent = randomized(LatentUNet(LATENT.__class__(**{**LATENT.to_dict(), "vector_dim": 6})))
    v = noise(2, 6, seed=2)
    with torch.no_grad():
        x, t = noise(2, 4, 8, 8), torch.tensor([5.0, 500.0])
        assert not torch.allclose(dit(x, t, Conditioning(vector=v)), dit(x, t))
        with pytest.raises(ConfigError, match="concat"):
            dit(x, t, Conditioning(vector=v, concat=noise(2, 1, 8, 8)))
        x = noise(2, 4, 16, 16)
        context = noise(2, 3, LATENT.context_dim)
        both = latent(x, t, Conditioning(context=context, vector=v))
        assert not torch.allclose(both, latent(x, t, Conditioning(context=context)))
        assert not torch.allclose(both, latent(x, t, Conditioning(vector=v)))


def test_concat_channels_go_before_the_first_convolution():
    model = randomized(UNet(UNetConfig(**{**UNET.to_dict(), "in_channels": 5, "vector_dim": 4})))
    x, c, t, v = noise(2, 3, 8, 8), noise(2, 2, 8, 8, seed=3), torch.tensor([5.0, 500.0]), noise(2, 4, seed=4)
    conditioner = diffkit.build("conditioner", "concat", channels=2).eval()
    record = conditioner(c).replace(vector=v)
    with torch.no_grad():
        out = model(x, t, record)
        assert out.shape == (2, 3, 8, 8)
        torch.testing.assert_close(out, model(torch.cat([x, c], dim=1), t, Conditioning(vector=v)), rtol=0, atol=0)
        assert not torch.allclose(out, model(x, t, conditioner(c, force_drop=True).replace(vector=v)))
    with pytest.raises(ShapeError, match="in_channels=5, but x has 3 channels and the conditioning's concat 1"):
        model(x, t, Conditioning(concat=c[:, :1]))
    with pytest.raises(ShapeError, match=r"expects x of shape \[B, 5, H, W\]"):
        model(x, t, Conditioning(vector=v))  # the concat channels are missing
    with pytest.raises(ShapeError, match="height and width"):
        model(x, t, Conditioning(concat=noise(2, 2, 4, 4)))
    latent = randomized(LatentUNet(LATENT.__class__(**{**LATENT.to_dict(), "in_channels": 6})))
    with torch.no_grad():
        z, zc = noise(2, 4, 16, 16), noise(2, 2, 16, 16, seed=5)
        torch.testing.assert_close(
            latent(z, t, Conditioning(concat=zc)), latent(torch.cat([z, zc], dim=1), t), rtol=0, atol=0
        )


def test_backbones_refuse_records_they_cannot_use():
    plain = UNet(UNET)
    x, t = noise(1, 3, 8, 8), torch.tensor([5.0])
    with pytest.raises(ConfigError, match=r"unconditional in everything the conditioning carries \(labels\)"):
        plain(x, t, Conditioning(labels=torch.tensor([1])))
    with pytest.raises(ConfigError, match="vector_dim > 0"):
        plain(x, t, Conditioning(vector=noise(1, 4)))
    with pytest.raises(ConfigError, match="cross-attention"):
        plain(x, t, Conditioning(context=noise(1, 2, 4), vector=noise(1, 4)))
    assert plain(x, t, Conditioning()).shape == (1, 3, 8, 8)  # an empty record conditions nothing
    # A class-label conditioner with its own table feeds a model through vector_dim alone.
    by_vector = UNet(UNetConfig(**{**UNET.to_dict(), "vector_dim": 8}))
    record = diffkit.build("conditioner", "class_label", num_classes=3, embed_dim=8).eval()([2])
    assert by_vector(x, t, record).shape == (1, 3, 8, 8)
    with pytest.raises(ConfigError, match="labels need a class table"):
        LatentUNet(LATENT)(noise(1, 4, 16, 16), t, Conditioning(labels=torch.tensor([1])))


def test_new_config_fields_default_to_zero():
    for config in (UNetConfig(), DiTConfig(), LATENT):
        assert config.vector_dim == 0
    assert UNet(UNET).vector_embed is None
