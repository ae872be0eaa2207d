"""Recipes are a registry kind: the built-ins register through the hook, and a third-party plugin
adds a recipe that ``diffkit train --recipe`` trains, with overrides, like a built-in."""

from __future__ import annotations

import json

import pytest

import diffkit
from diffkit import registry
from diffkit.cli.commands import main
from diffkit.errors import ConfigError, UnknownNameError
from diffkit.recipes import get_recipe, recipe_names
from diffkit.recipes.base import register_recipe
from tests.test_plugins import FakeEntryPoint, host, plugin_module


def tiny_digits() -> dict:
    """Unconditional digits on a two-level UNet: a plugin's recipe."""
    return {
        "data": {"name": "digits", "size": 8},
        "pipeline": {"backbone": "unet", "schedule": ["linear", {}], "parameterization": "eps", "sampler": "ddim",
                     "default_steps": 2},
        "backbones": {"unet": {"sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [8, 16],
                               "layers_per_block": 1, "attention_levels": [], "norm_groups": 4}},
        "train": {"steps": 3, "batch_size": 8, "save_every": 0, "sample_every": 0, "warmup_steps": 1, "log_every": 1},
        "sample": {"n": 2, "steps": 2, "guidance": 1.0},
    }


def not_a_recipe() -> list:
    """A broken plugin recipe: returns a list."""
    return ["oops"]


@pytest.fixture
def plugin():
    def register(recipes):
        recipes.add("tiny_digits", tiny_digits)
        recipes.add("broken", not_a_recipe)

    module = plugin_module("recipes_mod", diffkit_register_recipes=register)
    registry.reset(host(FakeEntryPoint("tinyrecipes", module, dist="diffkit-tiny-recipes", version="0.2")))
    yield
    registry.reset()


def test_the_built_in_recipes_are_registered_through_the_hook():
    for name in ("digits", "shapes"):
        entry = diffkit.get_entry("recipe", name)
        assert entry.origin.builtin and entry.origin.plugin == "diffkit.demos.builtin"
    assert {"digits", "shapes"} <= set(recipe_names())


def test_a_plugin_recipe_is_listed_found_and_overridden(plugin, capsys):
    assert "tiny_digits" in recipe_names()
    recipe = get_recipe("tiny_digits", ["train.steps=5", "backbones.unet.block_out_channels=[8,8]"])
    assert recipe["name"] == "tiny_digits" and recipe["train"]["steps"] == 5
    assert recipe["backbones"]["unet"]["block_out_channels"] == [8, 8]
    assert recipe["train"]["accumulation"] == 1  # completed with every TrainConfig field
    assert main(["list", "recipes"]) == 0
    listed = capsys.readouterr().out
    assert "tiny_digits" in listed and "diffkit-tiny-recipes" in listed and "digits" in listed
    with pytest.raises(UnknownNameError, match="tiny_digits"):
        get_recipe("tiny_digit")


def test_diffkit_train_trains_a_plugin_recipe(plugin, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--recipe", "tiny_digits", "--out", str(out), "--no-progress"]) == 0
    assert "trained 3 steps" in capsys.readouterr().out
    assert json.loads((out / "recipe.json").read_text())["name"] == "tiny_digits"
    pipeline = diffkit.load_pretrained(out / "pipeline")
    assert pipeline.sample(2, steps=2, generator=0).shape == (2, 1, 8, 8)


def test_a_plugin_recipe_that_is_not_a_dict_is_a_named_error(plugin):
    with pytest.raises(ConfigError, match="recipe 'broken' .*diffkit-tiny-recipes.* returned list"):
        get_recipe("broken")


def test_the_old_decorator_still_works_with_a_deprecation_warning():
    with pytest.warns(DeprecationWarning, match="diffkit_register_recipes"):
        register_recipe("decorated_digits")(tiny_digits)
    try:
        assert "decorated_digits" in recipe_names()
        assert get_recipe("decorated_digits")["train"]["steps"] == 3
    finally:
        from diffkit.recipes import base

        base._DECORATED.pop("decorated_digits")
