"""Saving and loading components: diffkit folders (round trip, atomic writes) and diffusers
model folders (UNet2DModel, UNet2DConditionModel, DiTTransformer2DModel / Transformer2DModel,
AutoencoderKL), with the failure cases: pickle refused, corrupted files, non-fitting keys (in
every converter too), unknown classes."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch

import diffkit
from diffkit.errors import CheckpointError, ConfigError, UnknownNameError
from diffkit.io import components
from diffkit.io.components import save_pretrained
from diffkit.io.converters import DIFFUSERS_FORMATS
from diffkit.io.pretrained import load_pretrained
from tests.model_helpers import randomize, tiny_diffusers_dit

# The converters' own tests' tiny configs (tests/models/backbones/test_dit.py, test_unet.py, tests/models/autoencoders/test_kl.py).
TINY = {
    "dit": ("backbone", {"input_size": 8, "patch_size": 2, "hidden_size": 32, "depth": 2, "num_heads": 4, "num_classes": 10}),
    "unet": (
        "backbone",
        {"sample_size": 16, "block_out_channels": (16, 32), "layers_per_block": 1, "attention_levels": (1,),
         "attention_head_dim": 8, "norm_groups": 8, "num_classes": 5, "dropout": 0.0},
    ),
    "kl": ("autoencoder", {"block_out_channels": (8, 16), "layers_per_block": 1, "latent_channels": 3, "norm_num_groups": 4}),
}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(name: str, seed: int = 0) -> torch.nn.Module:
    kind, config = TINY[name]
    return randomize(diffkit.build(kind, name, **config), seed=seed).eval()


def outputs(module: torch.nn.Module) -> list[torch.Tensor]:
    """Deterministic outputs exercising every weight (encode μ, log σ² and decode for the VAE) of a
    diffkit component, or of a diffusers model on the same inputs (its outputs unwrapped)."""
    theirs = type(module).__module__.startswith("diffusers.")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if hasattr(module, "decode"):
            x = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
            z = torch.randn(2, 3, 8, 8, generator=g)
            posterior, decoded = module.encode(x), module.decode(z)
            if theirs:
                posterior, decoded = posterior.latent_dist, decoded.sample
            return [posterior.mean, posterior.logvar, decoded]
        config = module.config
        size = config.input_size if hasattr(config, "input_size") else config.sample_size
        x = torch.randn(2, config.in_channels, size, size, generator=g)
        t, labels = torch.tensor([3.0, 517.0]), torch.tensor([1, 4])
        if not theirs:
            return [module(x, t, labels)]
        if hasattr(module, "transformer_blocks"):
            return [module(x, t, labels).sample]
        return [module(x, t, class_labels=labels).sample]


def assert_same_outputs(a: torch.nn.Module, b: torch.nn.Module, atol: float = 0.0) -> None:
    for got, expected in zip(outputs(a), outputs(b)):
        assert expected.abs().max() > 0.1  # not trivially zero
        torch.testing.assert_close(got, expected, rtol=0, atol=atol)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def damaged(state: dict[str, torch.Tensor], missing: str, unexpected: str, misshaped: str) -> dict[str, torch.Tensor]:
    """A copy of ``state`` without ``missing``, with ``unexpected`` added and ``misshaped`` of shape (7,)."""
    state = {k: v.clone() for k, v in state.items()}
    del state[missing]
    state[unexpected] = torch.zeros(1)
    state[misshaped] = torch.zeros(7)
    return state


def assert_lists_bad_keys(info, missing: str, unexpected: str, misshaped: str, expected_shape: tuple) -> None:
    """The CheckpointError caught in ``info`` lists each key :func:`damaged` spoilt, one per line."""
    message = str(info.value)
    assert f"1 missing key(s):\n    {missing}" in message
    assert f"1 unexpected key(s):\n    {unexpected}" in message
    assert f"1 mis-shaped key(s):\n    {misshaped}: (7,), expected {expected_shape}" in message


# -- diffkit folders ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TINY))
def test_round_trip_gives_identical_outputs(name, tmp_path):
    model = tiny(name)
    assert save_pretrained(model, tmp_path) == tmp_path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["diffkit.json", "model.safetensors"]
    record = json.loads((tmp_path / "diffkit.json").read_text())
    assert record["kind"] == TINY[name][0] and record["name"] == name
    assert record["format_version"] == components.FORMAT_VERSION
    assert record["config"] == json.loads(json.dumps(model.config.to_dict()))
    assert record["origin"]["distribution"] == "diffkit"
    loaded = load_pretrained(tmp_path)
    assert type(loaded) is type(model) and loaded.config == model.config and not loaded.training
    assert_same_outputs(loaded, model)


def test_dtype_and_explicit_registry_entry(tmp_path):
    model = tiny("dit").to(torch.bfloat16)
    save_pretrained(model, tmp_path, kind="backbones", name="dit")
    loaded = load_pretrained(tmp_path, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    for key, value in model.state_dict().items():  # bf16 → float32 → bf16 is exact
        assert torch.equal(loaded.state_dict()[key], value)
    assert load_pretrained(tmp_path).patch_embed.weight.dtype == torch.float32  # default: float32


def test_saving_checks_the_registry_entry(tmp_path):
    with pytest.raises(ConfigError, match="configured by DiTConfig, but the module's config is a KLConfig"):
        save_pretrained(tiny("kl"), tmp_path, kind="backbone", name="dit")
    with pytest.raises(ConfigError, match="pass kind= together with name="):
        save_pretrained(tiny("kl"), tmp_path, name="kl")
    with pytest.raises(ConfigError, match=r"needs a diffkit component with a \.config"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_missing_unexpected_and_misshaped_keys_are_listed(tmp_path):
    from safetensors.torch import save_file

    model = tiny("dit")
    save_pretrained(model, tmp_path)
    bad = ("blocks.1.attn.qkv.weight", "blocks.0.extra.weight", "final_layer.linear.bias")
    save_file(damaged(model.state_dict(), *bad), str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_pretrained(tmp_path)
    assert_lists_bad_keys(info, *bad, (32,))


@pytest.mark.parametrize("damage", ["truncate", "header", "empty"])
def test_corrupted_safetensors_give_a_clear_error(damage, tmp_path):
    save_pretrained(tiny("kl"), tmp_path)
    file = tmp_path / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes({"truncate": data[: len(data) // 2], "header": b"\xff" * 16 + data[16:], "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=r"model\.safetensors .*truncated or corrupted safetensors"):
        load_pretrained(tmp_path)


def test_failed_save_leaves_the_previous_checkpoint_whole(tmp_path, monkeypatch):
    old = tiny("dit", seed=0)
    save_pretrained(old, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def half_written(tensors, path, metadata):
        path.write_bytes(b"\x00" * 100)  # part of a file, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(components, "_save_safetensors", half_written)
    with pytest.raises(OSError, match="No space left"):
        save_pretrained(tiny("dit", seed=5), tmp_path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # no temp file left either
    assert_same_outputs(load_pretrained(tmp_path), old)

    # A failure writing the config (after the weights' temporary file) also changes nothing.
    def failing_json(self, *args, **kwargs):
        raise OSError(5, "I/O error")

    monkeypatch.setattr(Path, "write_text", failing_json)
    with pytest.raises(OSError, match="I/O error"):
        save_pretrained(tiny("dit", seed=5), tmp_path)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert_same_outputs(load_pretrained(tmp_path), old)


def test_stale_temp_files_are_ignored_and_mixed_saves_are_detected(tmp_path):
    old, new = tiny("dit", seed=0), tiny("dit", seed=5)
    save_pretrained(old, tmp_path)
    (tmp_path / ".model.safetensors.0123456789ab.tmp").write_bytes(b"\x00" * 10)  # left by a kill
    assert_same_outputs(load_pretrained(tmp_path), old)
    # A kill between the two renames: the new weights next to the old config.
    config = (tmp_path / "diffkit.json").read_bytes()
    save_pretrained(new, tmp_path)
    (tmp_path / "diffkit.json").write_bytes(config)
    with pytest.raises(CheckpointError, match="come from two different saves"):
        load_pretrained(tmp_path)


def test_missing_plugin_is_named(tmp_path):
    save_pretrained(tiny("dit"), tmp_path)
    record = json.loads((tmp_path / "diffkit.json").read_text())
    record["name"] = "ditx"
    record["origin"] = {"plugin": "fancy", "distribution": "diffkit-fancy", "version": "1.2"}
    (tmp_path / "diffkit.json").write_text(json.dumps(record))
    with pytest.raises(UnknownNameError) as info:
        load_pretrained(tmp_path)
    message = str(info.value)
    assert "unknown backbone 'ditx'; did you mean 'dit'?" in message
    assert "from the plugin 'fancy' (distribution diffkit-fancy 1.2); install it" in message


def test_newer_format_and_missing_weights_are_errors(tmp_path):
    save_pretrained(tiny("kl"), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no weights in .*: looked for model\.safetensors"):
        load_pretrained(tmp_path)
    record = json.loads((tmp_path / "diffkit.json").read_text())
    (tmp_path / "diffkit.json").write_text(json.dumps({**record, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99; this diffkit reads up to 1"):
        load_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match="not a model folder"):
        load_pretrained(tmp_path / "..")
    with pytest.raises(CheckpointError, match="is a file; pass the folder"):
        load_pretrained(tmp_path / "diffkit.json")


# -- diffusers folders ----------------------------------------------------------------------------


# Tiny diffusers models (randomized with seed 3 and this std); DiT's is tests.model_helpers.tiny_diffusers_dit.
DIFFUSERS_TINY = {
    "UNet2DModel": (
        {"sample_size": 16, "block_out_channels": (16, 32), "layers_per_block": 1, "norm_num_groups": 8,
         "attention_head_dim": 8, "down_block_types": ("DownBlock2D", "AttnDownBlock2D"),
         "up_block_types": ("AttnUpBlock2D", "UpBlock2D"), "num_class_embeds": 5},
        0.05,
    ),
    "UNet2DConditionModel": (
        {"sample_size": 8, "block_out_channels": (32, 64), "layers_per_block": 1, "cross_attention_dim": 32,
         "attention_head_dim": 8, "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
         "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D")},
        0.05,
    ),
    "AutoencoderKL": (
        {"block_out_channels": (8, 16), "layers_per_block": 1, "latent_channels": 3, "norm_num_groups": 4,
         "down_block_types": ("DownEncoderBlock2D",) * 2, "up_block_types": ("UpDecoderBlock2D",) * 2},
        0.2,
    ),
}


def diffusers_model(class_name: str) -> torch.nn.Module:
    """The tiny randomized diffusers model of ``class_name``, in eval mode."""
    if class_name == "DiTTransformer2DModel":
        return tiny_diffusers_dit()
    diffusers = pytest.importorskip("diffusers")
    config, std = DIFFUSERS_TINY[class_name]
    return randomize(getattr(diffusers, class_name)(**config), seed=3, std=std).eval()


CLASSES = {"DiTTransformer2DModel": "dit", "UNet2DModel": "unet", "AutoencoderKL": "kl"}


@pytest.mark.parametrize("class_name", list(CLASSES))
def test_diffusers_folders_load_and_match(class_name, tmp_path):
    theirs = diffusers_model(class_name)
    theirs.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    ours = load_pretrained(tmp_path)
    assert DIFFUSERS_FORMATS[class_name].name == CLASSES[class_name]
    assert type(ours).__name__ == {"dit": "DiT", "unet": "UNet", "kl": "KLAutoencoder"}[CLASSES[class_name]]
    for got, expected in zip(outputs(ours), outputs(theirs)):
        assert expected.abs().max() > 0.1
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # ... and through a diffkit folder again, unchanged.
    save_pretrained(ours, tmp_path / "diffkit")
    assert_same_outputs(load_pretrained(tmp_path / "diffkit"), ours)


def test_transformer2dmodel_with_dit_settings_loads(tmp_path):
    theirs = diffusers_model("DiTTransformer2DModel")
    theirs.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "_class_name": "Transformer2DModel"}))
    ours = load_pretrained(tmp_path)
    torch.testing.assert_close(outputs(ours)[0], outputs(theirs)[0], rtol=0, atol=1e-5)


def test_sharded_diffusers_weights(tmp_path):
    theirs = diffusers_model("AutoencoderKL")
    theirs.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    for got, expected in zip(outputs(load_pretrained(tmp_path)), outputs(theirs)):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_pickle_weights_are_refused_unless_allowed(tmp_path):
    theirs = diffusers_model("UNet2DModel")
    theirs.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "diffusion_pytorch_model.bin").exists()
    with pytest.raises(CheckpointError, match=r"only pickle weights \(diffusion_pytorch_model\.bin\).*allow_pickle=True"):
        load_pretrained(tmp_path)
    ours = load_pretrained(tmp_path, allow_pickle=True)
    torch.testing.assert_close(outputs(ours)[0], outputs(theirs)[0], rtol=0, atol=1e-5)


class _Payload:
    """Unpickling this calls :func:`_mark`: what a malicious checkpoint would do."""

    def __reduce__(self):
        return (_mark, ())


_MARKS: list[int] = []


def _mark() -> dict:
    _MARKS.append(1)
    return {}


def test_pickle_is_read_with_weights_only(tmp_path):
    theirs = diffusers_model("UNet2DModel")
    theirs.save_pretrained(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"conv_in.weight": _Payload()}, tmp_path / "diffusion_pytorch_model.bin", pickle_module=pickle)
    with pytest.raises(CheckpointError, match=r"torch\.load\(weights_only=True\)"):
        load_pretrained(tmp_path, allow_pickle=True)
    assert _MARKS == []  # the payload never ran


def test_unknown_diffusers_class_lists_the_supported_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModels"}))
    with pytest.raises(UnknownNameError) as info:
        load_pretrained(tmp_path)
    message = str(info.value)
    assert "'UNet2DModels'; did you mean 'UNet2DModel'" in message
    for supported in ("AutoencoderKL", "DiTTransformer2DModel", "Transformer2DModel", "UNet2DModel"):
        assert supported in message


def test_missing_diffusers_weights_are_named(tmp_path):
    diffusers_model("AutoencoderKL").save_pretrained(tmp_path)
    (tmp_path / "diffusion_pytorch_model.safetensors").rename(tmp_path / "weights.pt")
    with pytest.raises(CheckpointError) as info:
        load_pretrained(tmp_path)
    message = str(info.value)
    assert f"no weights in {tmp_path}" in message
    assert "diffusion_pytorch_model.safetensors (or diffusion_pytorch_model.safetensors.index.json)" in message
    assert "diffusion_pytorch_model.bin" in message and "weights.pt" in message


def test_diffusers_keys_that_do_not_fit_are_listed(tmp_path):
    from safetensors.torch import load_file, save_file

    diffusers_model("AutoencoderKL").save_pretrained(tmp_path)
    file = tmp_path / "diffusion_pytorch_model.safetensors"
    state = load_file(file)
    del state["encoder.conv_in.bias"]
    state["encoder.conv_in.extra"] = torch.zeros(1)
    save_file(state, str(file))
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\):\n    encoder\.conv_in\.bias(.|\n)*encoder\.conv_in\.extra"):
        load_pretrained(tmp_path)


def test_an_incomplete_pipeline_folder_names_the_missing_component(tmp_path):
    """The whole folder is read as a pipeline (tests/integrations/test_pipeline_folders.py); one
    lacking a component its class needs says which, and its parts still load one by one."""
    theirs = diffusers_model("AutoencoderKL")
    theirs.save_pretrained(tmp_path / "vae")
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionPipeline", "vae": ["diffusers", "AutoencoderKL"],
                    "tokenizer": ["transformers", "CLIPTokenizer"]})
    )
    with pytest.raises(CheckpointError, match="StableDiffusionPipeline folder without its 'unet' component"):
        load_pretrained(tmp_path)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionInpaintPipeline"}))
    with pytest.raises(UnknownNameError, match="StableDiffusionInpaintPipeline(.|\n)*StableDiffusionPipeline"):
        load_pretrained(tmp_path)
    ours = load_pretrained(tmp_path, subfolder="vae")
    torch.testing.assert_close(outputs(ours)[2], outputs(theirs)[2], rtol=0, atol=1e-5)


def test_diffusers_weight_variant(tmp_path):
    theirs = diffusers_model("DiTTransformer2DModel")
    theirs.save_pretrained(tmp_path, variant="fp16")
    assert (tmp_path / "diffusion_pytorch_model.fp16.safetensors").exists()
    with pytest.raises(CheckpointError, match=r"looked for diffusion_pytorch_model\.safetensors"):
        load_pretrained(tmp_path)
    ours = load_pretrained(tmp_path, variant="fp16")
    torch.testing.assert_close(outputs(ours)[0], outputs(theirs)[0], rtol=0, atol=1e-5)


def test_unet2dcondition_model_once_its_converter_is_listed(tmp_path):
    """Activates when DIFFUSERS_FORMATS gets its UNet2DConditionModel row (outputs are compared
    with diffusers in the converter's own tests; here: the folder loads and round-trips)."""
    if "UNet2DConditionModel" not in DIFFUSERS_FORMATS:
        pytest.skip("no UNet2DConditionModel converter listed in diffkit.io.DIFFUSERS_FORMATS yet")
    diffusers_model("UNet2DConditionModel").save_pretrained(tmp_path / "unet")
    ours = load_pretrained(tmp_path / "unet")
    assert type(ours) is type(diffkit.build("backbone", "latent_unet", **ours.config.to_dict()))
    save_pretrained(ours, tmp_path / "diffkit")
    again = load_pretrained(tmp_path / "diffkit")
    assert again.config == ours.config
    for key, value in ours.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)


# One missing, one unexpected and one mis-shaped key in the tiny model of each diffusers class, and the
# shape its converter expects for the mis-shaped one.
BAD_KEYS = {
    "DiTTransformer2DModel": ("transformer_blocks.1.attn1.to_k.weight", "transformer_blocks.0.attn1.extra.weight",
                              "proj_out_2.bias", (32,)),
    "UNet2DModel": ("down_blocks.1.attentions.0.to_k.weight", "mid_block.attentions.0.extra.weight", "conv_out.bias",
                    (3,)),
    "UNet2DConditionModel": ("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight",
                             "mid_block.attentions.0.extra.weight", "conv_out.bias", (4,)),
    "AutoencoderKL": ("encoder.mid_block.attentions.0.to_k.weight", "decoder.up_blocks.0.extra.weight",
                      "quant_conv.bias", (6,)),
}


@pytest.mark.parametrize("class_name", list(BAD_KEYS))
def test_every_converter_lists_missing_unexpected_and_misshaped_keys(class_name):
    theirs, converter = diffusers_model(class_name), DIFFUSERS_FORMATS[class_name]
    *bad, expected_shape = BAD_KEYS[class_name]
    with pytest.raises(CheckpointError) as info:
        converter.convert_state_dict(damaged(theirs.state_dict(), *bad), converter.config_from_diffusers(theirs.config))
    assert_lists_bad_keys(info, *bad, expected_shape)


# -- weights of the wrong type or not finite, and arguments checked before reading ----------------------


@pytest.mark.parametrize("bad", ["nan", "inf", "int64", "bool"])
def test_bad_diffusers_weights_are_named(bad, tmp_path):
    from safetensors.torch import load_file, save_file

    diffusers_model("AutoencoderKL").save_pretrained(tmp_path)
    file = tmp_path / "diffusion_pytorch_model.safetensors"
    state = load_file(file)
    key = "encoder.conv_in.weight"
    state[key] = {
        "nan": state[key].clone().fill_(float("nan")), "inf": state[key].clone().fill_(float("inf")),
        "int64": state[key].to(torch.int64), "bool": state[key].to(torch.bool),
    }[bad]
    save_file(state, str(file))
    with pytest.raises(CheckpointError) as info:
        load_pretrained(tmp_path)
    assert key in str(info.value) and str(tmp_path) in str(info.value)
    if bad in ("nan", "inf"):
        assert not torch.isfinite(load_pretrained(tmp_path, allow_nonfinite=True).encoder.conv_in.weight).all()
    else:
        with pytest.raises(CheckpointError, match=f"{bad}, where the model has a floating-point tensor"):
            load_pretrained(tmp_path, allow_nonfinite=True)


@pytest.mark.parametrize("length", [2**64 - 1, 2**40, 10**6])
def test_a_header_length_past_the_end_is_refused_before_allocating(length, tmp_path):
    save_pretrained(tiny("kl"), tmp_path)
    file = tmp_path / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(length.to_bytes(8, "little") + data[8:])
    with pytest.raises(CheckpointError, match=rf"model\.safetensors .*its header claims {length} bytes; valid: at most"):
        load_pretrained(tmp_path)


def test_component_folders_check_device_and_dtype_first(tmp_path):
    save_pretrained(tiny("kl"), tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")  # would be an error, but is never read
    with pytest.raises(ConfigError, match="dtype=torch.int64 is not a floating-point dtype"):
        load_pretrained(tmp_path, dtype=torch.int64)
    with pytest.raises(ConfigError, match="unknown device 'gpu'"):
        load_pretrained(tmp_path, device="gpu")


def test_a_diffusers_config_with_a_wrong_typed_value_is_named(tmp_path):
    diffusers_model("AutoencoderKL").save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for value in ("abc", [1, 2], None, 10**30):
        (tmp_path / "config.json").write_text(json.dumps({**config, "block_out_channels": value}))
        with pytest.raises(diffkit.errors.DiffkitError) as info:
            load_pretrained(tmp_path)
        assert str(tmp_path / "config.json") in str(info.value) or "block_out_channels" in str(info.value)


def test_a_config_asking_for_huge_buffers_is_refused_before_building(tmp_path):
    """DiT's position table is a buffer not in the weights: an input_size edited to 16384 would
    ask for 2²⁶ tokens × 32 channels (8 GiB) while the weights are tiny."""
    save_pretrained(tiny("dit"), tmp_path)
    record = json.loads((tmp_path / "diffkit.json").read_text())
    record["config"]["input_size"] = 2**14
    (tmp_path / "diffkit.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"its config describes a module of \d+ MiB for 0\.\d MiB of weights"):
        load_pretrained(tmp_path)
