"""Counter-based seeding: the random numbers of a training step are a function of (seed, rank, step).

Every optimizer step reseeds the trainer's noise generator (noise levels, ε, CFG label drops)
and torch's global generators (dropout) with ``step_seed(seed, rank, step)``. So

* a resumed run draws exactly what the uninterrupted run drew, from the step counter alone —
  no generator state has to be saved, and a checkpoint resumes on any number of ranks;
* every rank draws its own stream (the rank is mixed in), so the N shards of a global batch
  get independent noise — N copies of one stream would correlate the ranks' gradients.

The mixing is SplitMix64's finaliser (Steele et al. 2014), applied to each of the three inputs
in turn, so nearby (seed, rank, step) triples give unrelated 63-bit seeds.
"""

from __future__ import annotations

_MASK = (1 << 64) - 1


def _mix(z: int) -> int:
    """SplitMix64's output function: a bijection of 64-bit integers with good avalanche."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
    return z ^ (z >> 31)


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of optimizer step ``step`` on rank ``rank`` of a run seeded with ``seed`` (< 2⁶³)."""
    if min(seed, rank, step) < 0:
        raise ValueError(f"seed, rank and step must be ≥ 0, got {seed}, {rank}, {step}")
    return _mix(_mix(_mix(seed) ^ rank) ^ step) >> 1
