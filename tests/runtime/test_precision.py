"""Mixed-precision policy: what "auto", "fp32" and "bf16" mean where, and the bf16 network wrapper."""

from __future__ import annotations

import pytest
import torch

from diffkit.errors import ConfigError, UnknownNameError
from diffkit.pipeline import Pipeline
from diffkit.runtime.precision import BF16Network, autocast, bf16_enabled


def test_auto_is_bf16_on_cuda_and_fp32_on_the_cpu():
    assert bf16_enabled("auto", "cuda") and bf16_enabled("bf16", "cuda:1")
    assert not bf16_enabled("auto", "cpu") and not bf16_enabled("fp32", "cuda")
    with autocast("auto", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_bf16_off_cuda_and_unknown_precisions_are_refused():
    with pytest.raises(ConfigError, match="precision='bf16' needs a CUDA device"):
        bf16_enabled("bf16", "cpu")
    with pytest.raises(UnknownNameError, match="did you mean 'bf16'"):
        bf16_enabled("bf61", "cpu")


def test_the_bf16_wrapper_returns_full_precision_close_to_fp32():
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 16))
    x = torch.randn(8, 16)
    wrapped = BF16Network(network)
    out = wrapped(x)  # CPU autocast supports bf16 too
    assert out.dtype == torch.float32 and wrapped.network is network
    reference = network(x)
    assert not torch.equal(out, reference)  # it did run in bf16
    torch.testing.assert_close(out, reference, rtol=0.05, atol=0.05)


def test_sampling_precision_is_checked():
    pipeline = Pipeline(backbone=("unet", {"sample_size": 8, "in_channels": 1, "out_channels": 1,
                                           "block_out_channels": [16, 32], "layers_per_block": 1, "norm_groups": 8}))
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        pipeline.sample(1, steps=1, precision="bf16")
    fp32 = pipeline.sample(2, steps=2, generator=0, precision="fp32")
    assert torch.equal(pipeline.sample(2, steps=2, generator=0), fp32)  # auto = fp32 on the CPU
