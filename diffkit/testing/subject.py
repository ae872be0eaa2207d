"""The sampler under test: a registered name or a bare function, with its options bound."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch

from diffkit import registry
from diffkit.errors import ConfigError
from diffkit.samplers.contract import SamplerFn
from diffkit.samplers.probe import accepts_keyword, is_stochastic


class SamplerSubject:
    """A sampler plus what the kit knows about it.

    Args:
        fn: the sampler function (contract in :mod:`diffkit.hookspecs`).
        label: how reports name it, e.g. ``"sampler ddim [diffkit.samplers.builtin (diffkit 0.1.0)]"``.
        options: keyword options passed on every call.
        reference: the float64 numpy twin, if one is registered.
        order: the convergence order the sampler claims (registry metadata ``order=``);
            the convergence check then requires it, not just first order.
    """

    def __init__(
        self,
        fn: SamplerFn,
        *,
        label: str,
        options: Mapping[str, Any] | None = None,
        reference: Callable[..., Any] | None = None,
        order: float | None = None,
    ) -> None:
        if order is not None and not (isinstance(order, (int, float)) and order > 0):
            raise ConfigError(f"a sampler's declared order must be a positive number, got {order!r}")
        self.fn = fn
        self.order = order
        self.label = label
        self.options = dict(options or {})
        self.reference = reference

    def __call__(self, denoiser: Callable[..., torch.Tensor], x: torch.Tensor, sigmas: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """``fn(denoiser, x, sigmas, **kwargs, **options)``."""
        return self.fn(denoiser, x, sigmas, **kwargs, **self.options)

    @functools.cached_property
    def accepts_noise_sampler(self) -> bool:
        """Whether the sampler takes ``noise_sampler=``."""
        return accepts_keyword(self.fn, "noise_sampler")

    @functools.cached_property
    def stochastic(self) -> bool:
        """True when two runs with different generators give different results
        (:func:`diffkit.samplers.probe.is_stochastic`, with this subject's options)."""
        return is_stochastic(self.fn, **self.options)

    @property
    def kind(self) -> str:
        """``"stochastic"`` or ``"deterministic"``."""
        return "stochastic" if self.stochastic else "deterministic"


def resolve_sampler(
    sampler: str | SamplerFn, options: Mapping[str, Any] | None = None, order: float | None = None
) -> SamplerSubject:
    """A :class:`SamplerSubject` from a registered name or a bare function.

    A name's options are validated against its signature (unknown keywords raise
    :class:`~diffkit.errors.UnknownNameError`) and its reference twin and declared order, if
    any, are attached; ``order`` overrides the declared one.
    """
    options = dict(options or {})
    if isinstance(sampler, str):
        entry = registry.get_entry("sampler", sampler)
        registry.build("sampler", sampler, **options)  # validates the option names
        label = f"sampler {sampler} [{entry.origin.describe()}]"
        declared = entry.metadata.get("order") if order is None else order
        return SamplerSubject(entry.obj, label=label, options=options, reference=entry.reference, order=declared)
    if not callable(sampler):
        raise TypeError(f"sampler must be a registered name or a function, got {type(sampler).__name__}")
    name = getattr(sampler, "__qualname__", None) or getattr(sampler, "__name__", None) or repr(sampler)
    return SamplerSubject(sampler, label=f"sampler {name}", options=options, order=order)
