"""Diffusers converters: how one diffusers model class becomes a diffkit component.

A converter is a registry kind (``"converter"``, hook ``diffkit_register_converters``), so a
plugin adds an architecture the way it adds a sampler. The registered object is a
:class:`DiffusersConverter`: the diffusers class names it reads (``config.json``'s
``_class_name``), the diffkit component it builds (kind and registered name), and two
functions that are all an architecture has to write:

    config_from_diffusers(config_dict, **overrides) -> config   an attrs config with ``to_dict``;
                                                                unsupported settings are named
    convert_state_dict(state_dict, config) -> weights           diffusers keys → diffkit keys;
                                                                checks every key and shape

The rest — taking a diffusers model or a (config, state dict) pair, building the module and
loading the weights, reading a saved folder — is the one generic body below, shared by every
architecture. ``diffkit.load_pretrained`` finds the converter of a folder's ``_class_name``
through the registry (:func:`converter_for`). The helpers at the end are the steps those two
functions share across architectures: reading a config over its class's defaults, naming every
unsupported setting in one error, and stacking diffusers tensors into fused diffkit ones.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from diffkit import registry
from diffkit.errors import ConfigError
from diffkit.io.state_dicts import check_state_dict
from diffkit.io.weights import read_diffusers_folder


@attrs.frozen
class DiffusersConverter:
    """One diffusers architecture → one diffkit component (see the module docstring).

    Calling it converts: ``converter(diffusers_model)`` or ``converter(config_dict, state_dict)``.
    """

    diffusers_classes: tuple[str, ...]
    """The ``_class_name`` values this converter reads (the first is the canonical one)."""
    kind: str
    """The registry kind of what it builds: ``"backbone"``, ``"autoencoder"``, …"""
    name: str
    """The registered name of what it builds (``registry.build(kind, name, **config.to_dict())``)."""
    config_from_diffusers: Callable[..., Any]
    convert_state_dict: Callable[[Mapping[str, torch.Tensor], Any], dict[str, torch.Tensor]]
    subfolder: str
    """Where a diffusers pipeline folder keeps this model (``"unet"``, ``"vae"``, ``"transformer"``)."""

    def __call__(
        self, model_or_config: Any, state_dict: Mapping[str, torch.Tensor] | None = None, **overrides: Any
    ) -> nn.Module:
        """The diffkit module holding the weights of a diffusers model, float32 on the CPU, in eval mode.

        Either ``converter(diffusers_model)`` (a diffusers ``ModelMixin`` instance) or
        ``converter(config_dict, state_dict)``; ``overrides`` go to ``config_from_diffusers``.
        """
        if state_dict is None:
            if not hasattr(model_or_config, "state_dict") or not hasattr(model_or_config, "config"):
                raise TypeError("pass a diffusers model, or a config dict and a state dict")
            config_dict = {"_class_name": type(model_or_config).__name__, **dict(model_or_config.config)}
            state_dict = model_or_config.state_dict()
        else:
            config_dict = model_or_config
        config = self.config_from_diffusers(config_dict, **overrides)
        weights = self.convert_state_dict(state_dict, config)
        module = registry.build(self.kind, self.name, **config.to_dict())
        module.load_state_dict({key: value.float() for key, value in weights.items()}, strict=True)
        return module.eval()

    def load(self, path: str | Path, **overrides: Any) -> nn.Module:
        """The diffkit module from a saved diffusers model folder (``config.json`` + safetensors).

        ``path`` is the model folder or a pipeline folder holding it as :attr:`subfolder`.
        Weights are read exactly as ``diffkit.load_pretrained`` reads them (safetensors,
        sharded too; no pickle).
        """
        config_dict, state_dict = read_diffusers_folder(path, self.subfolder)
        return self(config_dict, state_dict, **overrides)


class _ConverterTable(Mapping[str, DiffusersConverter]):
    """A read-only live view: diffusers ``_class_name`` → the registered converter that reads it.

    Built once per registry host (a loaded host's entries never change; ``registry.reset``
    installs a new host, and the table follows it), so lookups cost a dict access and a
    conflict is warned about once.
    """

    def __init__(self) -> None:
        self._host: registry.PluginHost | None = None
        self._cached: dict[str, DiffusersConverter] = {}

    def _table(self) -> dict[str, DiffusersConverter]:
        host = registry.default_host()
        if host is not self._host:
            self._cached, self._host = self._build(), host
        return self._cached

    def _build(self) -> dict[str, DiffusersConverter]:
        claims: dict[str, list[registry.Entry]] = {}
        for name in registry.names("converter"):
            entry = registry.get_entry("converter", name)
            if not isinstance(entry.obj, DiffusersConverter):  # a plugin's mistake must not break loading
                warnings.warn(
                    f"converter {name!r} of {entry.origin.describe()} is a {type(entry.obj).__name__}, not a "
                    "diffkit.io.converters.DiffusersConverter; it is ignored",
                    registry.PluginWarning,
                    stacklevel=4,
                )
                continue
            for class_name in entry.obj.diffusers_classes:
                claims.setdefault(class_name, []).append(entry)
        table: dict[str, DiffusersConverter] = {}
        for class_name, entries in claims.items():
            builtin = [entry for entry in entries if entry.origin.builtin]
            if len(entries) == 1 or builtin:
                table[class_name] = (builtin or entries)[0].obj
            if len(entries) > 1:  # no silent winner: a built-in keeps its class, rival plugins lose it
                others = ", ".join(f"{e.name!r} of {e.origin.describe()}" for e in entries if not e.origin.builtin)
                outcome = "the built-in converter is used" if builtin else "neither is used"
                warnings.warn(
                    f"diffusers class {class_name!r} is claimed by several converters ({others}); {outcome}",
                    registry.PluginWarning,
                    stacklevel=4,
                )
        return table

    def __getitem__(self, class_name: str) -> DiffusersConverter:
        return self._table()[class_name]

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._table()))

    def __len__(self) -> int:
        return len(self._table())


DIFFUSERS_FORMATS: Mapping[str, DiffusersConverter] = _ConverterTable()
"""Every diffusers class a registered converter reads: ``_class_name`` → converter."""


def converter_for(class_name: str) -> DiffusersConverter | None:
    """The registered converter for a diffusers ``_class_name``, or None."""
    return DIFFUSERS_FORMATS.get(class_name)


# -- steps shared by the architectures' config_from_diffusers / convert_state_dict --------------


def diffusers_settings(
    config: Mapping[str, Any],
    defaults: Mapping[str, Mapping[str, Any]],
    *,
    what: str,
    expected: str = "",
    known: Iterable[str] = (),
) -> tuple[str, dict[str, Any]]:
    """(``_class_name``, settings) of a diffusers config dict: its keys over its class's defaults.

    ``defaults`` maps each accepted class name to diffusers' defaults for it; a config naming no
    class is of the first. Keys starting with ``_`` are metadata and dropped. Raises
    :class:`ConfigError` for another class ("not a diffusers {what} config: _class_name is …"
    then ``expected``) and for keys that are neither defaulted nor ``known``.
    """
    class_name = config.get("_class_name", next(iter(defaults)))
    if class_name not in tuple(defaults):
        raise ConfigError(f"not a diffusers {what} config: _class_name is {class_name!r}{expected}")
    settings = {**defaults[class_name], **{k: v for k, v in config.items() if not k.startswith("_")}}
    unknown = sorted(set(settings) - set(defaults[class_name]) - set(known))
    if unknown:
        raise ConfigError(f"unknown keys in the diffusers {class_name} config: {', '.join(unknown)}")
    return class_name, settings


def unmet(
    settings: Mapping[str, Any],
    required: Mapping[str, Any],
    needs: str,
    fits: Callable[[Any, Any], bool] = lambda value, wanted: value == wanted,
) -> list[str]:
    """``"key=value (<needs> wanted)"`` for every required setting present with a value that does not fit."""
    return [
        f"{key}={settings[key]!r} ({needs} {wanted!r})"
        for key, wanted in required.items()
        if key in settings and not fits(settings[key], wanted)
    ]


def refuse(wrong: list[str], what: str) -> None:
    """One :class:`ConfigError` naming every unsupported setting in ``wrong``; nothing if it is empty."""
    if wrong:
        raise ConfigError(f"this diffusers config is not a {what} that diffkit can load: " + "; ".join(wrong))


def describe(config: Any, name: str, fields: Iterable[str]) -> str:
    """``name(field=value, …)``: the settings of ``config`` a weights-mismatch message names."""
    return f"{name}(" + ", ".join(f"{field}={getattr(config, field)}" for field in fields) + ")"


def meta_shapes(module: Callable[[Any], nn.Module], config: Any) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of ``module(config)``, with its shape."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        return {key: tuple(value.shape) for key, value in module(config).state_dict().items()}


Plan = Mapping[str, tuple[str, ...]]
"""diffkit key → the diffusers keys it is made of (several are stacked along dim 0: fused q, k, v)."""


def stacked_shapes(plan: Plan, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """diffusers key → shape: a diffkit key of shape (n, *rest) made of m keys has each (n / m, *rest)."""
    expected: dict[str, tuple[int, ...]] = {}
    for key, sources in plan.items():
        first, *rest = shapes[key]
        for source in sources:
            expected[source] = (first // len(sources), *rest)
    return expected


def remap(
    module: Callable[[Any], nn.Module], config: Any, sources: Callable[[str], tuple[str, ...]]
) -> tuple[Plan, dict[str, tuple[int, ...]]]:
    """(plan, expected diffusers shapes) of ``module(config)``: each diffkit key is made of ``sources(key)``."""
    shapes = meta_shapes(module, config)
    plan = {key: sources(key) for key in shapes}
    return plan, stacked_shapes(plan, shapes)


def stack_weights(
    state_dict: Mapping[str, torch.Tensor], plan: Plan, expected: Mapping[str, tuple[int, ...]], *, what: str
) -> dict[str, torch.Tensor]:
    """diffkit weights from diffusers ones: each diffkit key's sources concatenated along dim 0.

    First checks ``state_dict`` against ``expected`` (one :class:`CheckpointError`, opening
    with ``what``, lists every missing, unexpected and mis-shaped key).
    """
    check_state_dict(state_dict, expected, what=what)
    return {
        key: torch.cat([state_dict[s] for s in sources]) if len(sources) > 1 else state_dict[sources[0]]
        for key, sources in plan.items()
    }
