"""The ``minilm`` conditioner inside diffkit: a ``latent_unet`` reads its record (context, mask,
pooled vector), guided sampling uses its null condition, and pipelines save and load —
without the frozen encoder's weights, which come from the installed package."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffkit_minilm import HIDDEN_SIZE
from safetensors import safe_open

import diffkit
from diffkit import registry
from diffkit.errors import UnknownNameError
from diffkit.pipeline import Pipeline, load_pipeline

CTX = 16
LATENT_UNET = {
    "sample_size": 8, "in_channels": 2, "out_channels": 2, "block_out_channels": (16, 16),
    "layers_per_block": 1, "cross_attention_levels": (1,), "num_heads": 2, "context_dim": CTX,
    "vector_dim": CTX, "norm_groups": 8,
}
PROMPTS = ["a red circle on the left", "", "two blue squares"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: faster than OpenMP contention for these small models on 2 cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def perturb(module: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    """Add N(0, scale²) to every trainable parameter (the UNet's output layer starts at zero,
    which would make every prediction independent of the condition)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return module


def minilm_pipeline(seed: int = 0, **conditioner: object) -> Pipeline:
    options = {"project_dim": CTX, "max_length": 16, **conditioner}
    pipe = Pipeline(
        backbone=("latent_unet", LATENT_UNET), conditioner=("minilm", options), parameterization="v",
        schedule="cosine", default_steps=3,
    )
    return perturb(pipe, seed).eval()


def test_latent_unet_runs_on_the_record_and_reads_the_prompt():
    pipe = minilm_pipeline()
    record = pipe.condition(PROMPTS)
    x = torch.randn(3, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.full((3,), 500)
    with torch.no_grad():
        out = pipe.backbone(x, t, record)
        swapped = pipe.backbone(x, t, pipe.condition(list(reversed(PROMPTS))))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert torch.allclose(out[1], swapped[1], atol=1e-5)  # the same prompt "" in the middle
    assert not torch.allclose(out[0], swapped[0], atol=1e-3)  # a different prompt


def test_the_full_width_context_fits_a_384_channel_backbone():
    pipe = Pipeline(
        backbone=("latent_unet", {**LATENT_UNET, "context_dim": HIDDEN_SIZE, "vector_dim": HIDDEN_SIZE}),
        conditioner=("minilm", {"max_length": 12}),
    ).eval()
    record = pipe.condition(["a red circle", "a blue square"])
    assert record.context.shape == (2, 12, HIDDEN_SIZE)
    with torch.no_grad():
        out = pipe.backbone(torch.zeros(2, 2, 8, 8), torch.tensor([10, 900]), record)
    assert out.shape == (2, 2, 8, 8)


def test_guided_sampling_is_reproducible():
    pipe = minilm_pipeline()
    a = pipe.sample(2, cond=PROMPTS[:2], steps=3, guidance=3.0, generator=0)
    b = pipe.sample(2, cond=PROMPTS[:2], steps=3, guidance=3.0, generator=0)
    plain = pipe.sample(2, cond=PROMPTS[:2], steps=3, guidance=1.0, generator=0)
    assert a.shape == (2, 2, 8, 8) and torch.equal(a, b)
    assert not torch.allclose(a[0], plain[0], atol=1e-4)  # guidance moves the prompted sample


def _saved_keys(folder: Path) -> list[str]:
    with safe_open(str(folder / "conditioner" / "model.safetensors"), "pt") as f:
        return sorted(f.keys())


def test_save_and_load_a_frozen_pipeline(tmp_path):
    pipe = minilm_pipeline(seed=1)
    folder = pipe.save(tmp_path / "pipe")
    assert _saved_keys(folder) == ["proj.bias", "proj.weight"]  # the encoder is not copied
    assert (folder / "conditioner" / "model.safetensors").stat().st_size < 100_000
    again = load_pipeline(folder)
    assert again.conditioner.config == pipe.conditioner.config
    assert torch.equal(again.conditioner.proj.weight, pipe.conditioner.proj.weight)
    images = pipe.sample(2, cond=PROMPTS[:2], steps=3, guidance=2.0, generator=5)
    assert torch.equal(again.sample(2, cond=PROMPTS[:2], steps=3, guidance=2.0, generator=5), images)
    assert torch.equal(diffkit.load_pretrained(folder).sample(2, cond=PROMPTS[:2], steps=3, generator=1),
                       pipe.sample(2, cond=PROMPTS[:2], steps=3, generator=1))


def test_save_and_load_a_fine_tuned_encoder(tmp_path):
    pipe = Pipeline(
        backbone=("latent_unet", {**LATENT_UNET, "context_dim": HIDDEN_SIZE, "vector_dim": 0}),
        conditioner=("minilm", {"freeze": False, "max_length": 8}),
    )
    query = pipe.conditioner.encoder.encoder.layer[0].attention.self.query.weight
    with torch.no_grad():
        query.add_(0.01)  # a "fine-tuned" weight, unlike the package's
    folder = pipe.save(tmp_path / "tuned")
    keys = _saved_keys(folder)
    assert "encoder.encoder.layer.0.attention.self.query.weight" in keys
    again = load_pipeline(folder)
    loaded = again.conditioner.encoder.encoder.layer[0].attention.self.query.weight
    assert torch.equal(loaded, query)
    assert torch.allclose(again.condition(["a red circle"]).vector, pipe.eval().condition(["a red circle"]).vector)


def test_loading_without_the_plugin_names_it(tmp_path, monkeypatch):
    folder = minilm_pipeline().save(tmp_path / "pipe")
    monkeypatch.setenv("DIFFKIT_DISABLE_PLUGINS", "minilm")
    registry.reset()
    try:
        with pytest.raises(UnknownNameError, match="diffkit-minilm"):
            load_pipeline(folder)
    finally:
        monkeypatch.delenv("DIFFKIT_DISABLE_PLUGINS")
        registry.reset()


def test_training_checkpoints_hold_no_encoder_weights(tmp_path):
    """The trainer's EMA copy shares the frozen encoder; its checkpoints store the projection only."""
    from diffkit.training import TrainConfig, Trainer
    from diffkit.training.data import InMemoryData

    pipe = minilm_pipeline().train()
    texts = ["a red circle", "a blue square", "a green star", "a yellow triangle"] * 2
    data = InMemoryData(torch.rand(8, 2, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1, texts)
    trainer = Trainer(pipe, data, TrainConfig(steps=2, batch_size=4, save_every=2, sample_every=0),
                      out_dir=tmp_path, progress=False)
    before = pipe.conditioner.proj.weight.detach().clone()
    result = trainer.train()
    assert not torch.equal(pipe.conditioner.proj.weight, before)  # the projection is trained
    assert trainer.ema.module.conditioner.frozen is pipe.conditioner.frozen
    for name in ("model.safetensors", "ema.safetensors"):
        with safe_open(str(result.checkpoint / name), "pt") as f:
            conditioner_keys = sorted(k for k in f.keys() if k.startswith("conditioner."))
        assert conditioner_keys == ["conditioner.proj.bias", "conditioner.proj.weight"]
