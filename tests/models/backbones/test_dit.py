"""DiT (Peebles & Xie 2023): parameter counts, shapes, initialisation, precision, checkpointing,
the registry entry, and equivalence with diffusers' DiTTransformer2DModel."""

from __future__ import annotations

import math
import types

import attrs
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffkit.errors import CheckpointError, ConfigError, ShapeError, UnknownNameError
from diffkit.io.diffusers.dit import (
    config_from_diffusers,
    convert_diffusers_state_dict,
    dit_from_diffusers,
    load_diffusers_dit,
)
from diffkit.models.backbones import (
    DIT_PRESETS,
    Attention,
    DiT,
    DiTConfig,
    FeedForward,
    sincos_position_embedding_2d,
    timestep_embedding,
)
from tests.model_checks import check_registered
from tests.model_helpers import randomize, tiny_diffusers_dit

TINY = DiTConfig(input_size=8, patch_size=2, hidden_size=32, depth=2, num_heads=4, num_classes=10)


def inputs(config: DiTConfig, batch: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, config.input_size, config.input_size, generator=g)
    t = torch.tensor([0.0, 417.25, 999.0, 12.0, 600.0][:batch])  # fractional t included
    y = torch.tensor([0, 7, config.num_classes, 3, 1][:batch])  # the null class included
    return x, t, y


# -- parameter counts -----------------------------------------------------------------------


def paper_count(depth: int, width: int, patch: int, *, size: int = 32, channels: int = 4, classes: int = 1000) -> int:
    """DiT's parameters from the architecture (§3.2), fixed position embedding included."""
    D, tokens, out = width, (size // patch) ** 2, 2 * channels  # learned σ: 2C outputs
    patchify = channels * patch * patch * D + D  # p×p conv, C → D
    positions = tokens * D
    t_mlp = (256 * D + D) + (D * D + D)  # 256 sinusoidal features → D → D
    labels = (classes + 1) * D  # + the null class
    attention = (D * 3 * D + 3 * D) + (D * D + D)  # qkv, output projection
    mlp = (D * 4 * D + 4 * D) + (4 * D * D + D)
    ada_ln = D * 6 * D + 6 * D  # shift, scale, gate × (attention, MLP)
    final = (D * 2 * D + 2 * D) + (D * patch * patch * out + patch * patch * out)
    return patchify + positions + t_mlp + labels + depth * (attention + mlp + ada_ln) + final


TABLE_1 = {"S": (12, 384), "B": (12, 768), "L": (24, 1024), "XL": (28, 1152)}


@pytest.mark.parametrize("name", sorted(DIT_PRESETS))
def test_parameter_count_of_every_preset(name):
    size, patch = name.removeprefix("DiT-").split("/")
    depth, width = TABLE_1[size]
    with torch.device("meta"):  # counts without allocating the weights
        model = DiT(DIT_PRESETS[name])
    expected = paper_count(depth, width, int(patch))
    assert model.num_parameters() == expected
    positions = (32 // int(patch)) ** 2 * width
    assert sum(p.numel() for p in model.parameters()) == expected - positions  # the buffer is not a parameter
    assert model.num_parameters(include_position_embedding=False) == expected - positions


def test_dit_xl_2_has_the_papers_675m_parameters():
    with torch.device("meta"):
        model = DiT(DIT_PRESETS["DiT-XL/2"])
    assert model.num_parameters() == 675_129_632
    assert DiTConfig() == DIT_PRESETS["DiT-XL/2"]  # the defaults are XL/2 at 256 px


def test_position_embedding_is_a_fixed_unsaved_buffer():
    model = DiT(TINY)
    assert "pos_embed" not in dict(model.named_parameters())
    assert "pos_embed" not in model.state_dict()
    model.requires_grad_(True)
    assert not model.pos_embed.requires_grad


# -- configuration --------------------------------------------------------------------------


def test_presets_are_frozen_values():
    assert len(DIT_PRESETS) == 12
    cfg = DIT_PRESETS["DiT-B/4"]
    assert (cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.patch_size) == (12, 768, 12, 4)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        cfg.depth = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        DIT_PRESETS["mine"] = cfg  # type: ignore[index]
    changed = DiTConfig.from_preset("DiT-B/4", num_classes=10)
    assert changed.num_classes == 10 and changed.hidden_size == 768
    assert DiTConfig.from_dict(changed.to_dict()) == changed


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"hidden_size": 30, "num_heads": 4}, "divisible by num_heads"),
        ({"hidden_size": 18, "num_heads": 3}, "divisible by 4"),
        ({"input_size": 9, "patch_size": 2}, "not divisible by patch_size"),
        ({"depth": 0}, "depth must be an integer ≥ 1"),
        ({"depth": True}, "depth must be an integer"),
        ({"mlp_ratio": 0}, "mlp_ratio must be a finite number > 0"),
        ({"learn_sigma": 1}, "learn_sigma must be True or False"),
        ({"num_classes": -1}, "num_classes must be an integer ≥ 0"),
    ],
)
def test_bad_configs_are_rejected(fields, words):
    with pytest.raises(ConfigError, match=words):
        DiTConfig(**{**TINY.to_dict(), **fields})


def test_unknown_fields_and_presets_name_close_matches():
    with pytest.raises(UnknownNameError, match="hidden_size"):
        DiTConfig.from_dict({"hiden_size": 32})
    with pytest.raises(UnknownNameError, match="DiT-XL/2"):
        DiTConfig.from_preset("DiT-XL2")


# -- shapes, conditioning and initialisation -------------------------------------------------


@pytest.mark.parametrize("learn_sigma", [True, False])
def test_output_shape(learn_sigma):
    cfg = attrs.evolve(TINY, learn_sigma=learn_sigma, in_channels=3)
    model = DiT(cfg)
    x, t, y = inputs(cfg)
    out = model(x, t, y)
    assert out.shape == (3, 6 if learn_sigma else 3, 8, 8)


def test_zero_initialisation_gives_exactly_zero_output():
    model = DiT(TINY)
    x, t, y = inputs(TINY)
    assert torch.equal(model(x, t, y), torch.zeros(3, 8, 8, 8))
    for block in model.blocks:  # adaLN-Zero: every block starts as the identity
        assert not block.adaLN.linear.weight.any() and not block.adaLN.linear.bias.any()


def test_initialisation_follows_the_paper():
    torch.manual_seed(0)
    model = DiT(attrs.evolve(TINY, hidden_size=64, num_classes=1000))
    qkv = model.blocks[0].attn.qkv.weight  # xavier-uniform: bound √(6/(fan_in + fan_out))
    assert qkv.abs().max() <= math.sqrt(6 / (64 + 3 * 64)) and qkv.abs().max() > 0.9 * math.sqrt(6 / 256)
    assert not model.blocks[0].attn.qkv.bias.any()
    table = model.y_embedder.embedding_table.weight
    assert table.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.t_embedder.mlp[0].weight.std().item() == pytest.approx(0.02, rel=0.05)
    patch = model.patch_embed.weight.flatten(1)  # like a linear layer on the flattened patch
    assert patch.abs().max() <= math.sqrt(6 / (patch.shape[0] + patch.shape[1]))


def test_conditioning_rule():
    model = randomize(DiT(TINY))
    x, t, y = inputs(TINY)
    with torch.no_grad():
        labelled = model(x, t, y)
        assert torch.equal(model(x, t, {"labels": y}), labelled)
        assert torch.equal(model(x, t, types.SimpleNamespace(labels=y)), labelled)
        null = torch.full((3,), TINY.num_classes)
        assert torch.equal(model(x, t), model(x, t, null))  # None = the null class
        assert torch.equal(model(x, t, {"labels": None}), model(x, t, null))
        assert torch.equal(model(x, 250.0, y), model(x, torch.full((3,), 250.0), y))  # scalar t broadcast
    with pytest.raises(ShapeError, match="integer"):
        model(x, t, y.float())
    with pytest.raises(ShapeError, match=r"\[B\] = \[3\]"):
        model(x, t, y[:2])
    with pytest.raises(TypeError, match="labels"):
        model(x, t, {"text": y})
    with pytest.raises(ShapeError, match="t must have shape"):
        model(x, t[:2], y)
    with pytest.raises(ShapeError, match=r"\[B, 4, 8, 8\]"):
        model(x[:, :, :4], t, y)


def test_unconditional_dit_has_no_label_table():
    model = randomize(DiT(attrs.evolve(TINY, num_classes=0)))
    x, t, _ = inputs(TINY)
    assert model.y_embedder is None and model(x, t).shape == (3, 8, 8, 8)
    with pytest.raises(ConfigError, match="unconditional"):
        model(x, t, torch.zeros(3, dtype=torch.long))


# -- training: precision and gradient checkpointing --------------------------------------------


def loss_and_grads(model, x, t, y, autocast_dtype=None):
    model.zero_grad()
    with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        out = model(x, t, y)
    loss = out.float().square().mean()
    loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters()}


def test_forward_backward_fp32_reaches_every_parameter():
    model = randomize(DiT(TINY))
    out, grads = loss_and_grads(model, *inputs(TINY))
    assert out.dtype == torch.float32
    assert all(torch.isfinite(g).all() and g.any() for g in grads.values())


def test_bf16_autocast_and_bf16_weights():
    model = randomize(DiT(TINY), std=0.1)
    x, t, y = inputs(TINY)
    reference, _ = loss_and_grads(model, x, t, y)
    out, grads = loss_and_grads(model, x, t, y, autocast_dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert all(torch.isfinite(g).all() for g in grads.values())
    assert (out.float() - reference).norm() <= 0.05 * reference.norm()
    with torch.no_grad():
        pure = model.to(torch.bfloat16)(x.bfloat16(), t, y)
    assert pure.dtype == torch.bfloat16
    assert (pure.float() - reference).norm() <= 0.05 * reference.norm()


def test_gradient_checkpointing_gives_the_same_gradients():
    model = randomize(DiT(TINY))
    x, t, y = inputs(TINY)
    _, plain = loss_and_grads(model, x, t, y)
    model.gradient_checkpointing = True
    _, checkpointed = loss_and_grads(model, x, t, y)
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-6, atol=1e-7, msg=name)
    assert DiT(attrs.evolve(TINY, gradient_checkpointing=True)).gradient_checkpointing


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp32_and_bf16_match_cpu():
    model = randomize(DiT(TINY), std=0.1)
    x, t, y = inputs(TINY)
    with torch.no_grad():
        reference = model(x, t, y)
        model.cuda()
        fp32 = model(x.cuda(), t.cuda(), y.cuda()).cpu()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(x.cuda(), t.cuda(), y.cuda()).float().cpu()
    torch.testing.assert_close(fp32, reference, rtol=1e-3, atol=1e-3)  # TF32 may be on
    assert (bf16 - reference).norm() <= 0.05 * reference.norm()


# -- registry -----------------------------------------------------------------------------------


def test_registered_as_backbone_dit():
    check_registered("backbone", "dit", DiT, TINY, ("DiT-S/8", {"input_size": 16, "num_classes": 10}),
                     ("num_head", "num_heads"))


# -- shared layers and embeddings ----------------------------------------------------------------


def naive_attention(q, k, v, heads, mask=None):
    B, N, D = q.shape
    q, k, v = (a.reshape(a.shape[0], a.shape[1], heads, -1).transpose(1, 2) for a in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(D // heads)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, N, D)


def test_attention_matches_the_formula_with_context_and_padding_mask():
    torch.manual_seed(0)
    self_attn, cross = Attention(16, 4), Attention(16, 4, context_dim=12)
    x, ctx = torch.randn(2, 5, 16), torch.randn(2, 7, 12)
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4])
    q, k, v = self_attn.qkv(x).chunk(3, dim=-1)
    torch.testing.assert_close(self_attn(x), self_attn.proj(naive_attention(q, k, v, 4)))
    k, v = cross.kv(ctx).chunk(2, dim=-1)
    expected = cross.proj(naive_attention(cross.q(x), k, v, 4, mask))
    torch.testing.assert_close(cross(x, ctx, mask), expected)
    changed = ctx.clone()
    changed[1, 3:] = 100.0  # padded tokens do not matter
    torch.testing.assert_close(cross(x, changed, mask), expected)
    with pytest.raises(ShapeError, match="bool"):
        cross(x, ctx, mask.float())
    with pytest.raises(ShapeError, match="takes no context"):
        self_attn(x, ctx)


def test_feed_forward_variants():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8)
    geglu = FeedForward(8, 16, activation="geglu")
    a, g = geglu.fc1(x).chunk(2, dim=-1)
    torch.testing.assert_close(geglu(x), geglu.fc2(a * F.gelu(g)))
    mlp = FeedForward(8, 16, out_dim=5)
    assert mlp(x).shape == (2, 3, 5)
    torch.testing.assert_close(mlp(x), mlp.fc2(F.gelu(mlp.fc1(x), approximate="tanh")))
    with pytest.raises(UnknownNameError, match="geglu"):
        FeedForward(8, 16, activation="gegelu")


@pytest.mark.parametrize("shift", [0, 1])
def test_timestep_embedding_formula(shift):
    t = np.array([0.0, 1.5, 999.0])
    half = 128
    freqs = 10000.0 ** (-np.arange(half) / (half - shift))
    expected = np.concatenate([np.cos(t[:, None] * freqs), np.sin(t[:, None] * freqs)], axis=1)
    got = timestep_embedding(torch.tensor(t), 256, freq_shift=shift).double().numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4)  # float32 arguments up to 999 rad


def test_position_embedding_matches_mae_layout_and_diffusers():
    dim, h, w = 16, 3, 5
    emb = sincos_position_embedding_2d(dim, h, w).numpy()
    omega = 10000.0 ** (-np.arange(dim // 4) / (dim // 4))

    def one(p):
        return np.concatenate([np.sin(p * omega), np.cos(p * omega)])

    for i in range(h):
        for j in range(w):  # token i·W + j: [column j, row i]
            np.testing.assert_allclose(emb[i * w + j], np.concatenate([one(j), one(i)]), atol=1e-12)
    embeddings = pytest.importorskip("diffusers.models.embeddings")
    theirs = embeddings.get_2d_sincos_pos_embed(32, 4, base_size=4, output_type="pt")
    np.testing.assert_allclose(sincos_position_embedding_2d(32, 4, 4).numpy(), theirs.numpy(), atol=1e-6)


# -- diffusers -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [{}, {"out_channels": None, "patch_size": 4, "sample_size": 16, "num_layers": 3, "norm_eps": 1e-6}],
    ids=["learned-sigma", "plain"],
)
def test_outputs_agree_with_diffusers(config, tmp_path):
    theirs = tiny_diffusers_dit(**config)
    ours = dit_from_diffusers(theirs)
    assert ours.config.learn_sigma == (config.get("out_channels", 8) == 8)
    x, t, y = inputs(ours.config)
    with torch.no_grad():
        expected = theirs(x, t, y).sample
        got = ours(x, t, y)
    assert expected.abs().max() > 1  # not a trivially zero output
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    theirs.save_pretrained(tmp_path)  # a saved folder: config.json + safetensors
    with torch.no_grad():
        torch.testing.assert_close(load_diffusers_dit(tmp_path)(x, t, y), expected, rtol=0, atol=1e-5)


def test_conversion_rejects_embedder_copies_that_differ():
    theirs = tiny_diffusers_dit()
    state = {k: v.clone() for k, v in theirs.state_dict().items()}
    state["transformer_blocks.1.norm1.emb.timestep_embedder.linear_1.bias"] += 1
    with pytest.raises(CheckpointError, match=r"blocks \[1\] differ"):
        convert_diffusers_state_dict(state, config_from_diffusers(theirs.config))


@pytest.mark.parametrize(
    "change, words",
    [
        ({"activation_fn": "geglu"}, "activation_fn='geglu'"),
        ({"norm_type": "ada_norm"}, "norm_type='ada_norm'"),
        ({"out_channels": 5}, "out_channels=5"),
        ({"num_embeds_ada_norm": None}, "num_embeds_ada_norm=None"),
        ({"cross_attention_dim": 8}, "cross_attention_dim=8"),
        ({"caption_projection_dim": 8}, "unknown keys .*: caption_projection_dim"),
        ({"_class_name": "UNet2DModel"}, "not a diffusers DiT config"),
    ],
)
def test_config_conversion_rejects_what_dit_does_not_have(change, words):
    config = {"_class_name": "DiTTransformer2DModel", "sample_size": 8, "num_layers": 2, **change}
    with pytest.raises(ConfigError, match=words):
        config_from_diffusers(config)


def test_config_conversion_keeps_diffusers_conventions_unless_overridden():
    defaults = {"_class_name": "DiTTransformer2DModel", "_diffusers_version": "0.42.1", "out_channels": 8}
    config = config_from_diffusers(defaults)
    assert config == attrs.evolve(DIT_PRESETS["DiT-XL/2"], timestep_freq_shift=1, mlp_norm_eps=1e-5)
    original = config_from_diffusers(defaults, timestep_freq_shift=0, mlp_norm_eps=1e-6)
    assert original == DIT_PRESETS["DiT-XL/2"]
    hub_style = {"_class_name": "Transformer2DModel", "activation_fn": "gelu-approximate", "attention_bias": True,
                 "attention_head_dim": 72, "cross_attention_dim": None, "dropout": 0.0, "in_channels": 4,
                 "norm_elementwise_affine": False, "norm_num_groups": 32, "norm_type": "ada_norm_zero",
                 "num_attention_heads": 16, "num_embeds_ada_norm": 1000, "num_layers": 28,
                 "num_vector_embeds": None, "only_cross_attention": False, "out_channels": 8, "patch_size": 2,
                 "sample_size": 32, "upcast_attention": False, "use_linear_projection": False}
    assert config_from_diffusers(hub_style) == config
