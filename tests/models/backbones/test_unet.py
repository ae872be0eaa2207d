"""The DDPM/ADM UNet: configuration, the seed's per-level shapes, the forward contract,
the convolutional layers, the registry entry, and equivalence with diffusers' UNet2DModel."""

from __future__ import annotations

import json
import re

import attrs
import pytest
import torch
import torch.nn.functional as F

from diffkit.errors import ConfigError, ShapeError, UnknownNameError
from diffkit.io.diffusers.unet import config_from_diffusers, load_diffusers_unet, unet_from_diffusers
from diffkit.models.backbones.layers import Downsample2D, ResBlock, Upsample2D, nearest_upsample_2x
from diffkit.models.backbones.unet import PRESETS, UNet, UNetConfig
from tests.model_checks import check_bf16, check_channels_last, check_checkpointing, check_cuda, check_registered
from tests.model_helpers import perturb, perturbed_diffusers

# A tiny class-conditional UNet: 3 levels, attention at levels 1 and 2 and in the middle.
TINY = UNetConfig(
    sample_size=16,
    block_out_channels=(16, 32, 32),
    layers_per_block=1,
    attention_levels=(1, 2),
    attention_head_dim=8,
    norm_groups=8,
    num_classes=5,
    dropout=0.0,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def inputs():
    return torch.randn(2, 3, 16, 16), torch.tensor([3.0, 700.0]), torch.tensor([0, 3])


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, count",
    [
        ("ddpm-cifar10", 35_746_307),  # DDPM paper: 35.7 M
        ("ddpm-256", 113_673_219),  # DDPM paper: 114 M
        (
            "unet2d-128",
            108_414_979,
        ),  # = diffusers' UNet2DModel with the seed's arguments
        ("adm-imagenet64", 295_905_222),  # ADM paper (Table 10 / App.): 296 M
    ],
)
def test_parameter_count_of_every_preset(name, count):
    with torch.device("meta"):
        model = UNet(PRESETS[name])
    assert sum(p.numel() for p in model.parameters()) == count


def test_config_round_trips_through_json_and_presets_are_frozen():
    for config in (*PRESETS.values(), TINY):
        data = json.loads(json.dumps(config.to_dict()))
        assert UNetConfig.from_dict(data) == config
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        PRESETS["ddpm-cifar10"].dropout = 0.0  # type: ignore[misc]
    assert UNetConfig.from_preset("ddpm-cifar10", num_classes=10).num_classes == 10


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"block_out_channels": ()}, "non-empty tuple"),
        ({"block_out_channels": (32, 0)}, "positive integers"),
        ({"layers_per_block": 0}, "layers_per_block"),
        ({"attention_levels": (4,)}, "out of range"),
        ({"norm_groups": 24}, "divisible by norm_groups"),
        ({"attention_head_dim": 48}, "attention_head_dim"),
        ({"dropout": 1.0}, "dropout"),
        ({"resample": "bilinear"}, "resample"),
        ({"timestep_freq_shift": 2}, "timestep_freq_shift"),
        ({"sample_size": 20}, "divisible by 2^(levels−1)"),
        ({"scale_shift": 1}, "True or False"),
    ],
)
def test_bad_configs_are_rejected(fields, words):
    with pytest.raises((ConfigError, ValueError), match=re.escape(words)):
        attrs.evolve(PRESETS["ddpm-cifar10"], **fields)


def test_unknown_fields_and_presets_name_close_matches():
    with pytest.raises(UnknownNameError, match="layers_per_block"):
        UNetConfig.from_dict({"layers_per_blocks": 2})
    with pytest.raises(UnknownNameError, match="ddpm-cifar10"):
        UNetConfig.from_preset("ddpm-cifar")


# -- the seed's model: per-level shapes ------------------------------------------------------------

# The seed's UNet2DModel(sample_size=128, block_out_channels=(128, 128, 256, 256, 512, 512),
# six DownBlock2D / UpBlock2D) on a (32, 3, 128, 128) batch: "Down-ℓ" is level ℓ's output before
# its downsample, "Up-i" the output of up level i (after its upsample). The output has
# out_channels = 3 channels (the seed's text says 128: its erratum).
SEED_DOWN = [(32, 128, 128, 128), (32, 128, 64, 64), (32, 256, 32, 32), (32, 256, 16, 16), (32, 512, 8, 8),
             (32, 512, 4, 4)]
SEED_MID = (32, 512, 4, 4)
SEED_UP = [(32, 512, 8, 8), (32, 512, 16, 16), (32, 256, 32, 32), (32, 256, 64, 64), (32, 128, 128, 128),
           (32, 128, 128, 128)]


def test_seed_config_level_shapes():
    shapes: dict[str, tuple[int, ...]] = {}
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        model = UNet(PRESETS["unet2d-128"])
        for i, level in enumerate(model.down):
            level.resnets[-1].register_forward_hook(lambda m, a, out, i=i: shapes.__setitem__(f"down{i}", out.shape))
        model.mid.register_forward_hook(lambda m, a, out: None)
        model.mid.resnets[1].register_forward_hook(lambda m, a, out: shapes.__setitem__("mid", out.shape))
        for i, level in enumerate(model.up):
            last = level.upsample if level.upsample is not None else level.resnets[-1]
            last.register_forward_hook(lambda m, a, out, i=i: shapes.__setitem__(f"up{i}", out.shape))
        conv_in = model.conv_in.register_forward_hook(lambda m, a, out: shapes.__setitem__("conv_in", out.shape))
        emb = model.time_embed["linear_2"].register_forward_hook(lambda m, a, out: shapes.__setitem__("emb", out.shape))
        out = model(torch.empty(32, 3, 128, 128), torch.empty(32))
    conv_in.remove(), emb.remove()
    assert shapes["conv_in"] == (32, 128, 128, 128) and shapes["emb"] == (32, 512)
    assert [tuple(shapes[f"down{i}"]) for i in range(6)] == SEED_DOWN
    assert tuple(shapes["mid"]) == SEED_MID
    assert [tuple(shapes[f"up{i}"]) for i in range(6)] == SEED_UP
    assert tuple(out.shape) == (32, 3, 128, 128)


def test_seed_config_matches_diffusers_parameter_for_parameter():
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        theirs = diffusers.UNet2DModel(
            sample_size=128,
            in_channels=3,
            out_channels=3,
            layers_per_block=2,
            block_out_channels=(128, 128, 256, 256, 512, 512),
            down_block_types=("DownBlock2D",) * 6,
            up_block_types=("UpBlock2D",) * 6,
        )
        config = config_from_diffusers(theirs.config)
    assert config == PRESETS["unet2d-128"]


# -- forward contract ------------------------------------------------------------------------------


def test_zero_initialisation_gives_exactly_zero_output():
    model = UNet(TINY)
    out = model(torch.randn(2, 3, 16, 16), torch.tensor([1.0, 500.0]), torch.tensor([0, 4]))
    assert out.shape == (2, 3, 16, 16) and torch.equal(out, torch.zeros_like(out))


def test_conditioning_rule_and_shape_errors():
    model = perturb(UNet(TINY)).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        null = model(x, 10, None)  # a scalar t is broadcast; None = the null class
        torch.testing.assert_close(null, model(x, torch.tensor([10, 10]), torch.tensor([5, 5])))
        torch.testing.assert_close(
            model(x, 10, {"labels": torch.tensor([1, 2])}),
            model(x, 10, torch.tensor([1, 2])),
        )
        assert not torch.allclose(null, model(x, 10, torch.tensor([1, 2])))
    with pytest.raises(ShapeError, match="multiples of 4"):
        model(torch.randn(2, 3, 18, 16), 10)
    with pytest.raises(ShapeError, match=r"\[B, 3, H, W\]"):
        model(torch.randn(2, 4, 16, 16), 10)
    with pytest.raises(ShapeError, match="t must have shape"):
        model(x, torch.zeros(3))
    unconditional = UNet(attrs.evolve(TINY, num_classes=0))
    assert unconditional.class_embed is None
    with pytest.raises(ConfigError, match="unconditional"):
        unconditional(x, 10, torch.tensor([1, 2]))
    # Any size divisible by 2^(levels−1) works, not only sample_size.
    assert model(torch.randn(1, 3, 8, 24), 3).shape == (1, 3, 8, 24)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"scale_shift": True, "resample": "resnet", "attention_head_dim": None},
        {"resample": "pool", "mid_attention": False},
    ],
    ids=["ddpm", "adm", "pool"],
)
def test_gradient_checkpointing_and_channels_last_give_the_same_results(changes):
    model = perturb(UNet(attrs.evolve(TINY, **changes)))
    x, t, y = inputs()
    out = check_checkpointing(model, x, t, y)
    model.gradient_checkpointing = False
    check_channels_last(model, out, x, t, y)


def test_bf16_weights_and_autocast():
    check_bf16(perturb(UNet(TINY)).eval(), *inputs())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp32_bf16_and_channels_last_match_cpu():
    check_cuda(perturb(UNet(TINY)).eval(), *inputs())


def test_dropout_is_active_only_in_training():
    model = perturb(UNet(attrs.evolve(TINY, dropout=0.5)))
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([5.0])
    model.train()
    assert not torch.equal(model(x, t), model(x, t))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x, t), model(x, t))


def test_timestep_features_sin_first_for_ddpm():
    model = UNet(attrs.evolve(TINY, timestep_cos_first=False, timestep_freq_shift=1))
    with torch.no_grad():
        lin = model.time_embed["linear_1"]
        lin.weight.copy_(torch.eye(lin.weight.shape[0], lin.weight.shape[1]))
        lin.bias.zero_()
        captured = []
        handle = lin.register_forward_hook(lambda m, a, out: captured.append(out))
        model.embed(torch.tensor([7.0]))
        handle.remove()
    half = 8  # ch_0 = 16 features
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half) / (half - 1))  # DDPM: half − 1
    expected = torch.cat([torch.sin(7.0 * freqs), torch.cos(7.0 * freqs)])
    torch.testing.assert_close(captured[0][0, :16], expected)


# -- convolutional layers against diffusers --------------------------------------------------------


@pytest.mark.parametrize("norm", ["default", "scale_shift"])
@pytest.mark.parametrize("channels", [(16, 32), (32, 32)])
@pytest.mark.parametrize("resample", ["none", "up", "down"])
def test_resblock_matches_diffusers_resnetblock2d(norm, channels, resample):
    resnet = pytest.importorskip("diffusers.models.resnet")
    torch.manual_seed(0)
    cin, cout = channels
    theirs = resnet.ResnetBlock2D(
        in_channels=cin,
        out_channels=cout,
        temb_channels=12,
        groups=8,
        time_embedding_norm=norm,
        up=resample == "up",
        down=resample == "down",
        eps=1e-6,
    ).eval()
    perturb(theirs)
    ours = ResBlock(
        cin,
        cout,
        temb_channels=12,
        groups=8,
        scale_shift=norm == "scale_shift",
        up=resample == "up",
        down=resample == "down",
    ).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)  # same parameter names
    x, e = torch.randn(2, cin, 8, 8), torch.randn(2, 12)
    with torch.no_grad():
        torch.testing.assert_close(ours(x, e), theirs(x, e), rtol=0, atol=1e-5)


def test_resblock_without_embedding_and_resamplers_match_diffusers():
    resnet = pytest.importorskip("diffusers.models.resnet")
    down = pytest.importorskip("diffusers.models.downsampling")
    up = pytest.importorskip("diffusers.models.upsampling")
    torch.manual_seed(0)
    theirs = perturb(resnet.ResnetBlock2D(in_channels=16, out_channels=32, temb_channels=None, groups=8)).eval()
    ours = ResBlock(16, 32, groups=8).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x, None), rtol=0, atol=1e-5)
        for padding in (0, 1):
            d = down.Downsample2D(16, use_conv=True, padding=padding, name="op")
            mine = Downsample2D(16, padding=padding)
            mine.load_state_dict(d.state_dict(), strict=True)
            torch.testing.assert_close(mine(x), d(x), rtol=0, atol=1e-6)
        u = up.Upsample2D(16, use_conv=True)
        mine_up = Upsample2D(16)
        mine_up.load_state_dict(u.state_dict(), strict=True)
        torch.testing.assert_close(mine_up(x), u(x), rtol=0, atol=1e-6)
    assert Downsample2D(16, use_conv=False)(x).shape == (2, 16, 4, 4)
    assert Upsample2D(16, use_conv=False)(x).shape == (2, 16, 16, 16)
    with pytest.raises(ShapeError, match="needs an embedding"):
        ResBlock(16, 16, temb_channels=4, groups=8)(x)
    with pytest.raises(ConfigError, match="divisible by groups"):
        ResBlock(16, 20, groups=8)


# -- registry --------------------------------------------------------------------------------------


def test_registered_as_backbone_unet():
    check_registered("backbone", "unet", UNet, TINY, ("ddpm-cifar10", {"num_classes": 10}),
                     ("layers_per_blok", "layers_per_block"))


# -- diffusers UNet2DModel -------------------------------------------------------------------------

DIFFUSERS_CASES = {
    # Attention blocks at two levels, several heads, class embedding (diffusers' defaults otherwise).
    "attn-class": {
        "block_out_channels": (16, 32, 32), "layers_per_block": 1, "norm_num_groups": 8, "attention_head_dim": 8,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        "up_block_types": ("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"), "num_class_embeds": 5,
    },
    # ADM-style: scale-shift norm, ResBlock up/downsampling, one attention head, sin-first DDPM features.
    "adm-style": {
        "block_out_channels": (16, 32), "layers_per_block": 2, "norm_num_groups": 8, "attention_head_dim": None,
        "down_block_types": ("AttnDownBlock2D",) * 2, "up_block_types": ("AttnUpBlock2D",) * 2,
        "resnet_time_scale_shift": "scale_shift", "attn_norm_num_groups": 8, "downsample_type": "resnet",
        "upsample_type": "resnet", "flip_sin_to_cos": False, "freq_shift": 1, "norm_eps": 1e-6,
    },
    # DDPM-style plain blocks with the TF "SAME" downsample padding and a custom embedding width.
    "ddpm-plain": {
        "block_out_channels": (16, 16, 32), "layers_per_block": 1, "norm_num_groups": 8, "downsample_padding": 0,
        "down_block_types": ("DownBlock2D",) * 3, "up_block_types": ("UpBlock2D",) * 3, "time_embedding_dim": 40,
    },
}


@pytest.mark.parametrize("case", list(DIFFUSERS_CASES))
def test_outputs_agree_with_diffusers(case, tmp_path):
    theirs = perturbed_diffusers("UNet2DModel", **DIFFUSERS_CASES[case])
    ours = unet_from_diffusers(theirs)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([3.0, 517.0])
    labels = torch.tensor([1, 4]) if ours.config.num_classes else None
    with torch.no_grad():
        expected = theirs(x, t, class_labels=labels).sample
        got = ours(x, t, labels)
    assert expected.abs().max() > 1  # not a trivially small output
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    if case == "attn-class":
        theirs.save_pretrained(tmp_path)  # a saved folder: config.json + safetensors
        with torch.no_grad():
            torch.testing.assert_close(load_diffusers_unet(tmp_path)(x, t, labels), expected, rtol=0, atol=1e-5)
        # diffusers has no null class: the converted null row is zero (bare time embedding).
        assert torch.equal(
            ours.class_embed.embedding_table.weight[-1],
            torch.zeros(ours.config.embed_dim),
        )


@pytest.mark.parametrize(
    "change, words",
    [
        ({"time_embedding_type": "fourier"}, "time_embedding_type"),
        ({"center_input_sample": True}, "center_input_sample"),
        ({"class_embed_type": "timestep"}, "class_embed_type"),
        (
            {"up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")},
            "attention at down levels",
        ),
        (
            {
                "down_block_types": (
                    "SkipDownBlock2D",
                    "AttnDownBlock2D",
                    "AttnDownBlock2D",
                )
            },
            "block types",
        ),
        (
            {"resnet_time_scale_shift": "scale_shift"},
            "middle attention without GroupNorm",
        ),
        ({"downsample_type": "resnet"}, "resampling kinds"),
        ({"not_a_key": 1}, "unknown keys"),
    ],
)
def test_config_conversion_rejects_what_the_unet_does_not_have(change, words):
    config = {
        "_class_name": "UNet2DModel",
        "sample_size": 16,
        **DIFFUSERS_CASES["attn-class"],
        **change,
    }
    with pytest.raises(ConfigError, match=words):
        config_from_diffusers(config)


def test_nearest_upsample_matches_interpolate_in_both_layouts():
    x = torch.randn(2, 3, 5, 7)
    for tensor in (x, x.to(memory_format=torch.channels_last)):
        assert torch.equal(nearest_upsample_2x(tensor), F.interpolate(tensor, scale_factor=2.0, mode="nearest"))
