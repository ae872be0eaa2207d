"""Deprecated (diffkit 0.1): moved to :mod:`diffkit.io.imaging`."""

from diffkit.moved import moved_names

__getattr__ = moved_names(__name__, "diffkit.io.imaging")
