"""What every model configuration shares: JSON round trips, named presets and the ``build_*`` plumbing.

Model configs are frozen attrs classes with validators (DESIGN.md, "Configs"); this mixin gives
them ``to_dict`` (JSON-ready: tuples become lists), a strict ``from_dict`` (an unknown key is an
error naming close matches) and ``from_preset(name, **overrides)``. A config's presets are the
``PRESETS`` table of the module that defines it (or of its nearest base class's module; a
subclass may override :meth:`presets` instead), and ``PRESET_NOUN`` is the noun its error
messages use. :meth:`~ModelConfig.build_config`, :meth:`~ModelConfig.builder_signature` and
:meth:`~ModelConfig.resolve` are what every ``build_*`` function and model constructor does.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import attrs

from diffkit.errors import ConfigError, UnknownNameError

C = TypeVar("C", bound="ModelConfig")


class ModelConfig:
    """Mixin for frozen attrs model configs."""

    __slots__ = ()
    PRESET_NOUN: ClassVar[str] = "preset"

    @classmethod
    def presets(cls: type[C]) -> Mapping[str, C]:
        """The named presets of this config (a read-only mapping): its module's ``PRESETS``."""
        for klass in cls.__mro__:
            table = getattr(sys.modules.get(klass.__module__), "PRESETS", None)
            if table is not None:
                return table
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

    @classmethod
    def build_config(cls: type[C], preset: str | None, options: Mapping[str, Any]) -> C:
        """What ``build_*(preset=..., **options)`` builds from: the preset with ``options``
        changed, or (no preset) :meth:`from_dict` of the options."""
        return cls.from_preset(preset, **options) if preset is not None else cls.from_dict(options)

    @classmethod
    def builder_signature(cls) -> inspect.Signature:
        """``(*, preset=None, field=default, ...)``: the explicit signature of a ``build_*``
        function, so that ``diffkit.build`` can name the valid options when one is misspelt."""
        return inspect.Signature(
            [inspect.Parameter("preset", inspect.Parameter.KEYWORD_ONLY, default=None)]
            + [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default) for f in attrs.fields(cls)]
        )

    @classmethod
    def resolve(cls: type[C], config: Any, owner: str) -> C:
        """``config`` for the model ``owner`` (None: the default config); not a ``cls``: ConfigError."""
        config = cls() if config is None else config
        if not isinstance(config, cls):
            raise ConfigError(f"{owner} takes a {cls.__name__}, got {type(config).__name__}")
        return config
