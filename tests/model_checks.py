"""Checks shared by the model tests: for a backbone ``model(x, t, cond)``, gradient checkpointing and
channels-last change nothing, bf16 stays close and CUDA matches the CPU; for any model component,
its registry entry builds it."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import diffkit
from diffkit.errors import UnknownNameError


def check_checkpointing(model: nn.Module, *inputs: Any) -> torch.Tensor:
    """``model(*inputs)`` and every parameter's gradient (each one non-zero) are the same with
    ``model.gradient_checkpointing`` on. Leaves it on; returns the output."""
    out = model(*inputs)
    out.square().sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(g.abs().sum() > 0 for g in grads.values())  # every parameter is reached
    model.zero_grad()
    model.gradient_checkpointing = True
    out2 = model(*inputs)
    out2.square().sum().backward()
    torch.testing.assert_close(out2, out)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[n], rtol=1e-4, atol=1e-6)
    return out


def check_channels_last(model: nn.Module, expected: torch.Tensor, x: torch.Tensor, *rest: Any) -> None:
    """Channels-last weights and input ``x`` give ``expected`` (the output of ``model(x, *rest)``)."""
    cl = model.to(memory_format=torch.channels_last)
    with torch.no_grad():
        got = cl(x.to(memory_format=torch.channels_last), *rest)
    torch.testing.assert_close(got, expected.detach(), rtol=1e-4, atol=1e-5)


def check_bf16(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: Any) -> None:
    """Under CPU bf16 autocast, and with bf16 weights and input (``cond`` as given: the model casts it),
    the output is finite and within 5 % (relative L2) of fp32's. Leaves the weights bf16."""
    with torch.no_grad():
        reference = model(x, t, cond)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = model(x, t, cond)
        bf16 = model.to(torch.bfloat16)(x.bfloat16(), t, cond)
    assert bf16.dtype == torch.bfloat16 and torch.isfinite(bf16).all() and torch.isfinite(auto).all()
    for got in (auto.float(), bf16.float()):
        assert (got - reference).norm() <= 0.05 * reference.norm()


def check_cuda(model: nn.Module, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, device: str = "cuda") -> None:
    """On ``device``, fp32 (TF32 allowed) and channels-last match the CPU to 1e-3, and bf16 weights (with a
    floating-point ``cond`` cast too, labels not) stay within 5 % (relative L2)."""
    with torch.no_grad():
        reference = model(x, t, cond)
        gpu, x, t, cond = model.to(device), x.to(device), t.to(device), cond.to(device)
        fp32 = gpu(x, t, cond).cpu()
        cl = gpu.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last), t, cond)
        bf16 = gpu.to(torch.bfloat16)(x.bfloat16(), t, cond.bfloat16() if cond.is_floating_point() else cond)
    torch.testing.assert_close(fp32, reference, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(cl.cpu(), reference, rtol=1e-3, atol=1e-3)
    assert bf16.dtype == torch.bfloat16 and (bf16.float().cpu() - reference).norm() <= 0.05 * reference.norm()


def check_registered(kind: str, name: str, cls: type, tiny: Any, preset: tuple[str, dict], misspelt: tuple[str, str]):
    """``kind`` ``name`` is a built-in entry configured by ``type(tiny)``: it builds a ``cls`` from ``tiny``'s
    fields and from ``preset`` = (preset name, overrides) (on the meta device), and a misspelt keyword
    ``misspelt`` = (the typo, the field) names the field. Returns the entry."""
    config_class, (preset_name, overrides), (typo, field) = type(tiny), preset, misspelt
    entry = diffkit.get_entry(kind, name)
    assert entry.options is config_class and entry.origin.builtin
    model = diffkit.build(kind, name, **tiny.to_dict())
    assert isinstance(model, cls) and model.config == tiny
    with torch.device("meta"):  # shapes only
        built = diffkit.build(kind, name, preset=preset_name, **overrides)
    assert isinstance(built, cls) and built.config == config_class.from_preset(preset_name, **overrides)
    with pytest.raises(UnknownNameError, match=f"did you mean '{field}'"):
        diffkit.build(kind, name, **{typo: 2})
    return entry
