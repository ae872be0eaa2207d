"""Training data held in memory, and the order its batches are drawn in.

A data set for training is anything with images and (optionally) per-image conditioning
inputs: class labels, captions, conditioning images. Small data sets (the embedded digits, a
folder of a few thousand images, pre-encoded latents) fit in memory, which makes the batch
order a pure function of (seed, position): resuming from a checkpoint needs only the position.

Order: epoch e visits the examples in ``randperm(N, seed + e)``; a batch that crosses the end
of an epoch continues with the next one, so every example is seen once per epoch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch

from diffkit.errors import ConfigError, NonFiniteError, ShapeError

_EPOCH_STRIDE = 1_000_003  # decorrelates the seeds of consecutive epochs of nearby runs


class InMemoryData:
    """Images [N, C, H, W] (float, about [−1, 1]) and optional conditioning inputs of length N.

    ``cond`` may be a tensor with a leading dimension N (labels, conditioning images) or a
    sequence of N Python objects (captions).
    """

    def __init__(self, images: torch.Tensor, cond: torch.Tensor | Sequence[Any] | None = None) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim < 2 or not images.is_floating_point():
            raise ShapeError(f"images must be a floating-point tensor [N, C, ...], got {getattr(images, 'shape', images)}")
        if len(images) == 0:
            raise ConfigError("the training data is empty")
        if cond is not None and len(cond) != len(images):
            raise ShapeError(f"{len(images)} images but {len(cond)} conditioning inputs")
        finite = torch.isfinite(images)
        if not bool(finite.all()):  # once, here: a NaN in the data would surface as a NaN loss much later
            bad = (~finite).flatten(1).any(dim=1).nonzero().flatten()
            raise NonFiniteError(
                f"the training data holds NaN or infinite values in {len(bad)} of {len(images)} images "
                f"(indices {', '.join(map(str, bad[:5].tolist()))}{', …' if len(bad) > 5 else ''}); clean or drop them"
            )
        self.images = images
        self.cond = cond

    def __len__(self) -> int:
        return len(self.images)

    def batch(self, indices: torch.Tensor) -> tuple[torch.Tensor, Any]:
        """(images [B, …], conditioning inputs for those B examples or None)."""
        images = self.images[indices]
        if self.cond is None:
            return images, None
        if isinstance(self.cond, torch.Tensor):
            return images, self.cond[indices]
        return images, [self.cond[i] for i in indices.tolist()]


def as_training_data(dataset: Any) -> InMemoryData:
    """An :class:`InMemoryData` from a data set.

    Accepts an :class:`InMemoryData`; an object with an ``images`` tensor and ``labels`` (a
    tensor) or ``captions`` (a list of strings), such as :class:`~diffkit.demos.digits.DigitsDataset`;
    or any indexable data set whose items are an image or an (image, conditioning input) pair,
    e.g. :class:`~diffkit.io.image_folder.ImageFolder` (read once).
    """
    if isinstance(dataset, InMemoryData):
        return dataset
    images = getattr(dataset, "images", None)
    if isinstance(images, torch.Tensor):
        cond = getattr(dataset, "labels", None)
        return InMemoryData(images, cond if cond is not None else getattr(dataset, "captions", None))
    if isinstance(dataset, torch.Tensor):
        return InMemoryData(dataset)
    try:
        items = [dataset[i] for i in range(len(dataset))]
    except TypeError as exc:
        raise ConfigError(f"cannot read training data from a {type(dataset).__name__}: {exc}") from exc
    if not items:
        raise ConfigError(f"the data set {type(dataset).__name__} is empty")
    if isinstance(items[0], (tuple, list)):
        conds = [item[1] for item in items]
        cond: Any = torch.as_tensor(conds) if all(isinstance(c, int) for c in conds) else conds
        return InMemoryData(torch.stack([item[0] for item in items]), cond)
    return InMemoryData(torch.stack(items))


def batch_indices(size: int, seed: int, cursor: int, batch_size: int) -> torch.Tensor:
    """The indices [batch_size] of the batch that starts at sample ``cursor`` of the stream."""
    out: list[torch.Tensor] = []
    needed = batch_size
    while needed:
        epoch, position = divmod(cursor, size)
        take = _epoch_order(size, seed, epoch)[position : position + needed]
        out.append(take)
        needed -= len(take)
        cursor += len(take)
    return torch.cat(out)


def rank_slice(indices: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous share of a global batch's indices [B] (B divisible by the world size).

    The role of a ``DistributedSampler`` with a shared seed: every rank computes the same global
    order from (seed, position), and the N slices are disjoint and together cover the batch, so
    each epoch still visits every example exactly once across the ranks. Unlike
    ``DistributedSampler`` (which strides one permutation by rank and pads the epoch), the
    global stream does not depend on N: a run on 1 process and on 8 sees the same batches,
    and a checkpoint resumes on another number of processes where the stream left off.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank must lie in 0 … world_size−1, got rank={rank}, world_size={world_size}")
    if len(indices) % world_size:
        raise ConfigError(f"a batch of {len(indices)} does not split evenly over {world_size} ranks")
    share = len(indices) // world_size
    return indices[rank * share : (rank + 1) * share]


@functools.lru_cache(maxsize=4)
def _epoch_order(size: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation [size] of one epoch, drawn once (not once per batch: a million-example
    ``randperm`` costs milliseconds of host time every step). Read-only: callers slice it."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed + _EPOCH_STRIDE * epoch))
