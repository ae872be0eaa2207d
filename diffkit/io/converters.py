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
through the registry (:func:`converter_for`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import torch
from torch import nn

from diffkit import registry
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
