"""The ``diffusers_transformer`` backbone: diffusers' PixArt, SD3 and Flux transformers called as diffkit backbones.

Each wrapper's output is compared with the call the diffusers pipeline makes (PixArtAlphaPipeline /
PixArtSigmaPipeline, StableDiffusion3Pipeline, FluxPipeline — for Flux through the pipeline's own static
``_pack_latents`` / ``_unpack_latents`` / ``_prepare_latent_image_ids``), on tiny seeded modules configured
as diffusers' own pipeline tests configure them; then saving and loading, diffusers folders, errors,
gradients and the Pipeline.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import diffkit
from diffkit.errors import CheckpointError, ConfigError, ShapeError, UnknownNameError
from diffkit.integrations.diffusers.backbones import (
    DiffusersTransformer,
    DiffusersTransformerConfig,
    from_diffusers_folder,
    from_diffusers_module,
    latent_image_ids,
    pack_latents,
    unpack_latents,
)
from diffkit.io.components import load_component, save_pretrained
from diffkit.models.conditioners import Conditioning
from diffkit.pipeline import Pipeline
from tests.model_checks import check_bf16, check_checkpointing

pytestmark = pytest.mark.usefixtures("one_thread")

FluxPipeline = diffusers.FluxPipeline

PIXART = {
    "sample_size": 8, "num_layers": 2, "patch_size": 2, "attention_head_dim": 8, "num_attention_heads": 3,
    "caption_channels": 32, "in_channels": 4, "cross_attention_dim": 24, "out_channels": 8, "attention_bias": True,
    "activation_fn": "gelu-approximate", "num_embeds_ada_norm": 1000, "norm_type": "ada_norm_single",
    "norm_elementwise_affine": False, "norm_eps": 1e-6,
}
SD3 = {
    "sample_size": 32, "patch_size": 1, "in_channels": 4, "num_layers": 1, "attention_head_dim": 8,
    "num_attention_heads": 4, "caption_projection_dim": 32, "joint_attention_dim": 32, "pooled_projection_dim": 64,
    "out_channels": 4,
}
FLUX = {
    "patch_size": 1, "in_channels": 4, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16,
    "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32, "axes_dims_rope": [4, 4, 8],
}
CASES = {
    "pixart": ("PixArtTransformer2DModel", PIXART),
    "pixart_alpha_1024": ("PixArtTransformer2DModel", {**PIXART, "use_additional_conditions": True}),
    "sd3": ("SD3Transformer2DModel", SD3),
    "flux": ("FluxTransformer2DModel", FLUX),
    "flux_dev": ("FluxTransformer2DModel", {**FLUX, "guidance_embeds": True}),
}
B = 2


def module(case: str, seed: int = 0) -> torch.nn.Module:
    """The tiny diffusers module, seeded, in eval mode."""
    class_name, config = CASES[case]
    torch.manual_seed(seed)
    return getattr(diffusers, class_name)(**config).eval()


def wrapped(case: str, seed: int = 0, **options) -> DiffusersTransformer:
    return from_diffusers_module(module(case, seed), **options)


def randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def record(case: str, m: int = 5, seed: int = 1) -> Conditioning:
    """A conditioning record of the widths the case reads (PixArt: a mask with padding)."""
    if case.startswith("pixart"):
        mask = torch.ones(B, m, dtype=torch.bool)
        mask[0, 3:] = False
        return Conditioning(context=randn(B, m, 32, seed=seed), mask=mask)
    vector_dim = 64 if case == "sd3" else 32
    return Conditioning(context=randn(B, m, 32, seed=seed), vector=randn(B, vector_dim, seed=seed + 1))


def inputs(case: str, height: int = 8, width: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, t): x in the backbone's unpacked latent shape, t in its timestep units."""
    channels = 1 if case.startswith("flux") else 4
    x = randn(B, channels, height, width, seed=3)
    t = torch.tensor([10.0, 500.5]) if case.startswith("pixart") else torch.tensor([999.0, 250.25])  # VP / t·1000
    return x, t


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    assert (a - b).abs().max().item() <= 1e-6
    assert b.abs().max().item() > 1e-3  # a network answering 0 would prove nothing


# -- what the diffusers pipelines pass -----------------------------------------------------------------


def pixart_pipeline_call(m, x, t, cond, *, vae_scale_factor=8):
    """PixArtAlphaPipeline.__call__'s transformer call (the tokenizer's mask is int64 there)."""
    added = {"resolution": None, "aspect_ratio": None}
    if m.config.sample_size == 128 or m.use_additional_conditions:  # α's rule; the module decides whether it reads them
        height, width = x.shape[2] * vae_scale_factor, x.shape[3] * vae_scale_factor
        added = {
            "resolution": torch.tensor([height, width]).repeat(x.shape[0], 1).to(cond.context.dtype),
            "aspect_ratio": torch.tensor([float(height / width)]).repeat(x.shape[0], 1).to(cond.context.dtype),
        }
    return m(x, encoder_hidden_states=cond.context, encoder_attention_mask=cond.mask.long(), timestep=t,
             added_cond_kwargs=added, return_dict=False)[0]


def sd3_pipeline_call(m, x, t, cond):
    return m(hidden_states=x, timestep=t, encoder_hidden_states=cond.context, pooled_projections=cond.vector,
             return_dict=False)[0]


def flux_pipeline_call(m, x, t, cond, guidance_scale=None, *, vae_scale_factor=8):
    """FluxPipeline.__call__: pack, ids, t / 1000, guidance as float32 [B], unpack."""
    batch, channels, height, width = x.shape
    latents = FluxPipeline._pack_latents(x, batch, channels, height, width)
    image_ids = FluxPipeline._prepare_latent_image_ids(batch, height // 2, width // 2, x.device, x.dtype)
    text_ids = torch.zeros(cond.context.shape[1], 3).to(device=x.device, dtype=x.dtype)
    guidance = None
    if m.config.guidance_embeds:
        guidance = torch.full([1], guidance_scale, dtype=torch.float32).expand(batch)
    timestep = t.expand(batch).to(latents.dtype)
    out = m(hidden_states=latents, timestep=timestep / 1000, guidance=guidance, pooled_projections=cond.vector,
            encoder_hidden_states=cond.context, txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]
    return FluxPipeline._unpack_latents(out, height * vae_scale_factor, width * vae_scale_factor, vae_scale_factor)


# -- parity ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "size"), [("pixart", (8, 8)), ("pixart", (8, 12)), ("pixart_alpha_1024", (8, 12))])
def test_pixart_matches_the_pipeline_call(case, size):
    backbone = wrapped(case)
    x, t = inputs(case, *size)
    cond = record(case)
    with torch.no_grad():
        ours = backbone(x, t, cond)
        theirs = pixart_pipeline_call(backbone.transformer, x, t, cond)
    assert ours.shape == (B, 8, *size)  # the learned-σ channels are kept
    assert_same(ours, theirs)
    assert backbone.readable_conditioning() == {"context", "mask"}
    if case == "pixart_alpha_1024":  # the micro-conditions are read: other pixel sizes change the output
        with torch.no_grad():
            other = from_diffusers_module(backbone.transformer, vae_scale_factor=16)(x, t, cond)
        assert not torch.allclose(other, ours)


@pytest.mark.parametrize("size", [(8, 8), (6, 10)])
def test_sd3_matches_the_pipeline_call(size):
    backbone = wrapped("sd3")
    x, t = inputs("sd3", *size)
    cond = record("sd3")
    with torch.no_grad():
        assert_same(backbone(x, t, cond), sd3_pipeline_call(backbone.transformer, x, t, cond))
    assert backbone.readable_conditioning() == {"context", "vector"}
    assert not backbone.embedded_guidance


@pytest.mark.parametrize(("case", "size", "guidance"), [
    ("flux", (8, 8), None), ("flux", (6, 10), None), ("flux_dev", (8, 8), 3.5), ("flux_dev", (6, 10), 1.0),
])
def test_flux_matches_the_pipeline_call(case, size, guidance):
    backbone = wrapped(case)
    x, t = inputs(case, *size)
    cond = record(case)
    with torch.no_grad():
        ours = backbone(x, t, cond, guidance=guidance)
        theirs = flux_pipeline_call(backbone.transformer, x, t, cond, guidance)
    assert ours.shape == x.shape
    assert_same(ours, theirs)
    assert backbone.embedded_guidance is (case == "flux_dev") is backbone.config.embedded_guidance
    if guidance is not None:  # a [B] tensor is the same guidance; another scale another answer
        with torch.no_grad():
            assert torch.equal(backbone(x, t, cond, guidance=torch.full((B,), guidance)), ours)
            assert not torch.allclose(backbone(x, t, cond, guidance=guidance + 2), ours)


def test_flux_packing_is_the_pipelines():
    x = randn(3, 5, 6, 10, seed=0)
    tokens = pack_latents(x)
    assert torch.equal(tokens, FluxPipeline._pack_latents(x, 3, 5, 6, 10))
    assert torch.equal(unpack_latents(tokens, 6, 10), FluxPipeline._unpack_latents(tokens, 48, 80, 8))
    assert torch.equal(unpack_latents(tokens, 6, 10), x)
    ids = latent_image_ids(3, 5, device=torch.device("cpu"), dtype=torch.bfloat16)
    assert torch.equal(ids, FluxPipeline._prepare_latent_image_ids(3, 3, 5, "cpu", torch.bfloat16))


def test_the_input_dtype_comes_back():
    backbone = wrapped("sd3")
    x, t = inputs("sd3")
    with torch.no_grad():
        out64 = backbone(x.double(), t, record("sd3"))
        out32 = backbone(x, t, record("sd3"))
    assert out64.dtype == torch.float64 and torch.equal(out64.float(), out32)


# -- configs, the registry, saving and loading ----------------------------------------------------------


def test_the_config_derives_what_the_pipeline_reads():
    pixart, sd3, flux = (wrapped(case).config for case in ("pixart", "sd3", "flux_dev"))
    assert (pixart.in_channels, pixart.out_channels, pixart.sample_size, pixart.family) == (4, 8, 8, "pixart")
    assert (sd3.in_channels, sd3.out_channels, sd3.sample_size, sd3.vector_dim) == (4, 4, 32, 64)
    assert (flux.in_channels, flux.out_channels, flux.sample_size, flux.embedded_guidance) == (1, 1, 128, True)
    assert wrapped("flux", sample_size=16).config.sample_size == 16
    assert "_use_default_values" not in pixart.config and pixart.config["use_additional_conditions"] is None
    assert DiffusersTransformerConfig.from_dict(json.loads(json.dumps(sd3.to_dict()))) == sd3
    assert sd3.to_dict()["config"]["dual_attention_layers"] == [] and hash(sd3) == hash(wrapped("sd3").config)
    with pytest.raises(TypeError):
        sd3.config["in_channels"] = 8  # read-only: the config cannot drift from the module it built
    with pytest.raises(ConfigError, match="divisible by 2"):
        wrapped("flux", sample_size=7)
    with pytest.raises(ConfigError, match="lacks in_channels"):
        DiffusersTransformerConfig(class_name="SD3Transformer2DModel", config={"sample_size": 8})


def test_registry_build_gives_the_diffusers_module():
    backbone = diffkit.build("backbone", "diffusers_transformer", class_name="FluxTransformer2DModel",
                             config={**FLUX, "_class_name": "FluxTransformer2DModel"}, sample_size=8)
    assert isinstance(backbone.transformer, diffusers.FluxTransformer2DModel)
    complete = {key: value for key, value in module("flux").config.items() if not key.startswith("_")}
    assert backbone.config.to_dict()["config"] == json.loads(json.dumps(complete))
    assert backbone.config.config["guidance_embeds"] is False  # the dict is complete: diffusers' defaults filled in
    assert set(backbone.state_dict()) == {f"transformer.{key}" for key in module("flux").state_dict()}
    with torch.device("meta"):  # load_component's probe
        probe = diffkit.build("backbone", "diffusers_transformer", class_name="PixArtTransformer2DModel", config=PIXART)
    assert all(p.is_meta for p in probe.parameters())


def test_unsupported_classes_and_keys_are_named():
    with pytest.raises(UnknownNameError, match="UNet2DModel") as error:
        diffkit.build("backbone", "diffusers_transformer", class_name="UNet2DModel", config={})
    for name in ("PixArtTransformer2DModel", "SD3Transformer2DModel", "FluxTransformer2DModel"):
        assert name in str(error.value)
    with pytest.raises(UnknownNameError, match="num_layer.*num_layers"):
        diffkit.build("backbone", "diffusers_transformer", class_name="SD3Transformer2DModel",
                      config={**SD3, "num_layer": 2})
    with pytest.raises(UnknownNameError, match="SD3Transformer2DModel"):
        from_diffusers_module(diffusers.UNet2DModel(block_out_channels=(8, 8), norm_num_groups=8,
                                                    down_block_types=("DownBlock2D",) * 2,
                                                    up_block_types=("UpBlock2D",) * 2))


@pytest.mark.parametrize("case", ["pixart_alpha_1024", "sd3", "flux", "flux_dev"])
def test_save_pretrained_then_load_component_round_trips(case, tmp_path):
    backbone = wrapped(case, seed=4, sample_size=8 if case.startswith("flux") else None)
    save_pretrained(backbone, tmp_path / "backbone")
    saved = json.loads((tmp_path / "backbone" / "diffkit.json").read_text())
    assert (saved["kind"], saved["name"]) == ("backbone", "diffusers_transformer")
    loaded = load_component(tmp_path / "backbone")
    assert type(loaded) is type(backbone) and loaded.config == backbone.config
    assert loaded.state_dict().keys() == backbone.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), backbone.state_dict().values()))
    x, t = inputs(case)
    guidance = 3.5 if case == "flux_dev" else None
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x, t, record(case), guidance=guidance),
                           backbone(x, t, record(case), guidance=guidance))


def test_a_config_describing_other_weights_is_refused(tmp_path):
    save_pretrained(wrapped("sd3"), tmp_path / "b")
    record_file = tmp_path / "b" / "diffkit.json"
    saved = json.loads(record_file.read_text())
    saved["config"]["config"]["num_layers"] = 2
    record_file.write_text(json.dumps(saved))
    with pytest.raises(CheckpointError, match="missing"):
        load_component(tmp_path / "b")


@pytest.mark.parametrize("case", ["pixart", "sd3", "flux_dev"])
def test_a_diffusers_saved_folder_loads_identically(case, tmp_path):
    original = module(case, seed=5)
    original.save_pretrained(tmp_path / "pipe" / "transformer")  # diffusers' own writer: config.json + safetensors
    for path in (tmp_path / "pipe", tmp_path / "pipe" / "transformer"):
        backbone = from_diffusers_folder(path)
        assert not backbone.training and backbone.config.vae_scale_factor == 8
        assert all(isinstance(p, torch.nn.Parameter) and p.requires_grad for p in backbone.parameters())
        assert backbone.config == from_diffusers_module(original).config
        ours, theirs = backbone.transformer.state_dict(), original.state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
        buffers = dict(original.named_buffers())  # buffers the constructor computes (PixArt's position table)
        assert all(torch.equal(buffer, buffers[name]) for name, buffer in backbone.transformer.named_buffers())
        x, t = inputs(case)
        guidance = 3.5 if case == "flux_dev" else None
        with torch.no_grad():
            assert torch.equal(backbone(x, t, record(case), guidance=guidance),
                               from_diffusers_module(original)(x, t, record(case), guidance=guidance))
    (tmp_path / "pipe" / "vae").mkdir()
    (tmp_path / "pipe" / "vae" / "config.json").write_text(json.dumps({"block_out_channels": [8, 16, 32]}))
    assert from_diffusers_folder(tmp_path / "pipe").config.vae_scale_factor == 4
    half = from_diffusers_folder(tmp_path / "pipe", dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in half.parameters())


def test_a_legacy_pixart_folder_is_read_as_diffusers_reads_it(tmp_path):
    original = module("pixart", seed=6)
    original.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(_class_name="Transformer2DModel", only_cross_attention=False, use_linear_projection=False)
    (tmp_path / "config.json").write_text(json.dumps(config))
    backbone = from_diffusers_folder(tmp_path)
    assert backbone.config.class_name == "PixArtTransformer2DModel"
    x, t = inputs("pixart")
    with torch.no_grad():
        assert torch.equal(backbone(x, t, record("pixart")), from_diffusers_module(original)(x, t, record("pixart")))
    config.update(_class_name="UNet2DModel")
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnknownNameError, match="FluxTransformer2DModel"):
        from_diffusers_folder(tmp_path)


# -- errors ---------------------------------------------------------------------------------------------


def test_guidance_misuse_is_a_clear_error():
    x, t = inputs("flux")
    dev, schnell, sd3 = wrapped("flux_dev"), wrapped("flux"), wrapped("sd3")
    with pytest.raises(ConfigError, match="guidance-distilled.*pass guidance="):
        dev(x, t, record("flux_dev"))
    with pytest.raises(ConfigError, match="does not embed a guidance scale"):
        schnell(x, t, record("flux"), guidance=3.5)
    with pytest.raises(ConfigError, match="does not embed a guidance scale"):
        sd3(*inputs("sd3"), record("sd3"), guidance=3.5)
    with pytest.raises(ShapeError, match=r"\[B\] = \[2\]"):
        dev(x, t, record("flux_dev"), guidance=torch.ones(3))


@pytest.mark.parametrize(("case", "cond", "error", "message"), [
    ("sd3", None, ShapeError, r"context \[B, M, 32\] and vector \[B, 64\].*got cond=None"),
    ("sd3", Conditioning(context=torch.zeros(B, 5, 32)), ShapeError,
     r"vector must have shape \[B=2, 64\], got a record without vector"),
    ("flux", torch.zeros(B, 5, 32), ShapeError, r"vector must have shape \[B=2, 32\], got a bare context tensor"),
    ("sd3", Conditioning(context=torch.zeros(B, 5, 16), vector=torch.zeros(B, 64)), ShapeError,
     r"context with shape \[B=2, M, 32\]"),
    ("flux", Conditioning(context=torch.zeros(B, 5, 32), vector=torch.zeros(B, 64)), ShapeError,
     r"vector with shape \[B=2, 32\]"),
    ("pixart", Conditioning(vector=torch.zeros(B, 32)), ConfigError, "unconditional in everything"),
    ("pixart", Conditioning(context=torch.zeros(B, 5, 32), concat=torch.zeros(B, 1, 8, 8)), ConfigError, "concat"),
    ("pixart", {"context": torch.zeros(B, 5, 32), "mask": torch.ones(B, 4, dtype=torch.bool)}, ShapeError,
     r"mask as bool \[B, M\] = \[2, 5\]"),
])
def test_a_record_the_family_cannot_read_is_a_clear_error(case, cond, error, message):
    x, t = inputs(case)
    with pytest.raises(error, match=message):
        wrapped(case)(x, t, cond)


def test_a_latent_of_the_wrong_shape_is_a_clear_error():
    with pytest.raises(ShapeError, match=r"\[B, 1, H, W\] with H and W multiples of 2"):
        wrapped("flux")(randn(B, 1, 7, 8, seed=0), torch.ones(B), record("flux"))
    with pytest.raises(ShapeError, match=r"\[B, 4, H, W\]"):
        wrapped("pixart")(randn(B, 3, 8, 8, seed=0), torch.ones(B), record("pixart"))
    with pytest.raises(ShapeError, match="at most 96×96"):
        wrapped("sd3")(randn(B, 4, 98, 8, seed=0), torch.ones(B), record("sd3"))


def test_import_and_registration_do_not_import_diffusers():
    code = (
        "import sys, diffkit; diffkit.get_entry('backbone', 'diffusers_transformer'); "
        "from diffkit.integrations.diffusers.backbones import DiffusersTransformerConfig; "
        "assert 'diffusers' not in sys.modules, 'diffusers imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_without_diffusers_building_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers → ImportError
    with pytest.raises(ConfigError, match=r"pip install 'diffkit\[diffusers\]'"):
        diffkit.build("backbone", "diffusers_transformer", class_name="FluxTransformer2DModel", config=FLUX)


# -- training and the Pipeline --------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["pixart", "sd3", "flux_dev"])
def test_gradients_reach_the_wrapped_parameters(case):
    backbone = wrapped(case)
    backbone.train()
    assert backbone.transformer.training and all(m.training for m in backbone.transformer.modules())
    x, t = inputs(case)
    backbone(x, t, record(case), guidance=3.5 if case == "flux_dev" else None).square().mean().backward()
    grads = {name: p.grad for name, p in backbone.named_parameters()}
    assert grads["transformer.proj_out.weight"] is not None
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads.values()) >= 0.75 * len(grads)
    backbone.eval()
    assert not any(m.training for m in backbone.transformer.modules())


@pytest.mark.parametrize("case", ["pixart_alpha_1024", "flux"])  # (SD3's last block discards its context queries)
def test_gradient_checkpointing_changes_nothing(case):
    backbone = wrapped(case).train()
    assert not backbone.gradient_checkpointing
    check_checkpointing(backbone, *inputs(case), record(case))  # switches it on through the wrapper
    assert backbone.transformer.is_gradient_checkpointing
    built = diffkit.build("backbone", "diffusers_transformer", class_name="SD3Transformer2DModel", config=SD3,
                          gradient_checkpointing=True)
    assert built.gradient_checkpointing and built.config.gradient_checkpointing


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")  # torch's rms_norm under autocast
@pytest.mark.parametrize("case", ["pixart", "sd3", "flux"])
def test_bf16_stays_close(case):
    check_bf16(wrapped(case), *inputs(case), record(case))


def test_a_pipeline_takes_the_backbone():
    pixart = Pipeline(backbone=wrapped("pixart"), schedule="linear", parameterization="eps")
    assert pixart.sample_shape == (4, 8, 8) and pixart.learned_variance
    sd3 = Pipeline(backbone=wrapped("sd3"), parameterization="flow")
    assert sd3.sample_shape == (4, 32, 32) and not sd3.learned_variance
    assert Pipeline(backbone=wrapped("flux"), parameterization="flow").sample_shape == (1, 128, 128)


def test_a_flux_pipeline_trains_samples_and_saves(tmp_path):
    text = {"width": 16, "depth": 1, "heads": 2, "max_length": 8, "context_dim": 32}  # vector: the pooled context, 32
    pipe = Pipeline(backbone=wrapped("flux", sample_size=8), conditioner=("text", text), parameterization="flow",
                    sampler="euler", default_steps=2)
    assert pipe.sample_shape == (1, 8, 8)
    loss, _ = pipe.loss(randn(B, 1, 8, 8, seed=0), ["a red square", "two dots"], generator=torch.Generator())
    loss.backward()
    assert pipe.backbone.transformer.proj_out.weight.grad is not None
    out = pipe.sample(B, cond=["a red square", ""], guidance=2.0, generator=0)
    assert out.shape == (B, 1, 8, 8) and torch.isfinite(out).all()
    pipe.save(tmp_path / "pipe")
    again = diffkit.load_pretrained(tmp_path / "pipe")
    assert torch.equal(again.sample(B, cond=["a red square", ""], guidance=2.0, generator=0),
                       pipe.eval().sample(B, cond=["a red square", ""], guidance=2.0, generator=0))
