"""GPU performance switches: TF32, ``torch.compile`` with an eager fallback, channels-last.

Each switch changes speed, never the meaning of a model: state-dict keys, checkpoints and the
function a module computes stay the same (up to the round-off of TF32 or a compiler's fusions).

* :func:`enable_tf32` — fp32 matmuls and cuDNN convolutions on TF32 tensor cores (Ampere and
  later). Nothing changes on the CPU.
* :func:`compile_module` — compile a module's forward **in place** with
  ``nn.Module.compile``. The module object, its ``state_dict`` keys (no ``_orig_mod.`` prefix,
  which the ``torch.compile(module)`` wrapper adds) and ``copy.deepcopy`` (an EMA copy is an
  ordinary eager module) are unchanged. When compilation is unavailable or fails, the module
  runs uncompiled and one :class:`CompileFallbackWarning` says what failed.
* :func:`use_channels_last` / :func:`as_channels_last` — NHWC memory layout for convolutional
  backbones, where cuDNN's fastest bf16 kernels want it.

How the compile fallback works. Compilation is lazy: ``torch.compile`` only records what to
do, the graph is traced and compiled at the first call (and again when guards fail, e.g. a new
batch size or ``train()``/``eval()``). So failures are handled in two places:

1. when asked: an unknown backend, a platform where TorchDynamo does not run, or the CUDA
   inductor backend without Triton → no compile, one warning, the module stays eager;
2. at a call: if the compiled call raises, the same inputs are run eagerly. If eager succeeds
   the failure was the compiler's: the module is switched back to eager for good (one
   warning) and the eager result is returned, so outputs are exactly the eager ones. If eager
   raises too, the error is the caller's (a wrong shape, say) and eager's exception
   propagates; the module stays compiled.

A failure inside a compiled *backward* (AOTAutograd may compile it at the first backward) is
not caught here: it surfaces from ``loss.backward()``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from diffkit.errors import ShapeError, close_matches

CHANNELS_LAST_MIN_CONVS = 2
""":func:`use_channels_last` converts modules with at least this many ``Conv2d`` layers."""


class CompileFallbackWarning(UserWarning):
    """``torch.compile`` could not be used; the module runs uncompiled (eager)."""


# -- TF32 -----------------------------------------------------------------------------------


def enable_tf32() -> None:
    """Let fp32 matmuls (cuBLAS) and cuDNN convolutions use TF32 tensor cores.

    TF32 keeps fp32's range with a 10-bit mantissa (relative error ≈ 1e-3 per product); bf16
    autocast regions are unaffected. Uses the per-backend API of torch ≥ 2.9
    (``torch.backends.cuda.matmul.fp32_precision``, ``torch.backends.cudnn.conv.fp32_precision``).
    The legacy global precision is also set to the equivalent ``"high"``: torch raises
    (``RuntimeError: ... mix of the legacy and new APIs``) when code that still reads
    ``torch.get_float32_matmul_precision()`` or ``allow_tf32`` — inductor's autotuner does —
    finds the two disagreeing. The CPU (oneDNN) matmul precision is left as it was, so CPU
    results do not change. Idempotent; harmless without CUDA.
    """
    backends = torch.backends
    if not hasattr(backends.cuda.matmul, "fp32_precision"):  # torch < 2.9: only the legacy flags exist
        backends.cuda.matmul.allow_tf32 = True
        backends.cudnn.allow_tf32 = True
        return
    cpu_matmul = backends.mkldnn.matmul.fp32_precision
    torch.set_float32_matmul_precision("high")  # legacy view, kept consistent with the flags below
    backends.mkldnn.matmul.fp32_precision = cpu_matmul  # "high" also switches oneDNN: undo
    backends.cuda.matmul.fp32_precision = "tf32"
    backends.cudnn.conv.fp32_precision = "tf32"


# -- torch.compile with a fallback ------------------------------------------------------------


def compile_module(module: nn.Module, *, mode: str | None = None, backend: str = "inductor") -> nn.Module:
    """Compile ``module``'s forward in place (``nn.Module.compile``) and return the module.

    Args:
        module: any ``nn.Module``; it may still be moved to another device afterwards
            (compilation happens at the first call).
        mode: ``torch.compile``'s mode (None, ``"default"``, ``"reduce-overhead"``,
            ``"max-autotune"``, …).
        backend: a TorchDynamo backend name (``"inductor"``, ``"aot_eager"``, ``"eager"``, …)
            or a backend callable.

    Where compiling is impossible or fails the module runs eagerly and one
    :class:`CompileFallbackWarning` explains why (see the module docstring); calling it is
    always safe. ``module.compile_fallback`` is then the reason (a string), None while compiled.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"compile_module takes an nn.Module, got {type(module).__name__}")
    reason = _unavailable(backend)
    if reason is None:
        try:
            module.compile(mode=mode, backend=backend)
        except Exception as exc:  # noqa: BLE001 -- any failure to set up compilation means: run eagerly
            reason = f"torch.compile(backend={_name(backend)!r}, mode={mode!r}) failed: {_describe(exc)}"
    if reason is not None:
        return _fall_back(module, reason)
    compiled = module._compiled_call_impl
    module.__dict__["compile_fallback"] = None

    def guarded(*args: Any, **kwargs: Any) -> Any:
        triton_missing = _triton_missing(backend, args, kwargs)
        if triton_missing is not None:
            _fall_back(module, triton_missing)
            return module._call_impl(*args, **kwargs)
        try:
            return compiled(*args, **kwargs)
        except Exception as compile_error:  # noqa: BLE001 -- judged by the eager retry below
            result = module._call_impl(*args, **kwargs)  # raises the caller's own error, if it is one
            _fall_back(module, f"the compiled forward raised {_describe(compile_error)}")
            return result

    module._compiled_call_impl = guarded  # what nn.Module.__call__ runs while compiled
    return module


def _fall_back(module: nn.Module, reason: str) -> nn.Module:
    """Run ``module`` eagerly from now on and warn once with ``reason``."""
    module._compiled_call_impl = None
    module.__dict__["compile_fallback"] = reason
    warnings.warn(
        f"torch.compile is not used for {type(module).__name__}: {reason}. The model runs uncompiled (eager): "
        "correct, only slower.",
        CompileFallbackWarning,
        stacklevel=3,
    )
    return module


def _name(backend: str | Callable[..., Any]) -> str:
    return backend if isinstance(backend, str) else getattr(backend, "__name__", type(backend).__name__)


def _describe(exc: BaseException) -> str:
    """``Type: message`` on one line; dynamo's wrapper errors name the inner exception."""
    inner = getattr(exc, "inner_exception", None)  # BackendCompilerFailed wraps the backend's error
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("Set TORCHDYNAMO", "You can suppress", "For even more"))]
    text = " ".join(lines)
    if isinstance(inner, BaseException) and str(inner) not in text:
        text = f"{text} {type(inner).__name__}: {inner}".strip()
    text = text if len(text) <= 400 else text[:397] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _unavailable(backend: str | Callable[..., Any]) -> str | None:
    """Why compiling cannot even be attempted here (None when it can)."""
    try:
        import torch._dynamo as dynamo
    except Exception as exc:  # noqa: BLE001 -- a broken or stripped-down torch build
        return f"torch._dynamo cannot be imported ({_describe(exc)})"
    supported = getattr(dynamo, "is_dynamo_supported", None)
    if callable(supported) and not supported():
        return "TorchDynamo does not support this Python version or platform"
    if isinstance(backend, str):
        known = dynamo.list_backends(exclude_tags=())
        if backend not in known:
            hint = close_matches(backend, known)
            maybe = f"; did you mean {' or '.join(map(repr, hint))}?" if hint else ""
            return f"unknown torch.compile backend {backend!r}{maybe} (available: {', '.join(sorted(known))})"
    elif not callable(backend):
        return f"backend must be a backend name or a callable, got {type(backend).__name__}"
    return None


def _triton_missing(backend: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """Inductor on CUDA generates Triton kernels: without Triton it fails at the first call."""
    if backend != "inductor":
        return None
    tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
    if not any(t.is_cuda for t in tensors):
        return None
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return None
    return None if has_triton() else "the inductor backend needs Triton on CUDA, and Triton is not installed"


# -- channels-last -----------------------------------------------------------------------------


def use_channels_last(module: nn.Module) -> bool:
    """Store ``module``'s 4-D weights channels-last (NHWC) if it is convolutional; return whether it did.

    The rule: a module with at least :data:`CHANNELS_LAST_MIN_CONVS` (2) ``nn.Conv2d`` layers
    is converted. A UNet or an autoencoder is a stack of convolutions whose cuDNN kernels run
    fastest in NHWC (no layout transposes around each conv in bf16). A transformer such as DiT
    has one patch-embedding convolution and then works on [B, T, D] tokens, so converting it
    would only add a transpose; it is left alone. The layout changes strides only: parameter
    shapes, ``state_dict`` keys and saved checkpoints (written contiguous) are unchanged.
    Feed inputs through :func:`as_channels_last` so the first conv does not convert them.
    """
    convs = sum(isinstance(m, nn.Conv2d) for m in module.modules())
    if convs < CHANNELS_LAST_MIN_CONVS:
        return False
    module.to(memory_format=torch.channels_last)
    return True


def as_channels_last(x: torch.Tensor) -> torch.Tensor:
    """A 4-D tensor [B, C, H, W] with channels-last strides (the same values; a copy only if needed)."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ShapeError(f"channels-last needs a 4-D tensor [B, C, H, W], got {shape}")
    return x.contiguous(memory_format=torch.channels_last)


__all__ = [
    "CHANNELS_LAST_MIN_CONVS", "CompileFallbackWarning", "as_channels_last", "compile_module", "enable_tf32",
    "use_channels_last",
]
