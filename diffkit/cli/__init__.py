"""The ``diffkit`` command (:mod:`diffkit.cli.commands`: list, check; :mod:`diffkit.cli.run`:
train, sample, demo)."""

from diffkit.cli.commands import main

__all__ = ["main"]
