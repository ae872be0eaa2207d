"""The CUDA production path: sampling without device→host syncs, flash attention in bf16,
bf16 autocast against fp32, and ``compile_module`` against eager.

Every test needs CUDA (``conftest.cuda`` skips without it). Sync checks use
``torch.cuda.set_sync_debug_mode("error")``, under which any synchronizing CUDA call — a
``.item()``, ``bool(tensor)``, a blocking host↔device copy — raises. Set-up may sync (a σ
table copied to the device once, user labels validated once per call), so each check warms up
first and then checks a complete second call.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

import diffkit
from diffkit.runtime.accel import compile_module

SAMPLERS = ("ddim", "euler", "dpmpp_2m", "unipc", "heun")
GUIDANCE = 3.0
BATCH = 4

DIT = ("dit", {"input_size": 8, "patch_size": 2, "in_channels": 4, "hidden_size": 64, "depth": 2, "num_heads": 4,
               "num_classes": 10})
UNET = ("unet", {"sample_size": 16, "in_channels": 3, "out_channels": 3, "block_out_channels": (16, 32),
                 "layers_per_block": 1, "attention_levels": (1,), "attention_head_dim": 8, "norm_groups": 8,
                 "num_classes": 10, "dropout": 0.0})


def randomized(module: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """Add seeded noise to every parameter: zero-initialised output layers would hide paths."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g).to(p.device))
    return module


def pipeline(backbone, device: torch.device) -> diffkit.Pipeline:
    pipe = diffkit.Pipeline(
        backbone=backbone, schedule="linear",
        conditioner=("class_label", {"num_classes": 10, "drop_prob": 0.1}), parameterization="eps",
    )
    return randomized(pipe).to(device).eval()


def sync_free_run(run, precision: str):
    """Warm up (set-up may sync), then run again with every synchronizing CUDA call an error."""
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16")
    with torch.no_grad(), autocast:
        run()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = run()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
    return out


# -- (a) no device→host syncs while sampling ---------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("backbone", [DIT, UNET], ids=["dit", "unet"])
def test_guided_sampling_loop_never_syncs(cuda, backbone, sampler, precision):
    """diffkit.sample with CFG (one batched forward per step) on the GPU: no sync in the whole call."""
    pipe = pipeline(backbone, cuda)
    labels = torch.arange(BATCH, device=cuda) % 10
    record = pipe.condition(labels)  # validates the labels (one sync): done outside the check
    uncond = pipe.condition(labels, force_drop=True)
    guided = diffkit.CFGDenoiser(pipe.denoiser(), GUIDANCE, uncond=uncond)
    generator = torch.Generator(device=cuda).manual_seed(0)  # noise drawn on the GPU, no copy

    def run():
        return diffkit.sample(
            guided, (BATCH, *pipe.sample_shape), cond=record, schedule=pipe.schedule, sampler=sampler,
            steps=6, generator=generator, device=cuda, check_finite=False,  # (the one read of the output check)
        )

    out = sync_free_run(run, precision)
    assert out.shape == (BATCH, *pipe.sample_shape) and out.device.type == cuda.type
    assert torch.isfinite(out).all()


def count_syncs(run) -> int:
    """Synchronizing CUDA calls made by ``run()`` (sync debug mode "warn" turns each into a warning)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            run()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchronizing" in str(w.message) for w in record)


@pytest.mark.parametrize("backbone", [DIT, UNET], ids=["dit", "unet"])
def test_pipeline_sample_syncs_do_not_grow_with_the_steps(cuda, backbone):
    """Pipeline.sample as a user calls it: set-up may sync a fixed number of times, no step does."""
    pipe = pipeline(backbone, cuda)
    labels = torch.arange(BATCH, device=cuda) % 10

    def run(steps: int):
        return lambda: pipe.sample(
            BATCH, cond=labels, guidance=GUIDANCE, steps=steps, sampler="dpmpp_2m",
            generator=torch.Generator(device=cuda).manual_seed(0),
        )

    with torch.no_grad():
        run(2)()  # warm-up: σ tables to the device, kernels loaded
    few, many = count_syncs(run(2)), count_syncs(run(8))
    assert few == many, f"{few} syncs with 2 steps but {many} with 8: some step synchronizes"


# -- (b) flash attention ------------------------------------------------------------------------


def test_dit_attention_runs_on_the_flash_kernel_in_bf16(cuda):
    """sdpa_kernel(FLASH_ATTENTION) raises when flash cannot run these inputs."""
    model = randomized(diffkit.build("backbone", "dit", preset="DiT-S/2", num_classes=1000)).to(cuda).eval()
    g = torch.Generator(device=cuda).manual_seed(1)
    x = torch.randn(2, 4, 32, 32, device=cuda, generator=g)
    t, y = torch.tensor([10.0, 900.0], device=cuda), torch.tensor([3, 1000], device=cuda)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            flash = model(x, t, y)
        with sdpa_kernel(SDPBackend.MATH):
            math_kernel = model(x, t, y)
    assert torch.isfinite(flash).all()
    assert (flash.float() - math_kernel.float()).norm() <= 0.02 * math_kernel.float().norm()


# -- (c) bf16 autocast against fp32 ---------------------------------------------------------------


@pytest.mark.parametrize("backbone", [DIT, UNET], ids=["dit", "unet"])
def test_bf16_autocast_is_close_to_fp32(cuda, backbone):
    model = randomized(diffkit.build("backbone", backbone[0], **backbone[1]), std=0.1).to(cuda).eval()
    c, size = backbone[1]["in_channels"], backbone[1].get("input_size") or backbone[1]["sample_size"]
    g = torch.Generator(device=cuda).manual_seed(2)
    x = torch.randn(3, c, size, size, device=cuda, generator=g)
    t, y = torch.tensor([0.0, 417.25, 999.0], device=cuda), torch.tensor([0, 7, 10], device=cuda)
    with torch.no_grad():
        torch.backends.cuda.matmul.fp32_precision, saved = "ieee", torch.backends.cuda.matmul.fp32_precision
        try:
            reference = model(x, t, y)
        finally:
            torch.backends.cuda.matmul.fp32_precision = saved
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16 = model(x, t, y)
    assert bf16.dtype == torch.bfloat16 and reference.abs().max() > 0.1
    assert (bf16.float() - reference).norm() <= 0.05 * reference.norm()


# -- (d) compile_module on CUDA ------------------------------------------------------------------


def test_compile_module_on_cuda_matches_eager(cuda):
    torch._dynamo.reset()
    eager = randomized(diffkit.build("backbone", "dit", **DIT[1]), std=0.1).to(cuda).eval()
    compiled = copy.deepcopy(eager)
    g = torch.Generator(device=cuda).manual_seed(3)
    x = torch.randn(4, 4, 8, 8, device=cuda, generator=g)
    t, y = torch.tensor([1.0, 250.5, 600.0, 999.0], device=cuda), torch.tensor([0, 3, 9, 10], device=cuda)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        compile_module(compiled)
        with torch.no_grad():
            out = compiled(x, t, y)
            again = compiled(x, t, y)  # the cached graph
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out_bf16, eager_bf16 = compiled(x, t, y), eager(x, t, y)
            expected = eager(x, t, y)
    assert compiled.compile_fallback is None, f"fell back to eager: {compiled.compile_fallback}"
    assert not [w for w in record if "uncompiled" in str(w.message)]
    assert list(compiled.state_dict()) == list(eager.state_dict())
    torch.testing.assert_close(out, expected, rtol=2e-3, atol=2e-3)  # TF32/fusion round-off
    assert torch.equal(out, again)
    assert (out_bf16.float() - eager_bf16.float()).norm() <= 0.03 * eager_bf16.float().norm()
    torch._dynamo.reset()


@pytest.mark.parametrize("backbone", [DIT, UNET], ids=["dit", "unet"])
def test_pipeline_sample_runs_the_network_in_bf16_by_default_on_cuda(cuda, backbone):
    """precision="auto": the backbone under bf16 autocast, the sampler in fp32 — close to all-fp32."""
    pipe = pipeline(backbone, cuda)
    labels = torch.arange(BATCH, device=cuda) % 10

    def run(precision: str) -> torch.Tensor:
        return pipe.sample(BATCH, cond=labels, guidance=GUIDANCE, steps=8, sampler="dpmpp_2m", precision=precision,
                           generator=torch.Generator(device=cuda).manual_seed(0))

    auto, fp32 = run("auto"), run("fp32")
    assert auto.dtype == torch.float32 and not torch.equal(auto, fp32)  # bf16 did run
    scale = fp32.abs().max()
    assert (auto - fp32).abs().max() <= 0.1 * scale
