"""Classifier-free guidance with Conditioning records: one batched forward, field by field."""

from __future__ import annotations

import pytest
import torch

import diffkit
from diffkit.errors import ConfigError
from diffkit.models.backbones.unet import UNet, UNetConfig
from diffkit.models.conditioners import Conditioning
from diffkit.sampling.guidance import CFGDenoiser, batch_conditions


class RecordingDenoiser(torch.nn.Module):
    """D(x, σ, c) = x/(1+σ²) + mean(c.vector) + c.labels: analytic and reading two record fields."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[Conditioning] = []

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        self.calls.append(cond)
        shift = cond.vector.mean(dim=1) + cond.labels.to(x.dtype)  # (B,)
        return x / (1 + sigma**2)[:, None, None, None] + shift[:, None, None, None]


def test_cfg_batches_records_into_one_forward():
    inner = RecordingDenoiser()
    cond = Conditioning(labels=torch.tensor([1, 2, 3]), vector=torch.randn(3, 4))
    uncond = Conditioning(labels=torch.tensor([10]), vector=torch.zeros(1, 4))  # batch 1: broadcast
    x, sigma = torch.randn(3, 2, 4, 4), torch.tensor([0.5, 2.0, 10.0])
    guided = CFGDenoiser(inner, 4.0, uncond=uncond)(x, sigma, cond)
    assert len(inner.calls) == 1
    both = inner.calls[0]
    assert isinstance(both, Conditioning) and both.batch_size == 6
    assert torch.equal(both.labels, torch.tensor([1, 2, 3, 10, 10, 10]))  # [cond; uncond]
    assert torch.equal(both.vector[:3], cond.vector) and torch.equal(both.vector[3:], torch.zeros(3, 4))
    d_c = inner(x, sigma, cond)
    d_u = inner(x, sigma, Conditioning(labels=torch.full((3,), 10), vector=torch.zeros(3, 4)))
    torch.testing.assert_close(guided, d_u + 4.0 * (d_c - d_u))


def test_batch_conditions_rules_for_records():
    record = Conditioning(labels=torch.tensor([1, 2]), context=torch.randn(2, 3, 4))
    null = Conditioning(labels=torch.tensor([5, 5]), context=torch.zeros(2, 3, 4))
    both = batch_conditions(record, null, 2)
    assert both.mask is None and both.vector is None and both.batch_size == 4
    with pytest.raises(ConfigError, match=r"conditioning\.context: a tensor in one branch"):
        batch_conditions(record, Conditioning(labels=torch.tensor([5, 5])), 2)
    with pytest.raises(ConfigError, match="same keys, got Conditioning and"):
        batch_conditions(record, {"labels": torch.tensor([5, 5]), "context": torch.zeros(2, 3, 4)}, 2)
    with pytest.raises(ConfigError, match="records of the same class"):
        batch_conditions(record, None, 2)


def test_cfg_with_a_class_unet_and_the_class_label_conditioner():
    torch.manual_seed(0)
    config = UNetConfig(sample_size=8, block_out_channels=(8, 16), layers_per_block=1, attention_levels=(),
                        mid_attention=False, norm_groups=4, dropout=0.0, num_classes=4)
    model = UNet(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    schedule = diffkit.build("schedule", "linear")
    denoiser = diffkit.VPDenoiser(model, schedule, "eps")
    labels = diffkit.build("conditioner", "class_label", num_classes=4).eval()
    cond, uncond = labels([0, 3]), labels.null(2)
    y, sigma = torch.randn(2, 3, 8, 8), schedule.sigmas[torch.tensor([100, 600])].float()
    with torch.no_grad():
        guided = CFGDenoiser(denoiser, 3.0, uncond=uncond)(y, sigma, cond)
        d_c, d_u = denoiser(y, sigma, cond), denoiser(y, sigma, uncond)
    torch.testing.assert_close(guided, d_u + 3.0 * (d_c - d_u), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(d_c, d_u)
