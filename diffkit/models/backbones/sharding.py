"""Which submodules of a backbone FSDP shards one by one (``backbone.sharding_units()``).

FSDP2 gathers a unit's weights in a hook on the unit's ``forward``, so a unit must be a module
the backbone *calls*; a container whose children are called one by one (a UNet level, whose
ResBlocks and attention blocks the UNet runs itself) must not be one. Weights outside every
unit belong to the root and are gathered once per forward.
"""

from __future__ import annotations

from torch import nn


def unet_units(model: nn.Module) -> list[nn.Module]:
    """The called blocks of a UNet with ``down``/``mid``/``up`` levels: ResBlocks, attention, resamplers."""
    units: list[nn.Module] = []
    for level in [*model.down, model.mid, *model.up]:
        units += list(level.resnets)
        units += list(getattr(level, "attentions", ()))
        for name in ("attention", "downsample", "upsample"):
            module = getattr(level, name, None)
            if isinstance(module, nn.Module):
                units.append(module)
    return units
