"""The latent-diffusion UNet with cross-attention: configuration and presets, the tiny preset's
per-level shapes, the conditioning rule, the forward contract (checkpointing, channels-last,
bf16), the registry entry, and equivalence with diffusers' UNet2DConditionModel."""

from __future__ import annotations

import json
import re

import attrs
import pytest
import torch

from diffkit.errors import ConfigError, ShapeError, UnknownNameError
from diffkit.io.diffusers.latent_unet import (
    config_from_diffusers,
    latent_unet_from_diffusers,
    load_diffusers_latent_unet,
)
from diffkit.models.backbones.latent_unet import PRESETS, LatentUNet, LatentUNetConfig, cross_attention_context
from tests.model_checks import check_bf16, check_channels_last, check_checkpointing, check_cuda, check_registered
from tests.model_helpers import perturb, perturbed_diffusers

TINY = PRESETS["tiny"]


pytestmark = pytest.mark.usefixtures("one_thread")


def inputs(batch: int = 2, tokens: int = 5, config: LatentUNetConfig = TINY):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, config.in_channels, 16, 16, generator=gen)
    context = torch.randn(batch, tokens, config.context_dim, generator=gen)
    return x, torch.tensor([3.0, 700.0][:batch]), context


# -- configuration and presets ------------------------------------------------------------------

# diffusers' UNet2DConditionModel arguments of each preset (the rest are diffusers' defaults).
PRESET_AS_DIFFUSERS = {
    "sd15": {"cross_attention_dim": 768},  # runwayml/stable-diffusion-v1-5 unet/config.json
    "sd21": {  # stabilityai/stable-diffusion-2-1 unet/config.json
        "sample_size": 96,
        "attention_head_dim": (5, 10, 20, 20),
        "cross_attention_dim": 1024,
        "use_linear_projection": True,
    },
}


@pytest.mark.parametrize(
    "name, count",
    [
        ("sd15", 859_520_964),
        ("sd21", 865_910_724),
    ],  # SD 1.x / 2.x UNets: "860 M" / "865 M"
)
def test_preset_parameter_counts_match_diffusers(name, count):
    with torch.device("meta"):  # shapes only
        ours = LatentUNet(PRESETS[name])
    assert sum(p.numel() for p in ours.parameters()) == count
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        theirs = diffusers.UNet2DConditionModel(**PRESET_AS_DIFFUSERS[name])
    assert sum(p.numel() for p in theirs.parameters()) == count
    assert config_from_diffusers(theirs.config) == PRESETS[name]


def test_config_round_trips_through_json_and_presets_are_frozen():
    for config in PRESETS.values():
        data = json.loads(json.dumps(config.to_dict()))
        assert LatentUNetConfig.from_dict(data) == config
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        TINY.context_dim = 3  # type: ignore[misc]
    assert LatentUNetConfig.from_preset("sd15", in_channels=16).in_channels == 16


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"cross_attention_levels": (3,)}, "cross-attention level 3 is out of range"),
        ({"num_heads": (2, 2)}, "num_heads has 2 entries for 3 levels"),
        ({"num_heads": 3}, "not divisible by its 3 attention heads"),
        ({"block_out_channels": (32, 60, 64)}, "divisible by norm_groups=8"),
        ({"sample_size": 18}, "not divisible by 2^(levels−1) = 4"),
        ({"context_dim": 0}, "context_dim must be an integer ≥ 1"),
        ({"transformer_depth": 1.5}, "transformer_depth must be an integer"),
        ({"use_linear_projection": 1}, "use_linear_projection must be True or False"),
        ({"dropout": 1.0}, "dropout must be a finite number in [0, 1)"),
    ],
)
def test_bad_configs_are_rejected(fields, words):
    with pytest.raises((ConfigError, ValueError), match=re.escape(words)):
        attrs.evolve(TINY, **fields)


def test_unknown_fields_and_presets_name_close_matches():
    with pytest.raises(UnknownNameError, match="context_dim"):
        LatentUNetConfig.from_dict({"context_dims": 2})
    with pytest.raises(UnknownNameError, match="sd15"):
        LatentUNetConfig.from_preset("sd1.5")


# -- the tiny preset: per-level shapes ------------------------------------------------------------


def test_tiny_preset_level_shapes_on_the_meta_device():
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name):
        return lambda module, args, out: shapes.__setitem__(name, tuple(out.shape))

    with torch.device("meta"):
        model = LatentUNet(TINY)
        model.conv_in.register_forward_hook(record("conv_in"))
        model.time_embed["linear_2"].register_forward_hook(record("emb"))
        for i, level in enumerate(model.down):
            last = level.attentions[-1] if len(level.attentions) else level.resnets[-1]
            last.register_forward_hook(record(f"down{i}"))
        model.mid.register_forward_hook(record("mid"))
        model.mid.resnets[1].register_forward_hook(record("mid"))
        model.mid.attention.transformer_blocks[0].register_forward_hook(record("tokens"))
        for i, level in enumerate(model.up):
            (level.upsample or level.resnets[-1]).register_forward_hook(record(f"up{i}"))
        out = model(torch.empty(3, 4, 16, 16), torch.empty(3), torch.empty(3, 7, 32))
    assert shapes["conv_in"] == (3, 32, 16, 16) and shapes["emb"] == (3, 128)
    assert [shapes[f"down{i}"] for i in range(3)] == [
        (3, 32, 16, 16),
        (3, 64, 8, 8),
        (3, 64, 4, 4),
    ]
    assert shapes["mid"] == (3, 64, 4, 4) and shapes["tokens"] == (
        3,
        16,
        64,
    )  # 4·4 tokens of width 64
    assert [shapes[f"up{i}"] for i in range(3)] == [
        (3, 64, 8, 8),
        (3, 64, 16, 16),
        (3, 32, 16, 16),
    ]
    assert tuple(out.shape) == (3, 4, 16, 16)
    # Transformers only at levels 1 and 2 (and the middle): 1 + 1 down, 2 + 2 up, 1 middle.
    assert [len(level.attentions) for level in model.down] == [0, 1, 1]
    assert [len(level.attentions) for level in model.up] == [2, 2, 0]


# -- conditioning and the forward contract --------------------------------------------------------


def test_zero_initialisation_gives_exactly_zero_output():
    x, t, context = inputs()
    out = LatentUNet(TINY)(x, t, context)
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(out))


def test_conditioning_rule():
    x, t, context = inputs()
    mask = torch.tensor([[True] * 5, [True, True, False, False, False]])
    assert cross_attention_context(None, 2, 32) == (None, None)
    got_context, got_mask = cross_attention_context({"context": context, "mask": mask}, 2, 32)
    assert got_context is context and got_mask is mask

    class Record:
        def __init__(self, context, mask=None):
            self.context, self.mask = context, mask

    model = perturb(LatentUNet(TINY)).eval()
    with torch.no_grad():
        plain = model(x, t, context)
        torch.testing.assert_close(model(x, t, {"context": context}), plain, rtol=0, atol=0)
        torch.testing.assert_close(model(x, t, Record(context, torch.ones(2, 5, dtype=torch.bool))), plain)
        masked = model(x, t, Record(context, mask))
        # Masking = dropping the tokens: sample 1 with tokens 2… masked equals it with 2 tokens only.
        torch.testing.assert_close(masked[0], plain[0])
        torch.testing.assert_close(masked[1:], model(x[1:], t[1:], context[1:, :2]), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(masked[1], plain[1])
        # No context: the cross-attention is skipped. A sample whose mask keeps nothing is the same.
        none = model(x, t, None)
        torch.testing.assert_close(model(x, t, Record(None)), none, rtol=0, atol=0)
        empty = model(x, t, {"context": context, "mask": torch.tensor([[False] * 5, [True] * 5])})
        assert torch.isfinite(empty).all()
        torch.testing.assert_close(empty[0], none[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(empty[1], plain[1], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(none, plain)
    with pytest.raises(ShapeError, match=r"\[B=2, M, d_ctx=32\]"):
        model(x, t, torch.randn(2, 5, 31))
    with pytest.raises(ShapeError, match="bool tensor"):
        model(x, t, {"context": context, "mask": mask.float()})
    with pytest.raises(ShapeError, match="floating-point"):
        model(x, t, torch.ones(2, 5, 32, dtype=torch.long))
    with pytest.raises(TypeError, match="'context' entry"):
        model(x, t, {"labels": torch.tensor([1, 2])})
    with pytest.raises(TypeError, match="cond must be None"):
        model(x, t, 3)


def test_shape_errors_and_any_latent_channel_count():
    model = LatentUNet(TINY)
    x, t, context = inputs()
    with pytest.raises(ShapeError, match="multiples of 4"):
        model(torch.randn(2, 4, 18, 16), t, context)
    with pytest.raises(ShapeError, match=r"\[B, 4, H, W\]"):
        model(torch.randn(2, 3, 16, 16), t, context)
    with pytest.raises(ShapeError, match="t must have shape"):
        model(x, torch.zeros(3), context)
    wide = perturb(LatentUNet(attrs.evolve(TINY, in_channels=16, out_channels=32, context_dim=12)))
    with torch.no_grad():
        out = wide(torch.randn(1, 16, 8, 24), 5.0, torch.randn(1, 3, 12))  # a scalar t is broadcast
    assert out.shape == (1, 32, 8, 24)


@pytest.mark.parametrize("linear", [False, True], ids=["conv-proj", "linear-proj"])
def test_gradient_checkpointing_and_channels_last_give_the_same_results(linear):
    model = perturb(LatentUNet(attrs.evolve(TINY, use_linear_projection=linear, transformer_depth=2)))
    x, t, context = inputs()
    cond = {"context": context, "mask": torch.tensor([[True] * 5, [True, False, True, False, False]])}
    out = check_checkpointing(model, x, t, cond)
    model(x, t, None).sum().backward()  # no context: checkpointing passes None through
    model.gradient_checkpointing = False
    check_channels_last(model, out, x, t, cond)


def test_bf16_weights_and_autocast():
    check_bf16(perturb(LatentUNet(TINY)).eval(), *inputs())  # an fp32 context is cast


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp32_bf16_and_channels_last_match_cpu():
    check_cuda(perturb(LatentUNet(TINY)).eval(), *inputs())


def test_registered_as_backbone_latent_unet():
    entry = check_registered("backbone", "latent_unet", LatentUNet, TINY, ("sd15", {"in_channels": 16}),
                             ("context_dimm", "context_dim"))
    assert "Rombach et al. 2022" in entry.metadata["paper"]


# -- diffusers UNet2DConditionModel ---------------------------------------------------------------

DIFFUSERS_CASES = {
    # SD 1.x style: 1×1-conv projections, one head count, cross-attention at the two finest levels.
    "sd1-style": {
        "block_out_channels": (32, 64, 64), "layers_per_block": 1, "norm_num_groups": 8, "cross_attention_dim": 24,
        "attention_head_dim": 2, "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    },
    # SD 2.x style: linear projections, per-level head counts, two transformer blocks, 8 latent channels.
    "sd2-style": {
        "in_channels": 8, "out_channels": 6, "block_out_channels": (32, 64), "layers_per_block": 2,
        "norm_num_groups": 8, "cross_attention_dim": 40, "attention_head_dim": (2, 4),
        "transformer_layers_per_block": 2, "use_linear_projection": True, "upcast_attention": True,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    },
}


@pytest.mark.parametrize("case", list(DIFFUSERS_CASES))
def test_outputs_agree_with_diffusers(case, tmp_path):
    theirs = perturbed_diffusers("UNet2DConditionModel", **DIFFUSERS_CASES[case])
    ours = latent_unet_from_diffusers(theirs)
    cfg = ours.config
    gen = torch.Generator().manual_seed(2)
    x, t = (
        torch.randn(2, cfg.in_channels, 16, 16, generator=gen),
        torch.tensor([3.0, 517.0]),
    )
    context = torch.randn(2, 7, cfg.context_dim, generator=gen)
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4])
    with torch.no_grad():
        expected = theirs(x, t, context).sample
        got = ours(x, t, context)
        # diffusers' encoder_attention_mask: 1 = keep, 0 = discard (a −10000 bias).
        expected_masked = theirs(x, t, context, encoder_attention_mask=mask.float()).sample
        got_masked = ours(x, t, {"context": context, "mask": mask})
    assert expected.abs().max() > 1  # not a trivially small output
    assert not torch.allclose(expected_masked[1], expected[1])  # the mask matters
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_masked, expected_masked, rtol=0, atol=1e-5)
    if case == "sd1-style":
        (tmp_path / "unet").mkdir()
        theirs.save_pretrained(tmp_path / "unet")  # a pipeline folder: unet/config.json + safetensors
        with torch.no_grad():
            loaded = load_diffusers_latent_unet(tmp_path)(x, t, context)
        torch.testing.assert_close(loaded, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"addition_embed_type": "text_time"}, "addition_embed_type='text_time'"),
        ({"class_embed_type": "timestep"}, "class_embed_type='timestep'"),
        ({"only_cross_attention": True}, "only_cross_attention=True"),
        (
            {"resnet_time_scale_shift": "scale_shift"},
            "resnet_time_scale_shift='scale_shift'",
        ),
        ({"mid_block_type": None}, "mid_block_type=None"),
        (
            {"transformer_layers_per_block": ((1, 2), (1, 1), (1, 1))},
            "transformer_layers_per_block=[[1, 2], [1, 1], [1, 1]]",
        ),
        (
            {"down_block_types": ("DownBlock2D",) * 3},
            "transformers at down levels [] but at up levels [0, 1]",
        ),
        (
            {
                "up_block_types": (
                    "UpBlock2D",
                    "KCrossAttnUpBlock2D",
                    "CrossAttnUpBlock2D",
                )
            },
            "KCrossAttnUpBlock2D",
        ),
        (
            {"some_future_key": 1},
            "unknown keys in the diffusers UNet2DConditionModel config: some_future_key",
        ),
        ({"_class_name": "UNet2DModel"}, "not a diffusers UNet2DConditionModel config"),
    ],
)
def test_unsupported_diffusers_configs_name_the_feature(changes, words):
    config = {**DIFFUSERS_CASES["sd1-style"], **changes}
    with pytest.raises(ConfigError, match=re.escape(words)):
        config_from_diffusers(config)
