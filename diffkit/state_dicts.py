"""Checking a state dict against the keys and shapes a model expects."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from diffkit.errors import CheckpointError


def check_state_dict(
    state_dict: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], *, what: str
) -> None:
    """Raise :class:`CheckpointError` listing every missing, unexpected and mis-shaped key.

    Args:
        state_dict: the weights as read (name → tensor).
        expected: the names and shapes the model needs.
        what: the opening of the message, e.g. "the diffusers DiT weights do not fit DiT-S/2".
    """
    missing = sorted(k for k in expected if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in expected)
    misshaped = sorted(
        f"{k}: {tuple(state_dict[k].shape)}, expected {tuple(shape)}"
        for k, shape in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(shape)
    )
    if missing or unexpected or misshaped:
        lines = [f"{what}:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                lines.append(f"  {len(keys)} {title} key(s):")
                lines += [f"    {k}" for k in keys]
        raise CheckpointError("\n".join(lines))
