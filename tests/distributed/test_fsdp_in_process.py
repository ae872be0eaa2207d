"""FSDP2 on one process (a one-rank group): every backbone's sharding units, and the sharded checkpoint.

Sharding with one rank changes where the weights live (DTensors, per-unit all-gather hooks),
not the arithmetic, so a sharded trainer must follow the plain one step for step. A backbone
whose units were chosen wrongly (a container whose forward is never called) fails here with
"mixed torch.Tensor and DTensor". The 2-process runs are in test_torchrun.py.
"""

from __future__ import annotations

import copy

import attrs
import pytest
import torch

from diffkit.distributed import shutdown_distributed
from diffkit.errors import CheckpointError
from diffkit.pipeline import Pipeline
from diffkit.training import InMemoryData, TrainConfig, Trainer
from diffkit.training.checkpoints import list_checkpoints

CLASSES = 4


@pytest.fixture(autouse=True, scope="module")
def _leave_no_process_group():
    yield
    shutdown_distributed()


def _dit() -> tuple[Pipeline, InMemoryData]:
    pipeline = Pipeline(
        backbone=("dit", {"preset": "DiT-S/2", "input_size": 8, "in_channels": 4, "depth": 2,
                          "num_classes": CLASSES, "hidden_size": 64, "num_heads": 2}),
        schedule="linear", conditioner=("class_label", {"num_classes": CLASSES, "drop_prob": 0.2}),
        parameterization="eps",
    )
    return pipeline, InMemoryData(torch.randn(24, 4, 8, 8), torch.arange(24) % CLASSES)


def _unet() -> tuple[Pipeline, InMemoryData]:
    pipeline = Pipeline(
        backbone=("unet", {"sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": [16, 32],
                           "layers_per_block": 1, "norm_groups": 8, "num_classes": CLASSES}),
        schedule="cosine", conditioner=("class_label", {"num_classes": CLASSES, "drop_prob": 0.2}),
        parameterization="v",
    )
    return pipeline, InMemoryData(torch.rand(24, 1, 8, 8) * 2 - 1, torch.arange(24) % CLASSES)


def _latent_unet() -> tuple[Pipeline, InMemoryData]:
    pipeline = Pipeline(
        backbone=("latent_unet", {"preset": "tiny", "sample_size": 8}),
        schedule="linear",
        conditioner=("text", {"width": 32, "context_dim": 32, "depth": 1, "heads": 2, "max_length": 12,
                              "drop_prob": 0.2}),
        parameterization="v",
    )
    captions = [f"shape {i % 3}" for i in range(24)]
    return pipeline, InMemoryData(torch.randn(24, 4, 8, 8), captions)


def _dit_flow() -> tuple[Pipeline, InMemoryData]:
    """The DiT as SD3 trains its transformer: flow matching, logit-normal times, shift 3."""
    pipeline = Pipeline(
        backbone=("dit", {"preset": "DiT-S/2", "input_size": 8, "in_channels": 4, "depth": 2, "learn_sigma": False,
                          "num_classes": CLASSES, "hidden_size": 64, "num_heads": 2}),
        schedule=("flow", {"shift": 3.0}), conditioner=("class_label", {"num_classes": CLASSES, "drop_prob": 0.2}),
        parameterization="flow", objective={"timesteps": "logit_normal"},
    )
    return pipeline, InMemoryData(torch.randn(24, 4, 8, 8), torch.arange(24) % CLASSES)


BUILDS = {"dit": _dit, "dit(flow)": _dit_flow, "unet": _unet, "latent_unet": _latent_unet}
CONFIG = TrainConfig(steps=4, batch_size=8, warmup_steps=1, save_every=2, keep_last=3, ema_decay=0.9)


def _pair(name: str, config: TrainConfig) -> tuple[Trainer, Trainer]:
    torch.manual_seed(0)
    pipeline, data = BUILDS[name]()
    twin = copy.deepcopy(pipeline)
    plain = Trainer(pipeline, data, config, progress=False, device="cpu")
    sharded = Trainer(twin, data, config, progress=False, device="cpu", fsdp=True)
    return plain, sharded


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, worst


@pytest.mark.parametrize("accumulation", [1, 2])
@pytest.mark.parametrize("name", sorted(BUILDS))
def test_a_sharded_trainer_follows_the_plain_one(name, accumulation):
    plain, sharded = _pair(name, attrs.evolve(CONFIG, accumulation=accumulation))
    assert sharded.parallel.sharded
    for _ in range(3):
        a, b = plain.train_step(), sharded.train_step()
        assert float(a) == pytest.approx(float(b), rel=1e-5, abs=1e-6)
    _assert_close(plain.ema_pipeline().state_dict(), sharded.ema_pipeline().state_dict())


def test_a_sharded_checkpoint_resumes_exactly_and_only_as_sharded(tmp_path):
    torch.manual_seed(0)
    pipeline, data = _dit()
    copies = [copy.deepcopy(pipeline) for _ in range(2)]
    through = Trainer(pipeline, data, CONFIG, progress=False, device="cpu", fsdp=True)
    through.train()
    interrupted = Trainer(copies[0], data, CONFIG, progress=False, device="cpu", fsdp=True, out_dir=tmp_path)
    for _ in range(2):
        interrupted.train_step()
    folder = interrupted.save()
    assert (folder / "sharded" / ".metadata").is_file() and not (folder / "model.safetensors").exists()
    resumed = Trainer(copies[1], data, CONFIG, progress=False, device="cpu", fsdp=True, out_dir=tmp_path)
    resumed.train(resume=True)
    assert resumed.step == 4
    expected, got = through.ema_pipeline().state_dict(), resumed.ema_pipeline().state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert [p.name for p in list_checkpoints(tmp_path / "checkpoints")] == ["step-000000002", "step-000000004"]
    plain = Trainer(_dit()[0], data, CONFIG, progress=False, device="cpu", out_dir=tmp_path)
    with pytest.raises(CheckpointError, match="written by a run with --fsdp"):
        plain.restore()
