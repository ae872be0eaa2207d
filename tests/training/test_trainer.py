"""The trainer: determinism, bit-for-bit resume, LR schedule, EMA, accumulation."""

from __future__ import annotations

import math

import pytest
import torch

from diffkit.errors import CheckpointError, ConfigError, DiffkitError
from diffkit.pipeline import Pipeline
from diffkit.training import EMA, InMemoryData, TrainConfig, Trainer
from diffkit.training.data import batch_indices

FAMILIES = {  # v-prediction on a VP schedule, and flow matching with SD3's time law and shift
    "v": {"schedule": "cosine", "parameterization": "v"},
    "flow": {"schedule": ("flow", {"shift": 3.0}), "parameterization": "flow",
             "objective": {"timesteps": "logit_normal", "weighting": "cosmap"}},
}


def tiny_pipeline(width: int = 16, dropout: float = 0.1, family: str = "v") -> Pipeline:
    torch.manual_seed(0)  # the initial weights
    return Pipeline(
        backbone=(
            "unet",
            {
                "sample_size": 8, "in_channels": 1, "out_channels": 1, "block_out_channels": (width, width),
                "layers_per_block": 1, "attention_levels": (), "mid_attention": False, "num_classes": 3,
                "dropout": dropout, "norm_groups": 8,
            },
        ),
        conditioner=("class_label", {"num_classes": 3, "drop_prob": 0.3}),
        **FAMILIES[family],
    )


def tiny_data(n: int = 24) -> InMemoryData:
    g = torch.Generator().manual_seed(123)
    return InMemoryData(torch.rand(n, 1, 8, 8, generator=g) * 2 - 1, torch.arange(n) % 3)


def config(**changes) -> TrainConfig:
    base = dict(steps=6, batch_size=8, lr=1e-3, warmup_steps=2, save_every=3, keep_last=3, ema_decay=0.9)
    return TrainConfig(**{**base, **changes})


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.parametrize("family", FAMILIES)
def test_the_same_seed_gives_the_same_weights(tmp_path, family):
    runs = []
    for name in ("a", "b"):
        trainer = Trainer(tiny_pipeline(family=family), tiny_data(), config(), out_dir=tmp_path / name, progress=False)
        trainer.train()
        runs.append((weights(trainer.pipeline), weights(trainer.ema.module)))
    assert_same(runs[0][0], runs[1][0])
    assert_same(runs[0][1], runs[1][1])


def test_another_seed_gives_other_weights(tmp_path):
    a = Trainer(tiny_pipeline(), tiny_data(), config(seed=0), progress=False)
    b = Trainer(tiny_pipeline(), tiny_data(), config(seed=1), progress=False)
    a.train(), b.train()
    differ = [not torch.equal(x, y) for x, y in zip(a.pipeline.parameters(), b.pipeline.parameters())]
    assert any(differ)


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("family", FAMILIES)
def test_resume_continues_bit_for_bit(tmp_path, family):
    """A run killed after step 4 and resumed from its step-3 checkpoint ends with the weights,
    EMA and optimizer state of an uninterrupted run (dropout, CFG drops, noise and times included)."""
    whole = Trainer(tiny_pipeline(family=family), tiny_data(), config(), out_dir=tmp_path / "whole", progress=False)
    whole.train()

    cut = Trainer(tiny_pipeline(family=family), tiny_data(), config(), out_dir=tmp_path / "cut", progress=False)
    original_step = cut.train_step

    def step_then_die():
        if cut.step == 4:
            raise Interrupted  # the process dies after step 4, past the step-3 checkpoint
        return original_step()

    cut.train_step = step_then_die
    with pytest.raises(Interrupted):
        cut.train()
    assert [p.name for p in sorted((tmp_path / "cut" / "checkpoints").iterdir())] == ["step-000000003"]

    resumed = Trainer(tiny_pipeline(family=family), tiny_data(), config(), out_dir=tmp_path / "cut", progress=False)
    result = resumed.train(resume=True)
    assert result.steps == 6
    assert_same(weights(whole.pipeline), weights(resumed.pipeline))
    assert_same(weights(whole.ema.module), weights(resumed.ema.module))
    state_whole = whole.optimizer.state_dict()["state"]
    state_resumed = resumed.optimizer.state_dict()["state"]
    for key in state_whole:
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state_whole[key][name], state_resumed[key][name])


def test_resume_without_a_checkpoint_is_an_error_not_a_fresh_start(tmp_path):
    trainer = Trainer(tiny_pipeline(), tiny_data(), config(), out_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        trainer.train(resume=True)
    assert trainer.step == 0


def test_resume_from_a_truncated_checkpoint_names_the_file(tmp_path):
    Trainer(tiny_pipeline(), tiny_data(), config(steps=3), out_dir=tmp_path, progress=False).train()
    weights_file = tmp_path / "checkpoints" / "step-000000003" / "model.safetensors"
    data = weights_file.read_bytes()
    weights_file.write_bytes(data[: len(data) // 2])
    trainer = Trainer(tiny_pipeline(), tiny_data(), config(), out_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        trainer.train(resume=True)


def test_a_checkpoint_of_another_architecture_gets_a_mismatch_report(tmp_path):
    Trainer(tiny_pipeline(width=16), tiny_data(), config(steps=3), out_dir=tmp_path, progress=False).train()
    wider = Trainer(tiny_pipeline(width=24), tiny_data(), config(), out_dir=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="shape") as info:
        wider.train(resume=True)
    assert "backbone.conv_in.weight" in str(info.value)


def test_learning_rate_warms_up_then_follows_a_cosine_to_the_floor():
    cfg = TrainConfig(steps=100, lr=1e-3, warmup_steps=10, lr_schedule="cosine", min_lr_ratio=0.1)
    assert cfg.learning_rate(0) == pytest.approx(1e-4)
    assert cfg.learning_rate(9) == pytest.approx(1e-3)
    assert cfg.learning_rate(10) == pytest.approx(1e-3)
    middle = 10 + 45
    assert cfg.learning_rate(middle) == pytest.approx(1e-4 + 0.9e-3 * 0.5)
    assert cfg.learning_rate(100) == pytest.approx(1e-4)
    constant = TrainConfig(steps=100, lr=1e-3, warmup_steps=0, lr_schedule="constant")
    assert {constant.learning_rate(s) for s in range(100)} == {1e-3}


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"steps": 0}, "steps must be an integer ≥ 1"),
        ({"lr": -1.0}, "lr must be a finite number in \\[0, 1\\]"),
        ({"lr_schedule": "cosin"}, "cosine"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"grad_clip": math.nan}, "grad_clip"),
        ({"adam_betas": (0.9, 1.5)}, "adam_betas"),
    ],
)
def test_bad_training_settings_are_named(changes, message):
    with pytest.raises(DiffkitError, match=message):  # ConfigError, or UnknownNameError for names
        TrainConfig(**changes)


def test_ema_follows_its_equation():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.9, warmup=False)
    before = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, 0.9 * before + 0.1 * model.weight)
    warm = EMA(model, decay=0.999)
    assert warm.current_decay() == pytest.approx(1 / 10)  # (1 + 0)/(10 + 0)


def test_ema_shares_frozen_parameters_instead_of_copying_them():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Linear(3, 2))
    model[0].requires_grad_(False)  # e.g. a pipeline's frozen encoder
    ema = EMA(model, decay=0.5, warmup=False)
    assert ema.module[0].weight is model[0].weight and ema.module[0].bias is model[0].bias
    assert ema.module[1].weight.data_ptr() != model[1].weight.data_ptr()  # the trained part is a copy
    assert model[1].weight.requires_grad  # making the EMA froze only its own copy
    before = model[1].weight.detach().clone()
    with torch.no_grad():
        model[1].weight.add_(2.0)
    ema.update(model)
    torch.testing.assert_close(ema.module[1].weight, before + 1.0, rtol=0, atol=1e-6)
    assert ema.module[0].weight.equal(model[0].weight)
    model[0].weight.requires_grad_(True)  # unfrozen after the EMA was made: it would never be averaged
    with pytest.raises(ConfigError, match="parameter '0.weight' was frozen when the EMA was made"):
        ema.update(model)


def test_batches_visit_every_example_once_per_epoch():
    size, batch = 10, 4
    stream = torch.cat([batch_indices(size, 7, cursor, batch) for cursor in range(0, 3 * size, batch)])
    for epoch in range(3):
        assert sorted(stream[epoch * size : (epoch + 1) * size].tolist()) == list(range(size))
    assert torch.equal(batch_indices(size, 7, 4, batch), batch_indices(size, 7, 4, batch))
    assert not torch.equal(stream[:size], stream[size : 2 * size])  # a new order each epoch


@pytest.mark.parametrize("family", FAMILIES)
def test_accumulation_sums_micro_batches_into_one_step(tmp_path, family):
    trainer = Trainer(tiny_pipeline(family=family), tiny_data(), config(steps=2, accumulation=3, save_every=0), progress=False)
    result = trainer.train()
    assert result.steps == 2
    assert trainer.cursor == 2 * 3 * 8  # every micro-batch consumed its own examples
    assert math.isfinite(result.final_loss)


def test_preview_hook_sees_the_ema_pipeline(tmp_path):
    seen = []
    cfg = config(steps=4, sample_every=2, save_every=0)
    trainer = Trainer(tiny_pipeline(), tiny_data(), cfg, progress=False, preview=lambda s, p: seen.append((s, p)))
    trainer.train()
    assert [s for s, _ in seen] == [2, 4]
    assert all(p is trainer.ema.module for _, p in seen)


def test_bf16_is_refused_on_the_cpu():
    trainer = Trainer(tiny_pipeline(), tiny_data(), config(precision="bf16"), progress=False, device="cpu")
    with pytest.raises(ConfigError, match="CUDA"):
        trainer.train()
