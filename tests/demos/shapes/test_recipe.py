"""The latent text-to-image recipe ``shapes`` end to end on tiny settings (issue 6)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

import diffkit.cli.run
import diffkit.recipes
from diffkit import load_pretrained
from diffkit.cli.commands import main
from diffkit.recipes import base
from tests.cli.runs import trained

TINY = [
    "data.count=48", "data.heldout_count=24", "autoencoder.train.steps=3", "autoencoder.train.batch_size=8",
    "autoencoder.config.block_out_channels=[8,16,16]", "autoencoder.config.norm_num_groups=4",
    "backbones.latent_unet.block_out_channels=[16,32]", "backbones.latent_unet.norm_groups=8",
    "pipeline.conditioner=[\"text\",{\"width\":32,\"depth\":1,\"heads\":2,\"max_length\":16,\"context_dim\":32,"
    "\"drop_prob\":0.1,\"vocabulary\":\"captions\"}]",
    "backbones.latent_unet.context_dim=32", "backbones.dit.vector_dim=32", "backbones.dit.hidden_size=32",
    "backbones.dit.depth=1", "train.batch_size=8", "train.warmup_steps=1", "train.save_every=2",
    "train.sample_every=2", "sample.n=4", "sample.steps=2",
]


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    return trained(tmp_path_factory.mktemp("shapes"), "shapes", 2, *TINY)


def test_the_autoencoder_is_trained_scaled_and_reported(shapes_run):
    report = json.loads((shapes_run / "autoencoder.json").read_text())
    assert report["steps"] == 3 and report["scaling_factor"] > 0
    assert report["psnr_heldout"] > 0 and report["psnr_train"] > 0
    pipeline = load_pretrained(shapes_run / "pipeline")
    assert pipeline.autoencoder.config.scaling_factor == pytest.approx(report["scaling_factor"])
    assert pipeline.sample_shape == (4, 8, 8)


def test_prompts_sample_decoded_images(shapes_run, tmp_path):
    pipeline = load_pretrained(shapes_run / "pipeline")
    images = pipeline.sample(2, cond=["a red circle on the left", ""], steps=2, guidance=3.0, generator=0)
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    out = tmp_path / "x.png"
    code = main(["sample", "--from", str(shapes_run), "--prompt", "a green triangle at the top",
                 "--negative", "red", "--guidance", "3", "--steps", "2", "--n", "2", "--out", str(out)])
    assert code == 0 and out.is_file()


def test_the_text_vocabulary_is_built_from_the_training_captions(shapes_run):
    pipeline = load_pretrained(shapes_run / "pipeline")
    vocabulary = pipeline.conditioner.config.vocabulary
    assert {"red", "circle", "left"} <= set(vocabulary)
    recipe = json.loads((shapes_run / "recipe.json").read_text())
    assert recipe["pipeline"]["conditioner"][1]["vocabulary"] == "captions"  # the recipe keeps the rule


def test_a_text_pipeline_without_a_prompt_is_a_clear_error(shapes_run, tmp_path, capsys):
    assert main(["sample", "--from", str(shapes_run), "--n", "2", "--out", str(tmp_path / "x.png")]) == 2
    assert "--prompt" in capsys.readouterr().err


def test_extending_the_run_reuses_its_trained_autoencoder(shapes_run, tmp_path):
    out = tmp_path / "again"
    shutil.copytree(shapes_run, out)
    before = (out / "autoencoder" / "model.safetensors").read_bytes()
    trained(out, "shapes", 3, *TINY, "--resume")
    assert (out / "autoencoder" / "model.safetensors").read_bytes() == before
    assert json.loads((out / "run.json").read_text())["finished_step"] == 3


def test_the_default_dit_reads_the_pooled_text_vector(shapes_run):
    pipeline = load_pretrained(shapes_run / "pipeline")
    assert type(pipeline.backbone).__name__ == "DiT" and pipeline.backbone.config.vector_dim == 32


def test_the_latent_unet_variant_trains_with_cross_attention(tmp_path):
    out = trained(tmp_path / "unet", "shapes", 1, "--backbone", "latent_unet", *TINY)
    assert type(load_pretrained(out / "pipeline").backbone).__name__ == "LatentUNet"


def test_demo_shapes_prints_the_three_accuracies_last(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DIFFKIT_CACHE", str(tmp_path / "cache"))
    original = base.get_recipe
    monkeypatch.setattr(base, "get_recipe", lambda name, overrides=(), **kw: original(name, [*TINY, *overrides], **kw))
    monkeypatch.setattr(diffkit.recipes, "get_recipe", base.get_recipe)
    monkeypatch.setattr(diffkit.cli.run, "get_recipe", base.get_recipe)  # bound at its import: patch it there too
    assert main(["demo", "shapes", "--steps", "1", "--eval-n", "1", "--out", str(tmp_path / "d"), "--no-progress"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    fields = dict(item.split("=") for item in lines[-1].split())
    assert set(fields) == {"color_accuracy", "shape_accuracy", "position_accuracy", "seconds"}
    assert any(line.startswith("held-out prompts, w=1.0:") for line in lines)
