"""What every model configuration shares: JSON round trips and named presets.

Model configs are frozen attrs classes with validators (DESIGN.md, "Configs"); this mixin gives
them ``to_dict`` (JSON-ready: tuples become lists), a strict ``from_dict`` (an unknown key is an
error naming close matches) and ``from_preset(name, **overrides)``. A subclass names its preset
table by overriding :meth:`presets` and the noun its error messages use with ``PRESET_NOUN``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import attrs

from diffkit.errors import UnknownNameError

C = TypeVar("C", bound="ModelConfig")


class ModelConfig:
    """Mixin for frozen attrs model configs."""

    __slots__ = ()
    PRESET_NOUN: ClassVar[str] = "preset"

    @classmethod
    def presets(cls: type[C]) -> Mapping[str, C]:
        """The named presets of this config (a read-only mapping)."""
        return {}

    def to_dict(self) -> dict[str, Any]:
        """The fields as a JSON-ready dict (tuples become lists)."""
        return attrs.asdict(self)  # type: ignore[arg-type]

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any]) -> C:
        """Inverse of :meth:`to_dict`; an unknown key is an error naming close matches."""
        fields = [f.name for f in attrs.fields(cls)]  # type: ignore[arg-type]
        for key in data:
            if key not in fields:
                raise UnknownNameError(f"{cls.__name__} field", key, fields)
        return cls(**data)

    @classmethod
    def from_preset(cls: type[C], name: str, **overrides: Any) -> C:
        """The preset ``name`` with some fields changed (unknown names are errors)."""
        presets = cls.presets()
        if name not in presets:
            raise UnknownNameError(cls.PRESET_NOUN, name, presets)
        return cls.from_dict({**presets[name].to_dict(), **overrides})
