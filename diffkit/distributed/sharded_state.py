"""Reading and writing the state of an FSDP-sharded run with ``torch.distributed.checkpoint``.

DCP writes each rank's slices of the model, EMA and optimizer state in parallel, plus a
metadata file with the global shape and offsets of every slice. Loading asks for the slices
the *current* layout needs, so a checkpoint written by N ranks loads on M ranks (resharding),
or into an unsharded model. The state dicts are the fully-qualified-name ones of
``torch.distributed.checkpoint.state_dict`` (``get_model_state_dict`` /
``get_optimizer_state_dict``), which are the same whether a module is sharded or not.

Every function here is a collective: all ranks call it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from diffkit.errors import CheckpointError


def save_sharded(folder: Path, *, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Write the model, EMA and optimizer state of every rank into the DCP folder ``folder``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    state = {
        "model": get_model_state_dict(model),
        "ema": get_model_state_dict(ema),
        "optimizer": get_optimizer_state_dict(model, optimizer),
    }
    dcp.save(state, checkpoint_id=str(folder))


def load_sharded(folder: Path, *, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Fill model, EMA and optimizer from a DCP folder, re-slicing for this run's layout."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    state = {
        "model": get_model_state_dict(model),
        "ema": get_model_state_dict(ema),
        "optimizer": get_optimizer_state_dict(model, optimizer),
    }
    try:
        dcp.load(state, checkpoint_id=str(folder))
    except Exception as exc:  # DCP wraps per-rank failures in CheckpointException
        raise CheckpointError(f"the sharded checkpoint {folder} does not fit this model: {exc}") from exc
    set_model_state_dict(model, state["model"])
    set_model_state_dict(ema, state["ema"])
    set_optimizer_state_dict(model, optimizer, state["optimizer"])


def gather_full_state(module: nn.Module, *, main: bool) -> dict[str, Any] | None:
    """The full (unsharded) state dict of a sharded module, on the CPU of rank 0; None elsewhere."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return state if main else None
