"""Noise samplers for SDE solvers: standard normal increments of ONE Brownian path.

A sampler that draws fresh N(0, I) noise at every step samples a different Brownian path for
every step count, so its output changes completely when N changes. Solvers of an SDE
converge *strongly* (pathwise) only if every discretization sees the same path W(t):
the noise for a step t → t' must be the increment (W(t') − W(t))/√|t' − t|. This module
provides that path without storing it: a virtual Brownian tree (Li et al. 2020, "Scalable
Gradients for Stochastic Differential Equations", §4, the Brownian-bridge bisection that
torchsde's BrownianTree implements).

The tree over [t0, t1]:

    W(t0) = 0,  W(t1) ~ N(0, t1 − t0)
    a node [a, b] with known W(a), W(b) has, at its midpoint m = (a + b)/2,
        W(m) = (W(a) + W(b))/2 + √((b − a)/4) · z_node,     z_node ~ N(0, I)

(the Brownian bridge), and z_node is drawn from a generator seeded by (seed, level, index)
alone, so W(m) is a fixed function of the seed: no state, any query order. A query t
descends from the root into the half that contains t until t is a node end or the node is
narrower than ``tol``; then W(t) is drawn from the bridge between that leaf's ends, at t
itself, so the value is exact at the query point and W(a→c) = W(a→b) + W(b→c) holds to
rounding for any a, b, c. Intervals shorter than ``tol`` (default 2⁻⁴⁰ of the range) would
share a leaf and lose their exact joint law; no σ grid comes near that.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Sequence
from typing import Union

import numpy as np
import torch

from diffkit.errors import ConfigError
from diffkit.validators import is_integer

Seed = Union[int, torch.Generator, list[Union[int, torch.Generator]], tuple[Union[int, torch.Generator], ...], None]

# entropy words that tell the three kinds of draw apart (root end, midpoint, leaf bridge)
_ROOT, _MIDPOINT, _LEAF = 0, 1, 2
_UINT64 = 2**64 - 1
DEFAULT_DEPTH = 40  # default tol = (t1 − t0)·2⁻⁴⁰


def _as_float(value: float | torch.Tensor) -> float:
    return float(value.item()) if isinstance(value, torch.Tensor) else float(value)


def _float_bits(t: float) -> int:
    """The IEEE-754 bits of t as an unsigned integer (a seed word that identifies t exactly)."""
    return struct.unpack("<Q", struct.pack("<d", t))[0]


def _seed_from(value: int | torch.Generator) -> int:
    if isinstance(value, torch.Generator):
        # one 63-bit integer drawn from the generator: the tree is then fixed by its state
        return int(torch.randint(0, 2**63 - 1, (), generator=value, device=value.device).item())
    if not is_integer(value):
        raise ConfigError(f"a Brownian tree seed must be an int or a torch.Generator, got {value!r}")
    return value & _UINT64


# SplitMix64 (Steele, Lea & Flood 2014): a 64-bit mixer; state_j = base + j·γ gives a stream
_GAMMA = 0x9E3779B97F4A7C15


def _mix64(z: np.ndarray) -> np.ndarray:
    """The SplitMix64 finalizer on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _mix64_int(words: Sequence[int]) -> int:
    """Hash a tuple of integers to one uint64 (each word folded in through the SplitMix64 mixer)."""
    h = np.array([0x243F6A8885A308D3], dtype=np.uint64)
    with np.errstate(over="ignore"):
        for word in words:
            h = _mix64(h + np.array([word & _UINT64], dtype=np.uint64) * np.uint64(_GAMMA) + np.uint64(_GAMMA))
    return int(h[0])


def _counter_normals(bases: np.ndarray, size: int) -> np.ndarray:
    """Standard normals [len(bases), size], row k a fixed function of bases[k] (counter-based).

    Uniforms u_j = top 53 bits of SplitMix64(base + (j+1)·γ); pairs become normals by
    Box–Muller: √(−2 ln u) · (cos 2πv, sin 2πv).
    """
    pairs = (size + 1) // 2
    counter = np.arange(1, 2 * pairs + 1, dtype=np.uint64) * np.uint64(_GAMMA)  # [2·pairs]
    with np.errstate(over="ignore"):
        bits = _mix64(_mix64(bases)[:, None] + counter[None, :])  # [rows, 2·pairs]
    uniform = (bits >> np.uint64(11)).astype(np.float64) * 2.0**-53  # [0, 1)
    radius = np.sqrt(-2.0 * np.log1p(-uniform[:, :pairs]))  # 1 − u ∈ (0, 1]: never log 0
    angle = 2.0 * math.pi * uniform[:, pairs:]
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)[:, :size]


class BrownianTreeNoiseSampler:
    """``noise_sampler(sigma, sigma_next)`` returning (W(t') − W(t))/√|t' − t| of one fixed Brownian path.

    Args:
        x: a tensor shaped like the samples ([B, ...]); the noise takes its shape, dtype and device.
        sigma_min, sigma_max: the σ range the path must cover (σ > 0 levels of the grid; the
            solvers never ask for noise on the final step into σ = 0).
        seed: fixes the path. An ``int`` (or a ``torch.Generator``, from which one int is drawn):
            one tree for the whole batch, noise drawn with the batch's shape. A list of ints or
            generators, one per sample: one tree per sample, so a sample's noise does not depend
            on the batch it is in. ``None``: a seed from torch's global generator (k-diffusion's
            default).
        transform: σ ↦ t, the Brownian time (monotone). Identity (t = σ, k-diffusion's default)
            unless given; ``math.log`` puts the path in log σ.
        tol: the leaf width in t (default (t1 − t0)·2⁻⁴⁰).

    The draws are made on the CPU in float64 by a counter-based generator (SplitMix64 keyed by
    (seed, node), Box–Muller), then cast to x's dtype and device: the path is the same on every
    device and dtype, and one node costs a few vector operations for the whole batch.
    """

    def __init__(
        self,
        x: torch.Tensor,
        sigma_min: float | torch.Tensor,
        sigma_max: float | torch.Tensor,
        seed: Seed = None,
        transform: Callable[[float], float] | None = None,
        *,
        tol: float | None = None,
    ) -> None:
        self._transform = transform if transform is not None else (lambda sigma: sigma)
        self._dtype, self._device = x.dtype, x.device
        lo, hi = _as_float(sigma_min), _as_float(sigma_max)
        if not (math.isfinite(lo) and math.isfinite(hi) and 0 <= lo < hi):
            raise ConfigError(f"need 0 ≤ sigma_min < sigma_max, both finite; got {lo!r}, {hi!r}")
        try:
            ends = sorted((self._transform(lo), self._transform(hi)))
        except (ValueError, OverflowError, ZeroDivisionError):  # e.g. math.log(0)
            ends = [math.nan, math.nan]
        if not all(math.isfinite(t) for t in ends) or ends[0] == ends[1]:
            raise ConfigError(f"the transform maps [sigma_min, sigma_max] = [{lo}, {hi}] to {ends}, "
                              "which is not a finite interval of positive length")
        self._t0, self._t1 = ends
        span = self._t1 - self._t0
        self._tol = span * 2.0**-DEFAULT_DEPTH if tol is None else float(tol)
        if not (math.isfinite(self._tol) and self._tol > 0):
            raise ConfigError(f"tol must be a positive number, got {tol!r}")

        # one tree for the batch (single seed) or one per sample (a list of seeds)
        if seed is None:
            seed = int(torch.randint(0, 2**63 - 1, ()).item())
        if not isinstance(seed, (list, tuple)):
            self._seeds = [_seed_from(seed)]
            self._row_shape, self._batched = tuple(x.shape), False
        else:
            seeds = list(seed)
            if len(seeds) != x.shape[0]:
                raise ConfigError(f"got {len(seeds)} seeds for a batch of {x.shape[0]}; pass one per sample")
            self._seeds = [_seed_from(s) for s in seeds]
            self._row_shape, self._batched = tuple(x.shape[1:]), True

        self._seed_hashes = np.array([_mix64_int((s,)) for s in self._seeds], dtype=np.uint64)  # [trees]
        self._row_size = math.prod(self._row_shape)

        # W at the root's ends (float64 numpy, [x's shape]); the last descent's midpoints; recent points
        self._w_start = np.zeros(self._shape())
        self._w_end = math.sqrt(span) * self._normal(_ROOT)
        self._path: dict[int, tuple[int, np.ndarray]] = {}  # level -> (index, W(midpoint))
        self._points: dict[float, np.ndarray] = {}

    def __call__(self, sigma: float | torch.Tensor, sigma_next: float | torch.Tensor) -> torch.Tensor:
        """Standard normal noise shaped like x: the path's increment from σ to σ', normalized."""
        t, t_next = self._time(sigma), self._time(sigma_next)
        if t == t_next:
            raise ConfigError(f"sigma and sigma_next map to the same Brownian time {t} (need an interval)")
        w_t = self._w(t)  # usually the previous step's W(t'), kept in the point cache
        increment = self._w(t_next) - w_t  # W(t') − W(t) ~ N(0, |t' − t|), float64 [x's shape]
        noise = torch.from_numpy(increment / math.sqrt(abs(t_next - t)))
        return noise.to(device=self._device, dtype=self._dtype)

    # -- the tree --------------------------------------------------------------------------

    def _shape(self) -> tuple[int, ...]:
        return (len(self._seeds), *self._row_shape) if self._batched else self._row_shape

    def _normal(self, *key: int) -> np.ndarray:
        """N(0, I) float64 [x's shape], a fixed function of (seed, key): one row per tree."""
        node = _mix64_int(key)
        return _counter_normals(self._seed_hashes ^ np.uint64(node), self._row_size).reshape(self._shape())

    def _time(self, sigma: float | torch.Tensor) -> float:
        s = _as_float(sigma)
        try:
            t = self._transform(s)
        except (ValueError, OverflowError, ZeroDivisionError):  # e.g. math.log(0)
            t = math.nan
        # float32 σ grids (as k-diffusion passes them) miss the float64 ends by a rounding: clamp those
        lo = self._t0 - 1e-6 * abs(self._t0) - self._tol
        hi = self._t1 + 1e-6 * abs(self._t1) + self._tol
        if not (math.isfinite(t) and lo <= t <= hi):
            raise ConfigError(f"sigma = {s} (t = {t}) lies outside the Brownian tree's range "
                              f"[{self._t0}, {self._t1}]; build the sampler with this σ range")
        return min(max(t, self._t0), self._t1)

    def _w(self, t: float) -> np.ndarray:
        """W(t), float64 [x's shape]: bisect to the leaf that holds t, then the bridge at t."""
        if t in self._points:
            return self._points[t]
        a, b, w_a, w_b = self._t0, self._t1, self._w_start, self._w_end
        level, index = 0, 0
        while True:
            if t == a:
                w = w_a
                break
            if t == b:
                w = w_b
                break
            if b - a <= self._tol:
                # Brownian bridge inside the leaf: mean linear in t, variance (t−a)(b−t)/(b−a)
                frac = (t - a) / (b - a)
                std = math.sqrt((t - a) * (b - t) / (b - a))
                w = w_a + frac * (w_b - w_a) + std * self._normal(_LEAF, _float_bits(t))
                break
            m = 0.5 * (a + b)
            w_m = self._midpoint(level, index, w_a, w_b, b - a)
            if t < m:
                b, w_b, index = m, w_m, 2 * index
            else:
                a, w_a, index = m, w_m, 2 * index + 1
            level += 1
        # keep the last few points: a solver's next step starts where this one ended
        self._points = {**dict(list(self._points.items())[-3:]), t: w}
        return w

    def _midpoint(self, level: int, index: int, w_a: np.ndarray, w_b: np.ndarray, width: float) -> np.ndarray:
        """W at the midpoint of node (level, index): (W(a) + W(b))/2 + √(width/4)·z (the bridge)."""
        cached = self._path.get(level)
        if cached is not None and cached[0] == index:
            return cached[1]
        w_m = 0.5 * (w_a + w_b) + math.sqrt(width / 4) * self._normal(_MIDPOINT, level, index)
        self._path[level] = (index, w_m)
        return w_m


def brownian_noise_sampler(
    x: torch.Tensor,
    sigmas: torch.Tensor | Sequence[float],
    seed: Seed = None,
    transform: Callable[[float], float] | None = None,
) -> BrownianTreeNoiseSampler:
    """A :class:`BrownianTreeNoiseSampler` covering the positive σ of a grid (k-diffusion's set-up)."""
    levels = [v for v in torch.as_tensor(sigmas).detach().to("cpu", torch.float64).tolist() if v > 0]
    if not levels:
        raise ConfigError("sigmas has no positive level to build a Brownian tree over")
    lo, hi = min(levels), max(levels)
    if lo == hi:  # a single noisy level: any interval that contains it
        lo = 0.5 * hi
    return BrownianTreeNoiseSampler(x, lo, hi, seed=seed, transform=transform)
