"""Diffusers converters are a registry kind: the four built-ins register through the hook, and a
third-party plugin adds an architecture that ``load_pretrained`` then reads, checked against the
diffusers model itself."""

from __future__ import annotations

import json
from collections.abc import Mapping

import attrs
import pytest
import torch
from safetensors.torch import load_file, save_file

import diffkit
from diffkit import registry
from diffkit.cli.commands import main
from diffkit.errors import CheckpointError, UnknownNameError
from diffkit.io.converters import DIFFUSERS_FORMATS, DiffusersConverter, converter_for
from diffkit.io.diffusers import unet as diffusers_unet
from diffkit.io.pretrained import load_pretrained
from tests.io.test_pretrained import diffusers_model, outputs
from tests.test_plugins import FakeEntryPoint, host, plugin_module

LEGACY = "LegacyUNet2DModel"
PREFIX = "model."


def legacy_config(config: Mapping, **overrides) -> diffkit.models.backbones.UNetConfig:
    """A made-up older format: UNet2DModel's config under another class name."""
    return diffusers_unet.config_from_diffusers({**config, "_class_name": "UNet2DModel"}, **overrides)


def legacy_weights(state_dict: Mapping[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    """... whose weights carry a "model." prefix."""
    stray = [key for key in state_dict if not key.startswith(PREFIX)]
    if stray:
        raise CheckpointError(f"a {LEGACY} key lacks the {PREFIX!r} prefix: {stray[0]}")
    return diffusers_unet.convert_diffusers_state_dict({k[len(PREFIX):]: v for k, v in state_dict.items()}, config)


LEGACY_CONVERTER = DiffusersConverter(
    diffusers_classes=(LEGACY,), kind="backbone", name="unet",
    config_from_diffusers=legacy_config, convert_state_dict=legacy_weights, subfolder="unet",
)


def _install(**entries: DiffusersConverter) -> None:
    """The default registry also holds ``entries`` from the plugin 'legacy' (diffkit-legacy 1.2)."""

    def register(converters):  # the hook's argument name
        for name, converter in entries.items():
            converters.add(name, converter, summary=f"diffusers {' / '.join(converter.diffusers_classes)} → backbone unet")

    module = plugin_module("legacy_mod", diffkit_register_converters=register)
    registry.reset(host(FakeEntryPoint("legacy", module, dist="diffkit-legacy", version="1.2")))


@pytest.fixture
def plugin():
    _install(legacy_unet=LEGACY_CONVERTER)
    yield
    registry.reset()


def test_the_built_in_converters_are_registered_through_the_hook():
    assert {"DiTTransformer2DModel", "Transformer2DModel", "UNet2DModel", "UNet2DConditionModel", "AutoencoderKL"} <= set(
        DIFFUSERS_FORMATS
    )
    for name in ("dit", "unet", "latent_unet", "kl"):
        entry = diffkit.get_entry("converter", name)
        assert entry.origin.builtin and isinstance(entry.obj, DiffusersConverter)
    assert converter_for("UNet2DModel") is diffkit.get("converter", "unet")
    assert converter_for("NoSuchModel") is None


def test_a_registered_converter_converts_a_diffusers_model_like_the_old_functions():
    theirs = diffusers_model("UNet2DModel")
    ours = diffkit.get("converter", "unet")(theirs)
    for got, expected in zip(outputs(ours), outputs(theirs)):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    old_name = diffusers_unet.unet_from_diffusers(theirs)
    assert all(torch.equal(a, b) for a, b in zip(old_name.state_dict().values(), ours.state_dict().values()))


def _legacy_folder(tmp_path):
    theirs = diffusers_model("UNet2DModel")
    theirs.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "_class_name": LEGACY}))
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({PREFIX + key: value for key, value in load_file(weights).items()}, weights)
    return theirs


def test_a_plugin_converter_makes_load_pretrained_read_its_format(plugin, tmp_path, capsys):
    theirs = _legacy_folder(tmp_path)
    ours = load_pretrained(tmp_path)
    assert type(ours).__name__ == "UNet"
    for got, expected in zip(outputs(ours), outputs(theirs)):
        assert expected.abs().max() > 0.1
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    entry = diffkit.get_entry("converter", "legacy_unet")
    assert (entry.origin.distribution, entry.origin.version) == ("diffkit-legacy", "1.2")
    assert main(["list", "converters"]) == 0
    listed = capsys.readouterr().out
    assert "legacy_unet" in listed and "diffkit-legacy" in listed and "UNet2DModel" in listed


def test_a_plugin_cannot_take_over_a_built_in_class():
    hijack = attrs.evolve(LEGACY_CONVERTER, diffusers_classes=("UNet2DModel",))
    _install(legacy_unet=LEGACY_CONVERTER, hijack=hijack)
    with pytest.warns(registry.PluginWarning, match="'UNet2DModel' is claimed by several.*'hijack'.*built-in converter is used"):
        assert DIFFUSERS_FORMATS["UNet2DModel"] is diffusers_unet.CONVERTER
        assert DIFFUSERS_FORMATS[LEGACY] is LEGACY_CONVERTER
    registry.reset()


def test_without_the_plugin_the_format_is_an_unknown_class_naming_the_known_ones(tmp_path):
    _legacy_folder(tmp_path)
    with pytest.raises(UnknownNameError, match=f"{LEGACY}.*UNet2DModel"):
        load_pretrained(tmp_path)


def test_a_plugin_converter_refusing_its_weights_is_a_named_error(plugin, tmp_path):
    _legacy_folder(tmp_path)
    weights = tmp_path / "diffusion_pytorch_model.safetensors"
    save_file({key.removeprefix(PREFIX): value for key, value in load_file(weights).items()}, weights)
    with pytest.raises(CheckpointError, match="lacks the 'model.' prefix"):
        load_pretrained(tmp_path)


def test_a_plugin_converter_of_the_wrong_type_is_ignored_with_a_warning_naming_it(tmp_path):
    def not_a_converter(*args, **kwargs):
        """A function where a DiffusersConverter belongs."""

    def register(converters):
        converters.add("legacy_unet", LEGACY_CONVERTER)
        converters.add("broken", not_a_converter)

    module = plugin_module("legacy_mod", diffkit_register_converters=register)
    registry.reset(host(FakeEntryPoint("legacy", module, dist="diffkit-legacy", version="1.2")))
    try:
        with pytest.warns(registry.PluginWarning, match="converter 'broken' of legacy .*is a function, not a"):
            assert DIFFUSERS_FORMATS[LEGACY] is LEGACY_CONVERTER
        diffusers_model("UNet2DModel").save_pretrained(tmp_path)
        assert type(load_pretrained(tmp_path)).__name__ == "UNet"  # built-ins still load
    finally:
        registry.reset()
