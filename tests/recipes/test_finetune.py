"""Fine-tuning a pretrained pipeline with ``diffkit train --recipe finetune`` (diffkit.recipes.finetune).

Tiny diffusers pipelines (DDPM, DiT, Stable Diffusion) are built and saved with diffusers'
``save_pretrained``, small PNG folders are written beside them (flat, class sub-folders,
captions), and each is fine-tuned a few steps through the CLI. Then: the run's ``pipeline/``
is a diffkit pipeline that loads and samples; the backbone moved away from the loaded weights
by no more than AdamW's steps allow (training started from them, the EMA too); the frozen
autoencoder and text encoder are bit-identical; ``--resume`` extends the run exactly as an
uninterrupted one. Bad recipes are refused before any work: the run folder is never created.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import diffkit
from diffkit import registry
from diffkit.cli.commands import main
from diffkit.errors import ConfigError, UnknownNameError
from diffkit.recipes import get_recipe, train_recipe
from diffkit.recipes.build import preview_conditions
from diffkit.recipes.finetune import finetune, pipeline_folder
from diffkit.recipes.validate import validate_recipe
from diffkit.training import InMemoryData, TrainConfig, Trainer
from tests.cli.runs import trained

diffusers = pytest.importorskip("diffusers")
from tests.integrations.tiny_pipelines import ddpm_pipeline, dit_pipeline, sd_pipeline

pytestmark = pytest.mark.usefixtures("one_thread")

LR, STEPS = 1e-3, 3
FAST = [
    "train.batch_size=2", "sample.n=2", "sample.steps=2", "train.warmup_steps=0", f"train.lr={LR}",
    "train.save_every=0", "train.sample_every=2", "train.weight_decay=0",
]
# -- the pretrained folders and the images ---------------------------------------------------------------


def write_images(folder: Path, names: list[str], size: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size + 3, size + 5, 3), dtype=np.uint8)).save(folder / name)
    return folder


CAPTIONS = {"0.png": "a red cat", "1.png": "a blue dog", "2.png": "photo of a cat", "3.png": "a dog"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> dict[str, Path]:
    """Saved diffusers pipelines (ddpm, dit, sd) and image folders (flat, classes, captioned)."""
    root = tmp_path_factory.mktemp("finetune")
    out = {
        "ddpm": root / "ddpm", "dit": root / "dit", "sd": root / "sd",
        "flat": write_images(root / "flat", [f"{i}.png" for i in range(4)], 8, 0),
        "classes": write_images(root / "classes", [f"{c}/{i}.png" for c in ("cat", "dog") for i in range(2)], 16, 1),
        "captioned": write_images(root / "captioned", list(CAPTIONS), 16, 2),
    }
    for name, text in CAPTIONS.items():
        (out["captioned"] / name).with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
    ddpm_pipeline(diffusers.DDPMScheduler(num_train_timesteps=100, clip_sample=False)).save_pretrained(out["ddpm"])
    dit_pipeline(diffusers.DDIMScheduler(num_train_timesteps=100, clip_sample=False)).save_pretrained(out["dit"])
    if _has_text_conditioners():
        scheduler = diffusers.DDIMScheduler(num_train_timesteps=100, beta_schedule="scaled_linear", clip_sample=False,
                                             steps_offset=1)
        sd_pipeline(scheduler, root / "tokenizer").save_pretrained(out["sd"])
    return out


def _has_text_conditioners() -> bool:
    try:
        import transformers  # noqa: F401

        from diffkit.integrations.transformers import text_conditioner_from_folder  # noqa: F401
    except ImportError:
        return False
    return True


def _finetuned(out: Path, pretrained: Path, images: Path, *extra: str, steps: int = STEPS) -> Path:
    return trained(out, "finetune", steps, f"pipeline.pretrained={pretrained}", f"data.root={images}", *FAST, *extra)


@pytest.fixture(scope="module")
def ddpm_run(folders, tmp_path_factory) -> Path:
    return _finetuned(tmp_path_factory.mktemp("runs") / "ddpm", folders["ddpm"], folders["flat"], "--sampler", "ddim")


@pytest.fixture(scope="module")
def dit_run(folders, tmp_path_factory) -> Path:
    return _finetuned(tmp_path_factory.mktemp("runs") / "dit", folders["dit"], folders["classes"], "data.labels=true")


@pytest.fixture(scope="module")
def sd_run(folders, tmp_path_factory) -> Path:
    if not _has_text_conditioners():
        pytest.skip("the clip_text conditioner (diffkit.integrations.transformers, transformers) is not available")
    return _finetuned(tmp_path_factory.mktemp("runs") / "sd", folders["sd"], folders["captioned"], "data.captions=txt")


def weights(module: torch.nn.Module | None) -> dict[str, torch.Tensor]:
    return {} if module is None else {k: v.detach().clone() for k, v in module.state_dict().items()}


def identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def check_started_from(trained_pipeline, loaded, *, steps: int) -> None:
    """The backbone moved, by at most what ``steps`` AdamW steps of LR move a weight (|Δ| ≲ LR per step).

    A backbone trained from fresh weights (or an EMA started elsewhere) would be far off.
    """
    after, before = weights(trained_pipeline.backbone), weights(loaded.backbone)
    assert after.keys() == before.keys()
    moved = max(float((after[k] - before[k]).abs().max()) for k in before if before[k].is_floating_point())
    assert 0 < moved <= 1.5 * steps * LR, moved


# -- the runs ----------------------------------------------------------------------------------------------


def test_an_unconditional_diffusers_pipeline_is_finetuned_into_a_diffkit_pipeline(ddpm_run, folders):
    folder = ddpm_run / "pipeline"
    assert (folder / "pipeline.json").is_file() and not (folder / "model_index.json").exists()
    pipeline, loaded = diffkit.load_pretrained(folder), diffkit.load_pretrained(folders["ddpm"])
    assert isinstance(pipeline, diffkit.Pipeline) and pipeline.conditioner is None
    check_started_from(pipeline, loaded, steps=STEPS)
    assert pipeline.sampler == "ddim" and loaded.sampler == "ddpm"  # --sampler: pipeline.sampler
    assert pipeline.spacing == loaded.spacing == "diffusers" and pipeline.schedule.to_dict() == loaded.schedule.to_dict()
    images = pipeline.sample(2, steps=2, generator=0)
    assert images.shape == (2, 3, 8, 8) and torch.isfinite(images).all()
    recipe = json.loads((ddpm_run / "recipe.json").read_text())
    assert recipe["pipeline"]["pretrained"] == str(folders["ddpm"]) and recipe["backbones"] == {}
    assert recipe["data"]["size"] is None  # the pipeline's: 8
    assert sorted(p.name for p in (ddpm_run / "samples").iterdir()) == ["step-000000002.png", "step-000000003.png"]


def test_a_class_conditional_dit_trains_its_transformer_and_keeps_its_vae(dit_run, folders):
    pipeline, loaded = diffkit.load_pretrained(dit_run / "pipeline"), diffkit.load_pretrained(folders["dit"])
    check_started_from(pipeline, loaded, steps=STEPS)
    assert identical(weights(pipeline.autoencoder), weights(loaded.autoencoder))
    assert identical(weights(pipeline.conditioner), weights(loaded.conditioner))
    assert pipeline.default_guidance == loaded.default_guidance == 4.0
    images = pipeline.sample(2, cond=torch.tensor([0, 1]), steps=2, guidance=4.0, generator=0)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


def test_resume_extends_a_finetune_exactly_as_an_uninterrupted_run(dit_run, folders, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(dit_run, resumed)
    assert main(["train", "--resume", "--out", str(resumed), "--steps", "5", "--no-progress"]) == 0
    run = json.loads((resumed / "run.json").read_text())
    assert run["steps"] == run["finished_step"] == 5
    assert (resumed / "checkpoints" / "step-000000005").is_dir()
    straight = _finetuned(tmp_path / "straight", folders["dit"], folders["classes"], "data.labels=true", steps=5)
    a, b = diffkit.load_pretrained(resumed / "pipeline"), diffkit.load_pretrained(straight / "pipeline")
    assert identical(weights(a), weights(b))
    assert not identical(weights(a.backbone), weights(diffkit.load_pretrained(dit_run / "pipeline").backbone))
    assert identical(weights(a.autoencoder), weights(diffkit.load_pretrained(folders["dit"]).autoencoder))


def test_a_text_pipeline_is_finetuned_on_captions_with_its_text_encoder_and_vae_frozen(sd_run, folders):
    pipeline, loaded = diffkit.load_pretrained(sd_run / "pipeline"), diffkit.load_pretrained(folders["sd"])
    assert type(pipeline.conditioner).__name__ == "ClipTextConditioner"
    check_started_from(pipeline, loaded, steps=STEPS)
    assert identical(weights(pipeline.autoencoder), weights(loaded.autoencoder))
    assert identical(weights(pipeline.conditioner), weights(loaded.conditioner))
    images = pipeline.sample(2, cond=["a red cat", "a blue dog"], steps=2, guidance=3.0, generator=0)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    assert (sd_run / "samples.png").is_file() and (sd_run / "trajectory.gif").is_file()


def test_resume_continues_a_text_finetune(sd_run, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(sd_run, resumed)
    before = diffkit.load_pretrained(resumed / "pipeline")
    assert main(["train", "--resume", "--out", str(resumed), "--steps", "4", "--no-progress"]) == 0
    after = diffkit.load_pretrained(resumed / "pipeline")
    assert json.loads((resumed / "run.json").read_text())["finished_step"] == 4
    assert not identical(weights(after.backbone), weights(before.backbone))
    assert identical(weights(after.conditioner), weights(before.conditioner))


def test_a_finetuned_diffkit_pipeline_or_its_run_folder_is_finetuned_again(ddpm_run, folders, tmp_path):
    assert pipeline_folder(str(ddpm_run)) == ddpm_run / "pipeline"  # a run folder: its pipeline
    again = _finetuned(tmp_path / "again", ddpm_run / "pipeline", folders["flat"], steps=1)
    first, second = diffkit.load_pretrained(ddpm_run / "pipeline"), diffkit.load_pretrained(again / "pipeline")
    check_started_from(second, first, steps=1)
    assert second.sampler == "ddim"  # pipeline.sampler null: the folder's


# -- what trains -----------------------------------------------------------------------------------------------


def _sd_or_dit(folders) -> tuple[diffkit.Pipeline, InMemoryData]:
    if _has_text_conditioners():
        pipeline = diffkit.load_pretrained(folders["sd"])
        return pipeline, InMemoryData(torch.rand(4, 3, 16, 16) * 2 - 1, list(CAPTIONS.values()))
    return diffkit.load_pretrained(folders["dit"]), InMemoryData(torch.rand(4, 3, 16, 16) * 2 - 1, torch.tensor([0, 1] * 2))


def test_the_trainer_optimises_and_averages_only_the_backbone_of_a_loaded_pipeline(folders):
    pipeline, data = _sd_or_dit(folders)
    frozen = {name: weights(getattr(pipeline, name)) for name in ("autoencoder", "conditioner")}
    trainer = Trainer(pipeline, data, TrainConfig(steps=2, batch_size=2, warmup_steps=0, lr=LR, ema_decay=0.5),
                      progress=False, device="cpu")
    optimised = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    assert {id(p) for p in optimised} == {id(p) for p in pipeline.backbone.parameters()}
    assert all(not p.requires_grad for name in frozen for p in getattr(pipeline, name).parameters())
    trainer.train()
    for name, before in frozen.items():
        assert identical(weights(getattr(pipeline, name)), before)
        assert identical(weights(getattr(trainer.ema_pipeline(), name)), before)
        # the EMA holds no second copy of the frozen encoders: it shares their parameters
        ema_part, live_part = getattr(trainer.ema_pipeline(), name), getattr(pipeline, name)
        assert all(a is b for a, b in zip(ema_part.parameters(), live_part.parameters(), strict=True))
    assert not identical(weights(trainer.ema_pipeline().backbone), weights(diffkit.load_pretrained(
        folders["sd" if _has_text_conditioners() else "dit"]).backbone))


def test_a_sharded_finetune_with_a_frozen_autoencoder_follows_the_plain_one(folders):
    from diffkit.distributed import shutdown_distributed

    loaded = diffkit.load_pretrained(folders["dit"])
    data = InMemoryData(torch.rand(4, 3, 16, 16) * 2 - 1, torch.tensor([0, 1] * 2))
    config = TrainConfig(steps=3, batch_size=2, warmup_steps=0, lr=LR, ema_decay=0.5)
    try:
        plain = Trainer(copy.deepcopy(loaded), data, config, progress=False, device="cpu")
        sharded = Trainer(copy.deepcopy(loaded), data, config, progress=False, device="cpu", fsdp=True)
        for _ in range(3):
            assert float(plain.train_step()) == pytest.approx(float(sharded.train_step()), rel=1e-5, abs=1e-6)
        a, b = plain.ema_pipeline().state_dict(), sharded.ema_pipeline().state_dict()
    finally:
        shutdown_distributed()
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert identical({k: v for k, v in b.items() if k.startswith("autoencoder.")}, {
        f"autoencoder.{k}": v for k, v in weights(loaded.autoencoder).items()})


def test_a_sharded_text_finetune_follows_the_plain_one_and_resumes(folders, tmp_path):
    """FSDP resolves state-dict keys as attribute paths: the CLIP encoder's checkpoint keys
    (``text_encoder.text_model.…``, which transformers 5's flat module lacks) must resolve."""
    if not _has_text_conditioners():
        pytest.skip("the clip_text conditioner is not available")
    from diffkit.distributed import shutdown_distributed

    loaded = diffkit.load_pretrained(folders["sd"])
    data = InMemoryData(torch.rand(2, 3, 16, 16) * 2 - 1, ["a red cat", "a dog"])
    config = TrainConfig(steps=3, batch_size=2, warmup_steps=0, lr=LR, ema_decay=0.5, save_every=0)
    try:
        plain = Trainer(copy.deepcopy(loaded), data, config, progress=False, device="cpu")
        sharded = Trainer(copy.deepcopy(loaded), data, config, progress=False, device="cpu", fsdp=True,
                          out_dir=tmp_path)
        for _ in range(2):
            assert float(plain.train_step()) == pytest.approx(float(sharded.train_step()), rel=1e-5, abs=1e-6)
        a, b = plain.ema_pipeline().state_dict(), sharded.ema_pipeline().state_dict()
        folder = sharded.save()
        resumed = Trainer(copy.deepcopy(loaded), data, config, progress=False, device="cpu", fsdp=True,
                          out_dir=tmp_path)
        assert resumed.restore() == folder and resumed.step == 2
        c = resumed.ema_pipeline().state_dict()
    finally:
        shutdown_distributed()
    assert a.keys() == b.keys() and max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5
    assert any(k.startswith("conditioner.text_encoder.text_model.") for k in b)  # the checkpoints' layout
    assert identical({k: v for k, v in b.items() if k.startswith("conditioner.")}, {
        f"conditioner.{k}": v for k, v in weights(loaded.conditioner).items()})  # frozen: bit-identical
    assert identical(b, c)  # the sharded checkpoint restores what was saved


# -- previews ----------------------------------------------------------------------------------------------------


def test_previews_use_the_prompts_or_the_first_captions_and_the_folders_classes(folders):
    dit = diffkit.load_pretrained(folders["dit"])
    recipe = get_recipe("finetune")
    assert preview_conditions(dit, 5, recipe, torch.tensor([0, 1, 1])).tolist() == [0, 1, 0, 1, 0]
    if not _has_text_conditioners():
        return
    sd = diffkit.load_pretrained(folders["sd"])
    captions = ["a cat", "a dog", "a cat", "a red cat"]
    assert preview_conditions(sd, 4, recipe, captions) == ["a cat", "a dog", "a red cat", "a cat"]
    recipe["sample"]["prompts"] = ["a blue dog"]
    assert preview_conditions(sd, 2, recipe, captions) == ["a blue dog", "a blue dog"]


# -- refused before any work ----------------------------------------------------------------------------------


def refused(tmp_path, capsys, *overrides: str, match: str) -> str:
    """``diffkit train --recipe finetune`` with these overrides fails with ``match`` and creates no run folder."""
    out = tmp_path / "run"
    assert main(["train", "--recipe", "finetune", "--out", str(out), "--no-progress", *FAST, *overrides]) == 2
    err = capsys.readouterr().err
    assert match in err, err
    assert not out.exists()
    return err


def test_the_recipe_is_registered_with_placeholders_that_are_refused_until_set(folders, tmp_path, capsys):
    assert registry.get_entry("recipe", "finetune").origin.builtin
    recipe = get_recipe("finetune")
    assert recipe["pipeline"] == {"pretrained": None, "sampler": None} and recipe["backbones"] == {}
    refused(tmp_path, capsys, f"data.root={folders['flat']}", match="pipeline.pretrained is not set: pass "
            "pipeline.pretrained=FOLDER")
    refused(tmp_path, capsys, f"pipeline.pretrained={folders['ddpm']}", match="data.root is not set: pass data.root=")


@pytest.mark.parametrize(
    ("pretrained", "match"),
    [
        (lambda f, t: t / "nowhere", "does not exist"),
        (lambda f, t: f["flat"], ("is not a pipeline folder: it has neither model_index.json (diffusers) nor "
                                 "pipeline.json (diffkit); found 0.png")),
        (lambda f, t: f["ddpm"] / "unet", "is not a pipeline folder"),
        (lambda f, t: f["flat"] / "0.png", "is a file; pass the pipeline folder"),
    ],
    ids=["missing", "images", "component", "file"],
)
def test_a_folder_that_is_no_pipeline_is_refused(folders, tmp_path, capsys, pretrained, match):
    refused(tmp_path, capsys, f"pipeline.pretrained={pretrained(folders, tmp_path)}", f"data.root={folders['flat']}",
            match=match)


def test_a_pipeline_folder_that_cannot_be_loaded_is_refused(folders, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(folders["ddpm"], broken)
    for weights_file in (broken / "unet").glob("*.safetensors"):
        weights_file.unlink()
    refused(tmp_path, capsys, f"pipeline.pretrained={broken}", f"data.root={folders['flat']}",
            match="cannot be loaded as a pipeline")


def _recipe(folders, pretrained: str = "ddpm", images: str = "flat", *overrides: str) -> dict:
    return get_recipe("finetune", [f"pipeline.pretrained={folders[pretrained]}", f"data.root={folders[images]}",
                                   *FAST, *overrides])


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        (lambda r: r["pipeline"].update(backbone="unet"), ConfigError,
         "pipeline.backbone cannot be set beside pipeline.pretrained: the pretrained folder gives"),
        (lambda r: r["pipeline"].update(conditioner=["class_label", {"num_classes": 2}]), ConfigError,
         "pipeline.conditioner cannot be set beside pipeline.pretrained"),
        (lambda r: r["pipeline"].update(schedule="cosine"), ConfigError, "pipeline.schedule cannot be set beside"),
        (lambda r: r["pipeline"].update(pretraind="x"), UnknownNameError, "pretrained"),
        (lambda r: r["pipeline"].update(sampler="unpc"), UnknownNameError, "unipc"),
        (lambda r: r["backbones"].update(unet={}), ConfigError, "backbones is unused with pipeline.pretrained"),
        (lambda r: r.update(autoencoder={"config": {}, "train": {}}), ConfigError,
         "a pretrained pipeline brings its own"),
        (lambda r: r["data"].update(size=16), ConfigError, ("data.size=16, but the pretrained pipeline trains on "
                                                           "3-channel 8×8 images: set data.size=8 or null")),
        (lambda r: r["data"].update(channels=1), ConfigError, "set data.channels=3 or null"),
        (lambda r: r["data"].update(lables=True), UnknownNameError, "labels"),
        (lambda r: r["sample"].update(guidance=3.0), ConfigError, "sample.guidance=3.0 needs a conditioned pipeline"),
    ],
    ids=["backbone", "conditioner", "schedule", "typo", "sampler", "backbones", "autoencoder", "size", "channels",
         "data-typo", "guidance"],
)
def test_a_bad_pretrained_recipe_is_refused_by_key_before_any_work(folders, tmp_path, edit, error, match):
    recipe = _recipe(folders)
    edit(recipe)
    with pytest.raises(error, match=re.escape(match)):
        train_recipe(recipe, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_an_unconditional_pipeline_takes_neither_labels_nor_captions(folders, tmp_path, capsys):
    refused(tmp_path, capsys, f"pipeline.pretrained={folders['ddpm']}", f"data.root={folders['classes']}",
            "data.labels=true", match="reads class labels (data.labels=true) from the folder, but the pipeline has no "
            "conditioner (it is unconditional): set data.labels=false")
    refused(tmp_path, capsys, f"pipeline.pretrained={folders['ddpm']}", f"data.root={folders['captioned']}",
            "data.captions=txt", match="set data.captions=null")


def test_a_class_pipeline_needs_labels_and_a_text_pipeline_captions(folders, tmp_path, capsys):
    refused(tmp_path, capsys, f"pipeline.pretrained={folders['dit']}", f"data.root={folders['classes']}",
            match="conditioned on class labels: set data.labels=true")
    if not _has_text_conditioners():
        return
    refused(tmp_path, capsys, f"pipeline.pretrained={folders['sd']}", f"data.root={folders['captioned']}",
            match="conditioned on text: set data.captions=txt")
    refused(tmp_path, capsys, f"pipeline.pretrained={folders['sd']}", f"data.root={folders['classes']}",
            "data.labels=true", match="conditioned on text: set data.captions=txt")


def test_captions_requested_for_a_folder_lacking_some_are_refused_naming_them(folders, tmp_path, capsys):
    if not _has_text_conditioners():
        pytest.skip("the clip_text conditioner is not available")
    images = tmp_path / "images"
    shutil.copytree(folders["captioned"], images)
    (images / "1.txt").unlink()
    (images / "3.txt").write_bytes(b"")
    err = refused(tmp_path, capsys, f"pipeline.pretrained={folders['sd']}", f"data.root={images}", "data.captions=txt",
                  match="2 of 4 image(s) have no usable caption file")
    assert "1.txt is missing" in err and "3.txt is empty" in err


def test_validation_loads_the_pretrained_pipeline_once_and_the_run_trains_that_one(folders, monkeypatch, tmp_path):
    import diffkit.io.pretrained as pretrained_module

    calls = []
    real = pretrained_module.load_pretrained
    monkeypatch.setattr(pretrained_module, "load_pretrained", lambda *a, **k: calls.append(a) or real(*a, **k))
    recipe = _recipe(folders, "ddpm", "flat", "train.steps=1", "train.sample_every=0")
    probe = validate_recipe(recipe)
    assert isinstance(probe, diffkit.Pipeline) and probe.sample_shape == (3, 8, 8)
    assert [Path(a[0]) for a in calls if Path(a[0]) == folders["ddpm"]] == [folders["ddpm"]]
    calls.clear()
    train_recipe(recipe, tmp_path / "run", progress=False)
    assert [Path(a[0]) for a in calls if Path(a[0]) == folders["ddpm"]] == [folders["ddpm"]]  # once per run


def test_the_finetune_recipe_function_is_plain_json(tmp_path):
    recipe = finetune()
    assert json.loads(json.dumps(recipe)) == recipe
    assert set(recipe) == {"data", "pipeline", "backbones", "train", "sample"}
