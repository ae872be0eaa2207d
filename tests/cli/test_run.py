"""``diffkit train`` / ``sample`` / ``demo`` and recipes, end to end on tiny settings."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from diffkit.cli.commands import main
from diffkit.errors import ConfigError, UnknownNameError
from diffkit.recipes import apply_overrides, get_recipe, recipe_names
from tests.cli.runs import trained

TINY = [
    "train.batch_size=16", "train.save_every=2", "train.sample_every=2", "train.warmup_steps=1",
    "sample.n=4", "sample.steps=3",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    return trained(tmp_path_factory.mktemp("run"), "digits", 4, *TINY)


def test_train_writes_checkpoints_grids_gifs_and_the_pipeline(trained_run):
    names = {p.name for p in trained_run.iterdir()}
    assert {"recipe.json", "checkpoints", "samples", "samples.png", "progress.gif", "trajectory.gif", "pipeline"} <= names
    assert [p.name for p in sorted((trained_run / "samples").iterdir())] == ["step-000000002.png", "step-000000004.png"]
    with Image.open(trained_run / "progress.gif") as gif:
        assert gif.n_frames == 2
    with Image.open(trained_run / "trajectory.gif") as gif:
        assert gif.n_frames == 4  # x_t entering each of the 3 steps, then the result
    recipe = json.loads((trained_run / "recipe.json").read_text())
    assert recipe["train"]["steps"] == 4 and recipe["train"]["batch_size"] == 16


def test_resume_refuses_another_recipe_naming_the_key(trained_run, capsys):
    args = ["train", "--recipe", "digits", "--out", str(trained_run), "--no-progress", *TINY]
    assert main([*args, "train.lr=0.5", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "differs from the one" in err and "train.lr: 0.002 → 0.5" in err


def test_resuming_a_complete_run_does_nothing(trained_run, capsys):
    before = (trained_run / "samples.png").stat().st_mtime_ns
    args = ["train", "--recipe", "digits", "--out", str(trained_run), "--no-progress", *TINY]
    assert main([*args, "--resume"]) == 0  # no --steps: the run keeps its recorded 4
    assert "nothing to do: the run is complete at step 4" in capsys.readouterr().out
    assert (trained_run / "samples.png").stat().st_mtime_ns == before


def test_resume_in_an_empty_folder_is_an_error(tmp_path, capsys):
    assert main(["train", "--recipe", "digits", "--out", str(tmp_path), "--resume", "--no-progress"]) == 2
    assert "holds no run to resume" in capsys.readouterr().err


def test_sample_writes_a_grid_of_the_asked_classes(trained_run, tmp_path):
    out = tmp_path / "grid.png"
    assert main(["sample", "--from", str(trained_run), "--n", "6", "--class", "3", "--steps", "2",
                 "--guidance", "2", "--out", str(out)]) == 0
    with Image.open(out) as image:
        assert image.size[0] > 0 and image.size[1] > 0


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--guidance", "-1"], "guidance must be ≥ 0"),
        (["--steps", "0"], "--steps must be ≥ 1"),
        (["--class", "12"], "0 … 9|0..9|range"),
        (["--sampler", "unpc"], "unipc"),
    ],
)
def test_sample_rejects_bad_input_with_a_clear_message(trained_run, tmp_path, capsys, extra, message):
    code = main(["sample", "--from", str(trained_run), "--n", "2", "--out", str(tmp_path / "x.png"), *extra])
    assert code == 2
    assert pytest.importorskip("re").search(message, capsys.readouterr().err)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompt", "a seven"], "--prompt needs a pipeline conditioned on text; this one is conditioned on class labels"),
        (["--negative", "red"], "--negative needs a pipeline conditioned on text"),
    ],
)
def test_sample_refuses_inputs_the_conditioner_does_not_take(trained_run, tmp_path, capsys, extra, message):
    assert main(["sample", "--from", str(trained_run), "--n", "2", "--out", str(tmp_path / "x.png"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_an_unwritable_out_is_refused_before_sampling(trained_run, tmp_path, capsys, monkeypatch):
    (tmp_path / "f").write_text("a file, not a folder")
    sampled = []
    monkeypatch.setattr("diffkit.pipeline.Pipeline.sample", lambda *a, **k: sampled.append(1))
    assert main(["sample", "--from", str(trained_run), "--out", str(tmp_path / "f" / "s.png")]) == 2
    assert f"{tmp_path / 'f'} is a file, not a folder" in capsys.readouterr().err and not sampled


def test_sample_from_a_missing_folder_is_an_error(tmp_path, capsys):
    assert main(["sample", "--from", str(tmp_path / "nope"), "--out", str(tmp_path / "x.png")]) == 2
    assert "not found" in capsys.readouterr().err


def test_unknown_recipe_and_keys_suggest_close_matches():
    assert "digits" in recipe_names()
    with pytest.raises(UnknownNameError, match="digits"):
        get_recipe("digit")
    with pytest.raises(UnknownNameError, match="steps"):
        get_recipe("digits", ["train.step=3"])
    with pytest.raises(UnknownNameError, match="dit"):
        get_recipe("digits", backbone="ditt")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_overrides(get_recipe("digits"), ["train.steps"])


def test_overrides_are_read_as_json_with_a_text_fallback():
    recipe = get_recipe("digits", ["train.lr=0.0005", "backbones.unet.block_out_channels=[16,32]", "pipeline.sampler=ddim"])
    assert recipe["train"]["lr"] == 0.0005
    assert recipe["backbones"]["unet"]["block_out_channels"] == [16, 32]
    assert recipe["pipeline"]["sampler"] == "ddim"


def test_the_dit_backbone_choice_trains(tmp_path):
    out = tmp_path / "dit"
    args = ["train", "--recipe", "digits", "--backbone", "dit", "--steps", "2", "--out", str(out), "--no-progress"]
    assert main([*args, *TINY, "backbones.dit.depth=1", "backbones.dit.hidden_size=32"]) == 0
    from diffkit import load_pretrained

    pipeline = load_pretrained(out / "pipeline")
    assert type(pipeline.backbone).__name__ == "DiT"


@pytest.mark.parametrize("how", [["--recipe", "digits-flow"], ["--recipe", "digits", "pipeline.parameterization=flow",
                                                              "pipeline.schedule=flow"]], ids=["recipe", "override"])
def test_a_flow_recipe_trains_samples_and_records_its_family(tmp_path, how):
    out = tmp_path / "flow"
    assert main(["train", *how, "--steps", "2", "--out", str(out), "--no-progress", *TINY]) == 0
    from diffkit import load_pretrained
    from diffkit.schedules.flow import FlowSchedule

    pipeline = load_pretrained(out / "pipeline")
    assert pipeline.parameterization == "flow" and isinstance(pipeline.schedule, FlowSchedule)
    grid = tmp_path / "grid.png"
    assert main(["sample", "--from", str(out), "--n", "4", "--class", "7", "--steps", "3", "--sampler", "dpmpp_2m",
                 "--out", str(grid)]) == 0
    with Image.open(grid) as image:
        assert image.size[0] > 0


def test_a_flow_parameterization_without_the_flow_schedule_names_both_keys(tmp_path, capsys):
    args = ["train", "--recipe", "digits", "pipeline.parameterization=flow", "--steps", "1", "--out", str(tmp_path / "x")]
    assert main([*args, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "pipeline.parameterization=flow" in err and "pipeline.schedule=flow" in err and "digits-flow" in err
    assert not (tmp_path / "x").exists()


def test_demo_prints_the_metrics_last(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("DIFFKIT_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--steps", "3", "--eval-n", "50", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    fields = dict(item.split("=") for item in last.split())
    assert set(fields) == {"class_accuracy", "fid_features", "seconds"}
    assert 0 <= float(fields["class_accuracy"]) <= 1 and float(fields["fid_features"]) >= 0
    assert (tmp_path / "demo" / "samples.png").is_file()
    assert torch.isfinite(torch.tensor(float(fields["seconds"])))


def test_every_training_setting_can_be_overridden_and_typos_are_named():
    recipe = get_recipe("digits", ["train.accumulation=4", "train.grad_clip=0.5"])
    assert recipe["train"]["accumulation"] == 4 and recipe["train"]["grad_clip"] == 0.5
    assert recipe["train"]["batch_size"] == 128  # the recipe's own value over the default
    with pytest.raises(UnknownNameError, match="did you mean 'accumulation'"):
        get_recipe("digits", ["train.acumulation=4"])
