"""The GPU training path: no device→host synchronisation inside a step, bf16, compile, channels-last.

``torch.cuda.set_sync_debug_mode("error")`` turns every synchronising CUDA call (``.item()``,
a blocking host↔device copy, ``nonzero``, …) into an exception. A training step must contain
none: the noise, timesteps and CFG drops come from a CUDA generator, σ tables are cached on
the device, data and labels travel host→device asynchronously, the loss stays a tensor.
The first steps are allowed to synchronise (tables copied once, cuDNN autotuning), so each
test warms up before it checks.
"""

from __future__ import annotations

import pytest
import torch

from diffkit.pipeline import Pipeline
from diffkit.training import InMemoryData, TrainConfig, Trainer

CLASSES = 10


def _dit_pipeline() -> Pipeline:
    return Pipeline(
        backbone=("dit", {"preset": "DiT-S/2", "input_size": 8, "in_channels": 4, "num_classes": CLASSES,
                          "learn_sigma": True, "depth": 2}),
        schedule="linear", conditioner=("class_label", {"num_classes": CLASSES, "drop_prob": 0.1}),
        parameterization="eps",
    )


def _unet_pipeline() -> Pipeline:
    return Pipeline(
        backbone=("unet", {"sample_size": 16, "in_channels": 3, "out_channels": 3, "block_out_channels": [32, 64],
                           "layers_per_block": 1, "attention_levels": [1], "norm_groups": 8,
                           "num_classes": CLASSES}),
        schedule="cosine", conditioner=("class_label", {"num_classes": CLASSES, "drop_prob": 0.1}),
        parameterization="v",
    )


def _text_pipeline() -> Pipeline:
    return Pipeline(
        backbone=("dit", {"preset": "DiT-S/2", "input_size": 8, "in_channels": 4, "depth": 2, "num_classes": 0,
                          "vector_dim": 64}),
        schedule="linear",
        conditioner=("text", {"width": 64, "context_dim": 64, "depth": 1, "heads": 2, "max_length": 16, "drop_prob": 0.1}),
        parameterization="v",
    )


def _data(pipeline: Pipeline, n: int = 64, *, captions: bool = False) -> InMemoryData:
    shape = pipeline.sample_shape
    images = torch.randn(n, *shape).clamp(-1, 1)
    cond = [f"a {i % 3} shape" for i in range(n)] if captions else torch.arange(n) % CLASSES
    return InMemoryData(images, cond)


@pytest.mark.parametrize(
    ("build", "captions"), [(_dit_pipeline, False), (_unet_pipeline, False), (_text_pipeline, True)]
)
@pytest.mark.parametrize("accumulation", [1, 2])
def test_a_training_step_never_synchronises(cuda, build, captions, accumulation):
    pipeline = build()
    config = TrainConfig(steps=10, batch_size=16, accumulation=accumulation, warmup_steps=2, log_every=1000)
    trainer = Trainer(pipeline, _data(pipeline, captions=captions), config, progress=False, device=cuda)
    for _ in range(2):
        trainer.train_step()  # warm-up: device tables, cuDNN plans, optimizer state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        losses = [trainer.train_step() for _ in range(3)]
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert all(bool(torch.isfinite(loss)) for loss in losses)


def test_bf16_autocast_trains_the_backbone_with_fp32_weights_and_loss(cuda):
    pipeline = _dit_pipeline()
    trainer = Trainer(pipeline, _data(pipeline), TrainConfig(steps=4, batch_size=16, warmup_steps=1), progress=False,
                      device=cuda)
    loss = trainer.train_step()
    assert loss.dtype == torch.float32 and bool(torch.isfinite(loss))
    assert all(p.dtype == torch.float32 for p in trainer.pipeline.parameters())
    fp32 = Trainer(_dit_pipeline(), _data(pipeline), TrainConfig(steps=4, batch_size=16, warmup_steps=1,
                                                                 precision="fp32"), progress=False, device=cuda)
    fp32.pipeline.load_state_dict(trainer.pipeline.state_dict())
    # same weights, same step seeds: bf16 and fp32 losses of the next step agree to bf16 precision
    trainer.step = fp32.step = 1
    a, b = float(trainer.train_step()), float(fp32.train_step())
    assert a == pytest.approx(b, rel=0.05)


def test_unets_train_channels_last_on_cuda(cuda):
    pipeline = _unet_pipeline()
    trainer = Trainer(pipeline, _data(pipeline), TrainConfig(steps=2, batch_size=16), progress=False, device=cuda)
    assert trainer.channels_last
    conv = trainer.pipeline.backbone.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert bool(torch.isfinite(trainer.train_step()))


def test_compiled_training_matches_eager_on_the_first_step(cuda):
    eager_pipeline, compiled_pipeline = _dit_pipeline(), _dit_pipeline()
    compiled_pipeline.load_state_dict(eager_pipeline.state_dict())
    config = TrainConfig(steps=2, batch_size=16, warmup_steps=1, precision="fp32")
    data = _data(eager_pipeline)
    eager = Trainer(eager_pipeline, data, config, progress=False, device=cuda)
    compiled = Trainer(compiled_pipeline, data, config, progress=False, device=cuda, compile=True)
    assert float(compiled.train_step()) == pytest.approx(float(eager.train_step()), rel=1e-3)


def test_a_cuda_generator_seeds_the_step_noise_reproducibly(cuda):
    """Documented: on CUDA the step noise comes from a CUDA (Philox) generator seeded per step."""
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        pipeline = _dit_pipeline()
        trainer = Trainer(pipeline, _data(pipeline), TrainConfig(steps=3, batch_size=16, warmup_steps=1,
                                                                 precision="fp32"), progress=False, device=cuda)
        assert trainer.generator.device.type == "cuda"
        runs.append([float(trainer.train_step()) for _ in range(2)])
    assert runs[0] == runs[1]


def test_fsdp_on_one_gpu_follows_the_plain_trainer(cuda):
    """FSDP2 over NCCL (a one-rank group) on the GPU: the same steps as without sharding."""
    from diffkit.distributed import shutdown_distributed

    torch.manual_seed(0)
    pipeline = _dit_pipeline()
    twin = _dit_pipeline()
    twin.load_state_dict(pipeline.state_dict())
    data = _data(pipeline)
    config = TrainConfig(steps=4, batch_size=16, warmup_steps=1, precision="fp32")
    try:
        plain = Trainer(pipeline, data, config, progress=False, device=cuda)
        sharded = Trainer(twin, data, config, progress=False, device=cuda, fsdp=True)
        for _ in range(2):
            a, b = float(plain.train_step()), float(sharded.train_step())
            assert a == pytest.approx(b, rel=1e-4)
        expected, got = plain.ema_pipeline().state_dict(), sharded.ema_pipeline().state_dict()
        assert max(float((expected[k] - got[k]).abs().max()) for k in expected) < 1e-4
    finally:
        shutdown_distributed()
