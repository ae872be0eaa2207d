"""The conditioning record every conditioner returns and every backbone reads.

:class:`Conditioning` holds up to five batched tensors, all sharing one batch size B:

============  ====================  =======================================================
field         shape, dtype          what reads it
============  ====================  =======================================================
``labels``    [B] int64             the class table of ``unet``/``dit`` (``num_classes`` is
                                    the null class of classifier-free guidance)
``vector``    [B, D] float          added to the time embedding (backbones with
                                    ``vector_dim = D``)
``context``   [B, M, d_ctx] float   the cross-attention of ``latent_unet``
``mask``      [B, M] bool           which context tokens to attend to (True = attend);
                                    only together with ``context``
``concat``    [B, C_c, H, W] float  concatenated to x along channels before the first
                                    convolution (``unet``, ``latent_unet``)
============  ====================  =======================================================

A field left ``None`` is absent. Records are immutable; :meth:`Conditioning.to`,
:meth:`~Conditioning.select` and :meth:`~Conditioning.where` return new ones. Equality is
identity (tensors have no single truth value); compare fields with ``torch.equal``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import torch

from diffkit.errors import ConfigError, ShapeError
from diffkit.validators import is_integer

FIELDS: tuple[str, ...] = ("labels", "vector", "context", "mask", "concat")

# field → (number of dimensions, the shape in words, dtype check, what the dtype must be)
_LAYOUT: dict[str, tuple[int, str, Callable[[torch.dtype], bool], str]] = {
    "labels": (1, "[B]", lambda d: not d.is_floating_point and not d.is_complex and d != torch.bool, "an integer"),
    "vector": (2, "[B, D]", lambda d: d.is_floating_point, "a floating-point"),
    "context": (3, "[B, M, d_ctx]", lambda d: d.is_floating_point, "a floating-point"),
    "mask": (2, "[B, M]", lambda d: d == torch.bool, "a bool"),
    "concat": (4, "[B, C, H, W]", lambda d: d.is_floating_point, "a floating-point"),
}


@attrs.frozen(kw_only=True, eq=False)
class Conditioning:
    """A batch of conditioning: class labels, a vector, a context (+ mask), concat channels.

    Every field is optional (None = absent); the tensors present must agree on the batch size
    B and lie on one device. ``labels`` of any integer dtype are stored as int64. The values
    of ``labels`` are not range-checked here (that would need a device→host copy); the
    class-label conditioner checks user input, and the backbone's table rejects bad indices.
    """

    labels: torch.Tensor | None = None
    """Class labels [B], int64 (the null class ``num_classes`` allowed)."""
    vector: torch.Tensor | None = None
    """[B, D] float, added to the backbone's time embedding through its ``vector_dim`` projection."""
    context: torch.Tensor | None = None
    """[B, M, d_ctx] float, the tokens cross-attention attends to."""
    mask: torch.Tensor | None = None
    """bool [B, M], True = attend to the context token; None = attend to all. Needs ``context``."""
    concat: torch.Tensor | None = None
    """[B, C_c, H, W] float, image channels concatenated to x (H, W those of x)."""

    def __attrs_post_init__(self) -> None:
        batch, device = None, None
        for name in FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            ndim, words, dtype_ok, dtype_words = _LAYOUT[name]
            if not isinstance(value, torch.Tensor):
                raise ShapeError(f"Conditioning.{name} must be a tensor {words} or None, got {type(value).__name__}")
            if value.ndim != ndim:
                raise ShapeError(f"Conditioning.{name} must have shape {words}, got {tuple(value.shape)}")
            if not dtype_ok(value.dtype):
                raise ShapeError(f"Conditioning.{name} must be {dtype_words} tensor, got dtype {value.dtype}")
            if batch is None:
                batch, device, first = value.shape[0], value.device, name
            elif value.shape[0] != batch:
                raise ShapeError(
                    f"Conditioning fields disagree on the batch size: {first} has {batch}, {name} has {value.shape[0]}"
                )
            elif value.device != device:
                raise ShapeError(
                    f"Conditioning fields lie on different devices: {first} on {device}, {name} on {value.device}"
                )
        if self.labels is not None and self.labels.dtype != torch.long:
            object.__setattr__(self, "labels", self.labels.long())  # frozen: set once, in the constructor
        if self.mask is not None:
            if self.context is None:
                raise ShapeError("Conditioning.mask was given without a context")
            if self.mask.shape != self.context.shape[:2]:
                raise ShapeError(
                    f"Conditioning.mask must have shape [B, M] = {tuple(self.context.shape[:2])} (the context's), "
                    f"got {tuple(self.mask.shape)}"
                )

    # -- reading ----------------------------------------------------------------------------

    @property
    def batch_size(self) -> int | None:
        """B, the leading size shared by the fields; None for a record with no field."""
        for name in FIELDS:
            value = getattr(self, name)
            if value is not None:
                return int(value.shape[0])
        return None

    @property
    def device(self) -> torch.device | None:
        """The device of the fields; None for a record with no field."""
        for name in FIELDS:
            value = getattr(self, name)
            if value is not None:
                return value.device
        return None

    def present(self) -> tuple[str, ...]:
        """The names of the fields that are not None, in :data:`FIELDS` order."""
        return tuple(name for name in FIELDS if getattr(self, name) is not None)

    def as_dict(self) -> dict[str, torch.Tensor]:
        """The present fields as a dict (name → tensor)."""
        return {name: getattr(self, name) for name in self.present()}

    # -- new records --------------------------------------------------------------------------

    def replace(self, **changes: torch.Tensor | None) -> Conditioning:
        """A copy with some fields changed (validated again); unknown names are errors."""
        unknown = sorted(set(changes) - set(FIELDS))
        if unknown:
            raise ConfigError(f"Conditioning has no field {unknown[0]!r} (fields: {', '.join(FIELDS)})")
        return attrs.evolve(self, **changes)

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None, *, non_blocking: bool = False
    ) -> Conditioning:
        """The record on ``device``; ``dtype`` (a floating-point dtype) converts the float fields only.

        ``non_blocking``: asynchronous host→device copies (as ``Tensor.to``).
        """
        if dtype is not None and not dtype.is_floating_point:
            raise ConfigError(
                f"Conditioning.to converts the float fields only; dtype must be floating-point, got {dtype}"
            )
        moved = {}
        for name, value in self.as_dict().items():
            float_field = value.dtype.is_floating_point
            moved[name] = value.to(device=device, dtype=dtype if float_field else None, non_blocking=non_blocking)
        return Conditioning(**moved)

    def select(self, index: int | slice | torch.Tensor | list[int]) -> Conditioning:
        """The samples ``index`` picks along the batch dimension (an int keeps a batch of one).

        ``index``: an int, a slice, a list of ints, an integer tensor of indices or a bool
        tensor [B] — anything tensor indexing along dim 0 accepts.
        """
        if isinstance(index, int) and not isinstance(index, bool):
            batch = self.batch_size
            if batch is not None and not -batch <= index < batch:
                raise ShapeError(f"sample index {index} is out of range for a batch of {batch}")
            index = slice(index, index + 1 if index != -1 else None)
        return Conditioning(**{name: value[index] for name, value in self.as_dict().items()})

    def expand(self, batch_size: int) -> Conditioning:
        """A record of batch size 1 repeated ``batch_size`` times (views: nothing is copied)."""
        if self.batch_size not in (None, 1):
            raise ShapeError(f"only a record of batch size 1 can be expanded, this one has {self.batch_size}")
        return Conditioning(**{k: v.expand(batch_size, *v.shape[1:]) for k, v in self.as_dict().items()})

    def index(self, i: int) -> Conditioning:
        """Sample ``i`` as a record of batch size 1."""
        if not is_integer(i):
            raise ConfigError(f"Conditioning.index takes an int, got {type(i).__name__}; use select() for many")
        return self.select(i)

    def where(self, replace: torch.Tensor, other: Conditioning) -> Conditioning:
        """Per sample, ``other``'s fields where ``replace`` [B] is True, this record's elsewhere.

        Both records must carry the same fields with the same per-sample shapes; ``other`` may
        have batch size 1 (broadcast), as a null record usually has. Used for CFG's condition
        drop: ``record.where(drop, conditioner.null(1))``.
        """
        if replace.dtype != torch.bool or replace.shape != (self.batch_size,):
            raise ShapeError(
                f"where needs a bool tensor of shape [B] = [{self.batch_size}], "
                f"got {replace.dtype} {tuple(replace.shape)}"
            )
        if self.present() != other.present():
            raise ConfigError(
                f"where needs records with the same fields, got {list(self.present())} and {list(other.present())}"
            )
        out: dict[str, Any] = {}
        for name, value in self.as_dict().items():
            alt = getattr(other, name)
            if alt.shape[1:] != value.shape[1:] or alt.shape[0] not in (1, value.shape[0]):
                raise ShapeError(
                    f"where: field {name} has shape {tuple(value.shape)} here and {tuple(alt.shape)} in the other "
                    "record (it needs the same per-sample shape and a batch of B or 1)"
                )
            pick = replace.to(value.device).reshape(-1, *([1] * (value.ndim - 1)))  # (B, 1, …)
            out[name] = torch.where(pick, alt.to(device=value.device, dtype=value.dtype), value)
        return Conditioning(**out)

    def __repr__(self) -> str:
        parts = [f"{name}={_describe(value)}" for name, value in self.as_dict().items()]
        return f"Conditioning({', '.join(parts)})"


def _describe(value: torch.Tensor) -> str:
    return f"<{str(value.dtype).removeprefix('torch.')} {list(value.shape)} on {value.device}>"
