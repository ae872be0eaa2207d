"""diffkit.runtime.accel on the CPU: TF32 flags, compile_module (fast backends, fallbacks), channels-last."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import diffkit
from diffkit.errors import ShapeError
from diffkit.runtime.accel import (
    CompileFallbackWarning,
    as_channels_last,
    compile_module,
    enable_tf32,
    use_channels_last,
)
from tests.model_helpers import perturb

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Compiled code is cached per code object (nn.Module._call_impl): start and end clean."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class Small(nn.Module):
    """A little MLP with a non-trivial forward (so a compiler has something to fuse)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inner = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
        self.norm = nn.LayerNorm(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.inner(x)) * torch.sigmoid(x)


def fallback_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, CompileFallbackWarning)]


# -- TF32 ---------------------------------------------------------------------------------------


@pytest.fixture
def restore_precision():
    b = torch.backends
    saved = (torch.get_float32_matmul_precision(), b.mkldnn.matmul.fp32_precision,
             b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision)
    yield
    torch.set_float32_matmul_precision(saved[0])
    b.mkldnn.matmul.fp32_precision = saved[1]
    b.cuda.matmul.fp32_precision, b.cudnn.conv.fp32_precision = saved[2], saved[3]


def test_enable_tf32_sets_consistent_flags_without_warnings_and_keeps_cpu_math(restore_precision):
    a = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    before = a @ a
    cpu_setting = torch.backends.mkldnn.matmul.fp32_precision
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        enable_tf32()
        enable_tf32()  # idempotent
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
        assert torch.backends.cudnn.conv.fp32_precision == "tf32"
        # legacy readers (inductor's autotuner) must not hit torch's "mix of legacy and new APIs" error
        assert torch.get_float32_matmul_precision() == "high"
        assert torch.backends.cuda.matmul.allow_tf32
    assert not record, [str(w.message) for w in record]
    assert torch.backends.mkldnn.matmul.fp32_precision == cpu_setting
    assert torch.equal(a @ a, before)


# -- compile_module ----------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_compile_with_a_fast_backend_keeps_outputs_keys_and_identity(backend):
    eager = Small()
    model = copy.deepcopy(eager)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        same = compile_module(model, backend=backend)
        out = model(x)
    assert same is model and model.compile_fallback is None
    assert model._compiled_call_impl is not None  # really compiled
    assert list(model.state_dict()) == list(eager.state_dict())  # no "_orig_mod." prefix
    torch.testing.assert_close(out, eager(x), rtol=1e-6, atol=1e-6)
    out.sum().backward()  # gradients flow through the compiled forward
    assert all(p.grad is not None for p in model.parameters())
    twin = copy.deepcopy(model)  # an EMA copy is a plain eager module
    assert twin._compiled_call_impl is None
    torch.testing.assert_close(twin(x), eager(x), rtol=1e-6, atol=1e-6)


def test_unknown_backend_falls_back_with_one_warning_and_close_matches():
    model, eager = Small(), Small()
    x = torch.randn(3, 8)
    with pytest.warns(CompileFallbackWarning) as record:
        assert compile_module(model, backend="aot_eagre") is model
    messages = fallback_warnings(record.list)
    assert len(messages) == 1
    assert "aot_eagre" in messages[0] and "'aot_eager'" in messages[0] and "uncompiled" in messages[0]
    assert model._compiled_call_impl is None and "aot_eagre" in model.compile_fallback
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no second warning when called
        assert torch.equal(model(x), eager(x))


def test_a_backend_that_fails_at_the_first_call_falls_back_to_eager_outputs():
    calls = []

    def broken_backend(graph_module, example_inputs):
        calls.append(len(example_inputs))
        raise RuntimeError("no compiler here")

    model, eager = Small(), Small()
    x = torch.randn(5, 8)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        compile_module(model, backend=broken_backend)
        assert not fallback_warnings(record)  # compilation is lazy: nothing failed yet
        first = model(x)
        second = model(x + 1)
    messages = fallback_warnings(record)
    assert len(messages) == 1, messages
    assert "no compiler here" in messages[0] and "Small" in messages[0]
    assert calls, "the backend was never asked to compile"
    assert torch.equal(first, eager(x)) and torch.equal(second, eager(x + 1))  # exactly eager
    assert model._compiled_call_impl is None


def test_a_compiled_call_that_raises_at_run_time_falls_back():
    """The backend compiles, but the compiled code fails when it runs (e.g. a kernel launch)."""

    def compiles_but_fails_to_run(graph_module, example_inputs):
        def run(*args):
            raise RuntimeError("compiled kernel failed to launch")

        return run

    model, eager = Small(), Small()
    x = torch.randn(3, 8)
    compile_module(model, backend=compiles_but_fails_to_run)
    with pytest.warns(CompileFallbackWarning, match="failed to launch") as record:
        out = model(x)
    assert len(fallback_warnings(record.list)) == 1
    assert torch.equal(out, eager(x))


def test_the_callers_own_errors_propagate_and_keep_the_module_compiled():
    model = compile_module(Small(), backend="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        with pytest.raises(RuntimeError, match="shape|size"):
            model(torch.randn(2, 3))  # wrong width: the eager retry raises too
        assert model._compiled_call_impl is not None and model.compile_fallback is None
        model(torch.randn(2, 8))


def test_compile_module_rejects_non_modules():
    with pytest.raises(TypeError, match="nn.Module"):
        compile_module(lambda x: x)  # type: ignore[arg-type]


@pytest.mark.slow
def test_inductor_on_the_cpu_matches_eager_or_falls_back_cleanly():
    """The real default backend: C++ codegen when a compiler is present, else one warning."""
    model, eager = Small(), Small()
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        compile_module(model)
        out = model(x)
    if model.compile_fallback is None:
        assert not fallback_warnings(record)
        torch.testing.assert_close(out, eager(x), rtol=1e-5, atol=1e-5)
    else:
        assert len(fallback_warnings(record)) == 1 and torch.equal(out, eager(x))


# -- channels-last ------------------------------------------------------------------------------

TINY_UNET = {
    "sample_size": 16, "in_channels": 3, "out_channels": 3, "block_out_channels": (16, 32),
    "layers_per_block": 1, "attention_levels": (1,), "attention_head_dim": 8, "norm_groups": 8,
    "num_classes": 5, "dropout": 0.0,
}


def test_channels_last_unet_gives_the_same_outputs_and_state_dict():
    unet = perturb(diffkit.build("backbone", "unet", **TINY_UNET), scale=0.1).eval()
    reference = copy.deepcopy(unet)
    g = torch.Generator().manual_seed(3)
    x, t, y = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([10.0, 700.0]), torch.tensor([1, 5])
    assert use_channels_last(unet) is True
    convs = [m for m in unet.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not convs[0].weight.is_contiguous()  # really NHWC, not a no-op
    with torch.no_grad():
        out = unet(as_channels_last(x), t, y)
        expected = reference(x, t, y)
    assert out.abs().max() > 0.1
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert {k: v.shape for k, v in unet.state_dict().items()} == {k: v.shape for k, v in reference.state_dict().items()}


def test_dit_is_left_alone():
    dit = diffkit.build("backbone", "dit", preset="DiT-S/8", input_size=16, num_classes=10, depth=1)
    assert use_channels_last(dit) is False
    assert dit.patch_embed.weight.is_contiguous()


def test_as_channels_last_keeps_values_and_rejects_other_ranks():
    x = torch.randn(2, 3, 4, 5)
    y = as_channels_last(x)
    assert torch.equal(x, y) and y.is_contiguous(memory_format=torch.channels_last)
    assert as_channels_last(y) is y or as_channels_last(y).data_ptr() == y.data_ptr()
    with pytest.raises(ShapeError, match="4-D"):
        as_channels_last(torch.randn(2, 3, 4))
