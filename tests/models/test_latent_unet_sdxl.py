"""Stable Diffusion XL's UNet in the latent UNet: the ``sdxl`` preset against diffusers' SDXL config,
per-level transformer depths, levels without transformers, the text-time embedding of the
conditioning vector [pooled, time ids], equivalence with tiny diffusers SDXL-style
UNet2DConditionModels (converted and loaded from a folder), the converter's refusals, and
diffkit's own save / load round trip."""

from __future__ import annotations

import json
import re

import attrs
import pytest
import torch

import diffkit
from diffkit.errors import ConfigError, ShapeError
from diffkit.io.diffusers.latent_unet import config_from_diffusers, latent_unet_from_diffusers
from diffkit.models.backbones.latent_unet import PRESETS, LatentUNet, LatentUNetConfig, text_time_features
from diffkit.models.conditioners.record import Conditioning
from tests.model_checks import check_bf16, check_checkpointing
from tests.model_helpers import perturb, perturbed_diffusers

pytestmark = pytest.mark.usefixtures("one_thread")

POOLED, TIME_IDS, TIME_DIM = 32, 6, 8  # P, K, D_t of the tiny models: D_a = 32 + 6·8 = 80

# Tiny SDXL-style diffusers UNet2DConditionModel arguments (as diffusers' own SDXL pipeline tests):
# no transformers at the finest level, per-level heads and depths, linear projections, text-time.
SDXL_STYLE = {
    "sample_size": 8, "block_out_channels": (32, 64), "layers_per_block": 2, "norm_num_groups": 8,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"), "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (2, 4), "use_linear_projection": True, "addition_embed_type": "text_time",
    "addition_time_embed_dim": TIME_DIM, "transformer_layers_per_block": (1, 2),
    "projection_class_embeddings_input_dim": POOLED + TIME_IDS * TIME_DIM, "cross_attention_dim": 64,
}
CASES = {
    "2-level": SDXL_STYLE,
    # Three levels, transformer depths 1, 2, 3 (the middle takes 3), SD-style [sin, cos] shift-1 sinusoids.
    "3-level": {
        **SDXL_STYLE, "block_out_channels": (32, 64, 64), "attention_head_dim": (2, 4, 4),
        "transformer_layers_per_block": (1, 2, 3), "flip_sin_to_cos": False, "freq_shift": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    },
}

# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json (diffusers 0.19), as published.
SDXL_BASE_CONFIG = {
    "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.19.0.dev0", "act_fn": "silu",
    "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280], "center_input_sample": False,
    "class_embed_type": None, "class_embeddings_concat": False, "conv_in_kernel": 3, "conv_out_kernel": 3,
    "cross_attention_dim": 2048, "cross_attention_norm": None,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "downsample_padding": 1,
    "dual_cross_attention": False, "encoder_hid_dim": None, "encoder_hid_dim_type": None, "flip_sin_to_cos": True,
    "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1, "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05,
    "norm_num_groups": 32, "num_attention_heads": None, "num_class_embeds": None, "only_cross_attention": False,
    "out_channels": 4, "projection_class_embeddings_input_dim": 2816, "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False, "resnet_time_scale_shift": "default", "sample_size": 128,
    "time_cond_proj_dim": None, "time_embedding_act_fn": None, "time_embedding_dim": None,
    "time_embedding_type": "positional", "timestep_post_act": None, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "upcast_attention": None,
    "use_linear_projection": True,
}
# stabilityai/stable-diffusion-xl-refiner-1.0 unet/config.json: the differences from the base.
SDXL_REFINER_CHANGES = {
    "attention_head_dim": [6, 12, 24, 24], "block_out_channels": [384, 768, 1536, 1536], "cross_attention_dim": 1280,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "projection_class_embeddings_input_dim": 2560, "transformer_layers_per_block": 4,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}


def sdxl_inputs(batch: int = 2, seed: int = 1, tokens: int = 5, context_dim: int = 64):
    """x [B, 4, 8, 8], t [B], context [B, M, 64], pooled [B, P], time ids [B, K] (SDXL's six, not all zero)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, 8, 8, generator=gen)
    t = torch.tensor([3.0, 517.0, 999.0][:batch])
    context = torch.randn(batch, tokens, context_dim, generator=gen)
    pooled = torch.randn(batch, POOLED, generator=gen)
    time_ids = torch.tensor([[16.0, 16, 0, 0, 16, 16], [24.0, 32, 4, 8, 16, 16], [1024.0, 768, 13, 0, 1024, 1024]])
    return x, t, context, pooled, time_ids[:batch]


def record(context, pooled, time_ids, **fields):
    """The SDXL conditioner's record: context, vector = [pooled, time ids]."""
    return Conditioning(context=context, vector=torch.cat([pooled, time_ids], dim=1), **fields)


def diffusers_output(theirs, x, t, context, pooled, time_ids, **kwargs):
    added = {"text_embeds": pooled, "time_ids": time_ids}
    return theirs(x, t, context, added_cond_kwargs=added, **kwargs).sample


def tiny_sdxl(case: str = "2-level") -> LatentUNet:
    """The tiny SDXL-style latent UNet of ``case`` (diffusers' config converted), perturbed, in eval mode."""
    diffusers = pytest.importorskip("diffusers")
    with torch.device("meta"):
        config = config_from_diffusers(diffusers.UNet2DConditionModel(**CASES[case]).config)
    torch.manual_seed(0)
    return perturb(LatentUNet(config)).eval()


# -- the configuration ------------------------------------------------------------------------------


def test_sdxl_base_and_refiner_configs_convert():
    assert config_from_diffusers(SDXL_BASE_CONFIG) == PRESETS["sdxl"]
    sdxl = PRESETS["sdxl"]
    assert (sdxl.pooled_dim, sdxl.text_time_vector_dim, sdxl.depth(-1), sdxl.heads(0)) == (1280, 1286, 10, 5)
    # The refiner: K = 5 time ids (original size, crop, aesthetic score) after its 1280-wide pooled embedding.
    refiner = config_from_diffusers({**SDXL_BASE_CONFIG, **SDXL_REFINER_CHANGES}, text_time_ids=5)
    assert refiner.cross_attention_levels == (1, 2) and refiner.transformer_depth == 4
    assert (refiner.pooled_dim, refiner.text_time_vector_dim, refiner.heads(-1)) == (1280, 1285, 24)


def test_sdxl_preset_parameter_count_matches_diffusers():
    with torch.device("meta"):  # shapes only
        ours = LatentUNet(PRESETS["sdxl"])
    count = sum(p.numel() for p in ours.parameters())
    assert count == 2_567_463_684  # SDXL base's UNet: "2.6 B"
    diffusers = pytest.importorskip("diffusers")
    settings = {k: v for k, v in SDXL_BASE_CONFIG.items() if not k.startswith("_")}
    with torch.device("meta"):
        theirs = diffusers.UNet2DConditionModel(**settings)
    assert sum(p.numel() for p in theirs.parameters()) == count
    assert len(ours.mid.attention.transformer_blocks) == 10  # the middle: the last level's depth


def test_old_configs_without_the_new_fields_still_load():
    """A diffkit.json written before SDXL support has no text_time_* fields and an int transformer_depth."""
    old = {k: v for k, v in json.loads(json.dumps(PRESETS["tiny"].to_dict())).items() if not k.startswith("text_time")}
    assert LatentUNetConfig.from_dict(old) == PRESETS["tiny"]
    assert PRESETS["tiny"].text_time_dim == 0 and LatentUNet(PRESETS["tiny"]).add_embed is None
    for config in (PRESETS["sdxl"], tiny_sdxl("3-level").config):  # per-level tuples survive JSON
        assert LatentUNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"transformer_depth": (1, 2)}, "transformer_depth has 2 entries for 3 levels"),
        ({"transformer_depth": (1, 0, 1)}, "transformer_depth"),
        ({"text_time_dim": 40}, "text_time_dim=40 is less than the 6 time ids' features"),
        (
            {"text_time_dim": 80, "text_time_embed_dim": 8, "vector_dim": 32},
            "vector_dim=32 and text_time_dim=80 both read the conditioning's vector",
        ),
        (
            {"text_time_dim": 80, "text_time_embed_dim": 2, "timestep_freq_shift": 1},
            "text_time_embed_dim=2 is too small",
        ),
        ({"text_time_ids": 0}, "text_time_ids must be an integer ≥ 1"),
    ],
)
def test_bad_sdxl_configs_are_rejected(fields, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        attrs.evolve(PRESETS["tiny"], **fields)


def test_per_level_depths_and_levels_without_transformers():
    model = tiny_sdxl("3-level")

    def depths(level):
        return [len(a.transformer_blocks) for a in level.attentions]

    assert [depths(level) for level in model.down] == [[], [2, 2], [3, 3]]
    assert [depths(level) for level in model.up] == [[3, 3, 3], [2, 2, 2], []]  # up[i] is level L−1−i
    assert len(model.mid.attention.transformer_blocks) == 3  # the last level's depth
    assert model.readable_conditioning() == {"context", "concat", "vector"}
    assert tuple(model.add_embed["linear_1"].weight.shape) == (128, POOLED + TIME_IDS * TIME_DIM)


# -- equivalence with diffusers ----------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_agree_with_diffusers(case, tmp_path):
    theirs = perturbed_diffusers("UNet2DConditionModel", **CASES[case])
    ours = latent_unet_from_diffusers(theirs)
    assert ours.config.text_time_dim == POOLED + TIME_IDS * TIME_DIM and ours.config.pooled_dim == POOLED
    x, t, context, pooled, time_ids = sdxl_inputs()
    mask = torch.tensor([[True] * 5, [True] * 2 + [False] * 3])
    with torch.no_grad():
        expected = diffusers_output(theirs, x, t, context, pooled, time_ids)
        got = ours(x, t, record(context, pooled, time_ids))
        expected_masked = diffusers_output(theirs, x, t, context, pooled, time_ids, encoder_attention_mask=mask.float())
        got_masked = ours(x, t, record(context, pooled, time_ids, mask=mask))
    assert expected.abs().max() > 1  # not a trivially small output
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_masked, expected_masked, rtol=0, atol=1e-5)

    theirs.save_pretrained(tmp_path / "unet")
    loaded = diffkit.load_pretrained(tmp_path / "unet")
    assert isinstance(loaded, LatentUNet) and loaded.config == ours.config
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, t, record(context, pooled, time_ids)), expected, rtol=0, atol=1e-5)


def test_text_time_features_match_diffusers_add_time_proj():
    theirs = perturbed_diffusers("UNet2DConditionModel", **CASES["3-level"])
    ours = latent_unet_from_diffusers(theirs)
    _, _, _, pooled, time_ids = sdxl_inputs(batch=3)
    expected = torch.cat([pooled, theirs.add_time_proj(time_ids.flatten()).reshape(3, -1)], dim=1)
    got = text_time_features(torch.cat([pooled, time_ids], dim=1), ours.config)
    assert got.shape == (3, POOLED + TIME_IDS * TIME_DIM) and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_the_text_time_embedding_matters():
    theirs = perturbed_diffusers("UNet2DConditionModel", **SDXL_STYLE)
    ours = latent_unet_from_diffusers(theirs)
    x, t, context, pooled, time_ids = sdxl_inputs()
    other_ids = time_ids.clone()
    other_ids[:, 2:4] += torch.tensor([3.0, 5.0])  # another crop
    with torch.no_grad():
        base = ours(x, t, record(context, pooled, time_ids))
        moved = ours(x, t, record(context, pooled, other_ids))
        repooled = ours(x, t, record(context, pooled + 1, time_ids))
        expected_moved = diffusers_output(theirs, x, t, context, pooled, other_ids)
    for changed in (moved, repooled):
        assert (changed - base).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # every sample changes
    torch.testing.assert_close(moved, expected_moved, rtol=0, atol=1e-5)


# -- the conditioning contract -----------------------------------------------------------------------


def test_missing_or_misshapen_vectors_are_errors_naming_the_shape():
    model = tiny_sdxl()
    x, t, context, pooled, time_ids = sdxl_inputs()
    words = "vector [B, P + K] = [2, 38] (the pooled text embedding [B, P=32], then the K=6 time ids)"
    for cond in (
        None,
        context,  # a bare context tensor
        Conditioning(context=context),
        Conditioning(context=context, vector=torch.randn(2, POOLED)),  # the time ids left out
        {"context": context, "vector": torch.cat([pooled, time_ids[:, :5]], dim=1)},
    ):
        with pytest.raises(ShapeError, match=re.escape(words)):
            model(x, t, cond)
    with pytest.raises(ShapeError, match=re.escape("got none")):
        model(x, t, Conditioning(context=context))
    with pytest.raises(ShapeError, match=re.escape("got torch.float32 (2, 37)")):
        model(x, t, Conditioning(context=context, vector=torch.randn(2, 37)))
    # Without a context the cross-attention is skipped; the vector alone is enough.
    with torch.no_grad():
        out = model(x, t, Conditioning(vector=torch.cat([pooled, time_ids], dim=1)))
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_checkpointing_and_bf16_with_the_text_time_embedding():
    model = tiny_sdxl("3-level")
    x, t, context, pooled, time_ids = sdxl_inputs()
    cond = record(context, pooled, time_ids)
    check_checkpointing(model.train(), x, t, cond)
    model.gradient_checkpointing = False
    check_bf16(model.eval(), x, t, cond)  # fp32 time ids and context into bf16 weights


# -- the converter's refusals ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"addition_embed_type": "text"}, "addition_embed_type='text' (diffkit's latent UNet has None or 'text_time')"),
        ({"addition_embed_type": "image"}, "addition_embed_type='image'"),
        ({"projection_class_embeddings_input_dim": None}, "addition_embed_type='text_time' without"),
        ({"addition_time_embed_dim": None}, "addition_time_embed_dim (None)"),
        (
            {"transformer_layers_per_block": ((1, 1), (1, 2))},
            "transformer_layers_per_block=[[1, 1], [1, 2]] (per-transformer depths within a level",
        ),
        ({"reverse_transformer_layers_per_block": ((1, 1, 1), (1, 2, 1))}, "reverse_transformer_layers_per_block="),
        ({"transformer_layers_per_block": (1, 2, 3)}, "transformer_layers_per_block has 3 entries for 2 levels"),
        ({"class_embed_type": "projection"}, "class_embed_type='projection'"),
        ({"encoder_hid_dim": 16}, "encoder_hid_dim=16"),
        ({"time_cond_proj_dim": 8}, "time_cond_proj_dim=8"),
        ({"projection_class_embeddings_input_dim": 40}, "text_time_dim=40 is less than the 6 time ids' features"),
    ],
)
def test_unsupported_sdxl_variants_name_the_feature(changes, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        config_from_diffusers({**SDXL_STYLE, **changes})


def test_settings_that_build_nothing_are_ignored():
    """upcast_attention (fp16 only) and addition_embed_type_num_heads (the refused "text" embedding's) change
    nothing; without an addition embedding, addition_time_embed_dim and the projection width are unused."""
    base = config_from_diffusers(SDXL_STYLE)
    assert config_from_diffusers({**SDXL_STYLE, "upcast_attention": True, "addition_embed_type_num_heads": 3}) == base
    plain = config_from_diffusers({**SDXL_STYLE, "addition_embed_type": None})
    assert plain == attrs.evolve(base, text_time_dim=0, text_time_embed_dim=256)
    assert config_from_diffusers({**SDXL_STYLE, "transformer_layers_per_block": [2, 2]}).transformer_depth == 2


# -- diffkit's own folders ---------------------------------------------------------------------------


def test_save_and_load_pretrained_round_trip(tmp_path):
    model = tiny_sdxl("3-level")
    diffkit.save_pretrained(model, tmp_path)
    saved = json.loads((tmp_path / "diffkit.json").read_text())["config"]
    assert saved["transformer_depth"] == [1, 2, 3] and saved["text_time_dim"] == 80
    loaded = diffkit.load_pretrained(tmp_path)
    assert type(loaded) is LatentUNet and loaded.config == model.config and not loaded.training
    x, t, context, pooled, time_ids = sdxl_inputs()
    with torch.no_grad():
        expected = model(x, t, record(context, pooled, time_ids))
        torch.testing.assert_close(loaded(x, t, record(context, pooled, time_ids)), expected, rtol=0, atol=0)
