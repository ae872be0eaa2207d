"""What every conditioner shares: the interface, CFG's condition drop, config checks.

A conditioner is an ``nn.Module`` (see the package docstring for the contract). This module
holds the base class with the drop rule of classifier-free guidance training (Ho & Salimans
2022, §3.2: the condition is replaced by the null condition ∅ with probability p_uncond) and
the validators and registry-signature helper the conditioner configs use.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Sequence
from typing import Any, ClassVar

import attrs
import torch
from torch import nn

from diffkit.errors import ConfigError, ShapeError
from diffkit.models.conditioners.record import Conditioning

# The field validators conditioner configs use live in diffkit.validators; these names stay
# importable from here for plugins written against diffkit 0.1 (deprecated, one release).
from diffkit.validators import int_at_least, is_integer, is_real, positive_real  # noqa: F401
from diffkit.validators import probability as drop_probability  # noqa: F401


def config_signature(config_cls: type) -> inspect.Signature:
    """A keyword-only signature with the fields of an attrs config, for a registry build function.

    ``diffkit.build("conditioner", name, **config)`` reads it to name the valid options when
    one is misspelt.
    """
    params = [
        inspect.Parameter(
            f.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=inspect.Parameter.empty if f.default is attrs.NOTHING else f.default,
        )
        for f in attrs.fields(config_cls)
    ]
    return inspect.Signature(params)


# -- the base class ---------------------------------------------------------------------------


class Conditioner(nn.Module, abc.ABC):
    """Base class of the conditioners: user input → :class:`~diffkit.models.conditioners.Conditioning`.

    Subclasses set :attr:`config` (a frozen attrs config with ``to_dict`` and a ``drop_prob``
    field) and implement :meth:`null`, :meth:`batch_size_of` and either :meth:`prepare` and
    :meth:`apply_drop` (the steps of the base :meth:`forward`) or :meth:`forward` itself, drawing
    their drop decisions with :meth:`drop_mask`.
    """

    config: Any

    config_class: ClassVar[type | None] = None
    """The attrs config class the conditioner takes; another object is refused with its name."""

    inputs: ClassVar[str | None] = None
    """What a user passes as ``cond``, in words: ``"class labels"``, ``"text"``, ``"images"``,
    ``"timesteps"``; front ends (``diffkit sample``) use it to refuse ``--prompt`` for a
    class-conditioned pipeline before any work. ``None``: not declared (nothing is refused)."""

    def __init__(self, config: Any) -> None:
        if self.config_class is not None and not isinstance(config, self.config_class):
            raise ConfigError(
                f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}"
            )
        super().__init__()
        self.config = config

    @property
    def drop_prob(self) -> float:
        """p_uncond: the probability, in training mode, of replacing a sample by the null condition."""
        return float(self.config.drop_prob)

    def forward(
        self,
        inputs: Any,
        *,
        force_drop: bool | torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Conditioning:
        """The record of ``inputs``, with dropped samples replaced by the null condition.

        ``batch = prepare(inputs, generator)``; the drop mask [B] (B = ``len(batch)``) is drawn
        on the batch's device (a tensor batch) or the module's; ``apply_drop(batch, drop)``.
        """
        batch = self.prepare(inputs, generator)
        device = batch.device if isinstance(batch, torch.Tensor) else self.module_device()
        drop = self.drop_mask(len(batch), force_drop=force_drop, generator=generator, device=device)
        return self.apply_drop(batch, drop)

    def prepare(self, inputs: Any, generator: torch.Generator | None) -> Any:
        """``inputs`` checked, as the batch (a tensor [B, …] or a sequence of B items) of :meth:`apply_drop`."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward, or prepare and apply_drop")

    def apply_drop(self, batch: Any, drop: torch.Tensor) -> Conditioning:
        """The record of ``batch``, with the samples marked in ``drop`` (bool [B]) the null condition."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward, or prepare and apply_drop")

    @abc.abstractmethod
    def null(self, batch_size: int, device: torch.device | str | None = None) -> Conditioning:
        """The unconditional record ∅ for ``batch_size`` samples."""

    @abc.abstractmethod
    def batch_size_of(self, inputs: Any) -> int:
        """B, the number of samples in ``inputs``."""

    def for_image_size(self, height: int, width: int) -> Conditioner:
        """The conditioner for images of ``height`` × ``width`` pixels (``Pipeline.sample(height=, width=)``).

        Most conditionings do not depend on the image size: this returns ``self``. One that
        encodes the size (SDXL's time ids) returns a view of itself for that size, sharing its
        modules.
        """
        return self

    def module_device(self) -> torch.device:
        """Where the conditioner's parameters live (the CPU for one without parameters)."""
        for tensor in self.parameters():
            return tensor.device
        return torch.device("cpu")

    def drop_mask(
        self,
        batch_size: int,
        *,
        force_drop: bool | torch.Tensor | None,
        generator: torch.Generator | None,
        device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """bool [B]: which samples get the null condition.

        In training mode (``self.training``) with ``drop_prob`` p > 0, sample i is dropped when
        u_i < p, u_i ~ U[0, 1) drawn from ``generator`` (on the generator's device; the global
        CPU generator when None) — B draws per call, whatever ``force_drop`` says, so a seeded
        run stays reproducible. ``force_drop`` (True/False, or a bool tensor [B]) adds samples
        that are always dropped. In eval mode only forced samples are dropped.
        """
        device = torch.device("cpu") if device is None else torch.device(device)
        drop = _forced(force_drop, batch_size, device)
        if self.training and self.drop_prob > 0:
            source = generator.device if generator is not None else torch.device("cpu")
            u = torch.rand(batch_size, generator=generator, device=source)  # u_i ~ U[0, 1), [B]
            drop = drop | (u < self.drop_prob).to(device)
        return drop

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.config.to_dict().items())


def _forced(force_drop: bool | torch.Tensor | None, batch_size: int, device: torch.device) -> torch.Tensor:
    """``force_drop`` as a bool tensor [B] on ``device``."""
    if force_drop is None or force_drop is False:
        return torch.zeros(batch_size, dtype=torch.bool, device=device)
    if force_drop is True:
        return torch.ones(batch_size, dtype=torch.bool, device=device)
    if isinstance(force_drop, torch.Tensor):
        if force_drop.dtype != torch.bool:
            raise ShapeError(f"force_drop must be a bool tensor, got dtype {force_drop.dtype}")
        if force_drop.ndim == 0:
            return force_drop.to(device).expand(batch_size)
        if force_drop.shape != (batch_size,):
            raise ShapeError(f"force_drop must have shape [B] = [{batch_size}], got {tuple(force_drop.shape)}")
        return force_drop.to(device)
    raise ConfigError(f"force_drop must be None, True, False or a bool tensor [B], got {type(force_drop).__name__}")


def check_batch_list(inputs: Any, what: str) -> Sequence[Any]:
    """``inputs`` as a sequence (a list, tuple, …); a bare string or non-sequence is an error."""
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, Sequence):
        raise ConfigError(f"{what} must be a sequence with one entry per sample, got {type(inputs).__name__}")
    return inputs


def check_batch_numbers(
    inputs: Any, what: str, dtype: torch.dtype, device: torch.device | str | None = None
) -> torch.Tensor:
    """``inputs`` (a tensor, a numpy array or a sequence of numbers) as a tensor [B], checked.

    An integer ``dtype`` takes integers, a floating one real numbers; a sequence becomes a
    ``dtype`` tensor on ``device``, a tensor or array keeps its (checked) dtype and device.
    """
    integer = not dtype.is_floating_point
    if isinstance(inputs, torch.Tensor):
        values = inputs
    elif hasattr(inputs, "__array__"):  # a numpy array
        values = torch.as_tensor(inputs)
    else:
        items = check_batch_list(inputs, what)
        for item in items:
            if not (is_integer(item) if integer else is_real(item)):
                raise ConfigError(f"{what} must be {'integers' if integer else 'real numbers'}, got {item!r}")
        values = torch.tensor([int(v) if integer else float(v) for v in items], dtype=dtype, device=device)
    if values.dtype.is_complex or values.dtype == torch.bool or (integer and values.dtype.is_floating_point):
        raise ShapeError(f"{what} must be {'an integer' if integer else 'a real'} tensor, got dtype {values.dtype}")
    if values.ndim != 1:
        raise ShapeError(f"{what} must have shape [B], got {tuple(values.shape)}")
    return values
