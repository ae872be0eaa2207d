"""Classifier-free guidance (Ho & Salimans 2022) as a denoiser wrapper.

    D_w(y; σ) = D(y; σ, ∅) + w · (D(y; σ, c) − D(y; σ, ∅))         on every element (all channels)

It acts on the x0 estimate. For every VP parameterization x0 is an affine function of the
network output with the same per-sample coefficients in both branches, so this equals
guiding ε or v (and, for learned variance, guiding the prediction channels only).

Options:

* Guidance rescale φ (Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps
  are Flawed", §3.4, eqs. 13–16): per sample, scale the guided prediction to the standard
  deviation of the conditional one, then mix: p = p_cfg · (φ·std(p_c)/std(p_cfg) + 1 − φ).
  The rule is not invariant under the choice of space. The paper applies it to "the model
  outputs", and its models predict v; diffusers' ``rescale_noise_cfg`` applies it to
  whatever the network outputs (ε or v). Here ``rescale_space`` picks the space, default
  ``"v"`` (the paper's setting; for any σ-form denoiser, EDM included, v and ε are those of
  the VP process with ᾱ = 1/(1+σ²)). Every space is p = b·(D − k·y) with a per-sample scalar b
  that cancels in the std ratio, so the rule becomes, with r = D − k·y,

      D' = k·y + r_cfg · (φ·std(r_c)/std(r_cfg) + 1 − φ),   k = 1 (ε), 1/(1+σ²) (v), 0 (x0).

  A zero std (a constant guided prediction) leaves the prediction unscaled, never NaN.
* Guidance interval (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval
  improves sample and distribution quality in diffusion models"): guide only where
  σ_lo ≤ σ ≤ σ_hi (both ends included), use the conditional prediction elsewhere. Chosen
  per sample with ``torch.where`` on the [B] σ, so no device→host sync; the bounds are
  compared in σ's dtype (rounded like σ), so a grid σ equal to a bound counts as inside.

Conditioning batching rule (cond and uncond go through ONE forward of batch 2B, the
conditional half first, as [cond; uncond]):

* tensors: both must be tensors with a leading batch dimension of B or 1 (1 is expanded to
  B, e.g. one null text embedding for the batch) and equal trailing shapes; concatenated
  along dim 0;
* Mappings (e.g. ``{"text": emb, "pooled": vec}``): both must have the same keys; combined
  key by key with these rules, recursively (the result is a ``dict``);
* attrs records (a :class:`~diffkit.models.conditioners.Conditioning`): both of the same class;
  combined field by field with these rules (a field that is None must be None in both), and
  the result is a record of that class (so it is validated again);
* anything else (None, numbers, strings, inside a Mapping or at the top) must be equal in
  both branches and is passed once, unchanged;
* when exactly one of cond / uncond is None (at the top), the branches cannot be batched:
  the denoiser is called twice, ``D(y, σ, cond)`` and ``D(y, σ, None)`` — use this for an
  inner denoiser whose unconditional mode is "no conditioning" (a ``VPDenoiser`` then calls
  ``model(x_t, t)`` without the cond argument).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import torch
from torch import nn

from diffkit.errors import ConfigError, ShapeError, check_choice
from diffkit.validators import is_real

RESCALE_SPACES = ("v", "eps", "x0")


# The largest |w| accepted. Published scales are 1–20 (DreamFusion's 100 is the outlier); the
# guided estimate is the branches' difference times w, so w = 1e30 turns every sample into
# ±inf or NaN within a step. 1000 leaves room for experiments while staying far from overflow.
MAX_GUIDANCE = 1000.0


def check_guidance_scale(scale: Any, *, what: str = "guidance scale", allow_negative: bool = False) -> float:
    """A classifier-free guidance weight w as a float, or a :class:`ConfigError` naming the valid range.

    Valid: a real number (not a bool), finite, 0 ≤ w ≤ :data:`MAX_GUIDANCE` (1 = no guidance,
    0 = unconditional); with ``allow_negative``, −MAX_GUIDANCE ≤ w ≤ MAX_GUIDANCE.
    """
    low = -MAX_GUIDANCE if allow_negative else 0.0
    valid = f"a finite real number in {low:g} … {MAX_GUIDANCE:g} (1 = no guidance, 0 = unconditional)"
    if not is_real(scale):
        raise ConfigError(f"{what} must be {valid}, got {scale!r} ({type(scale).__name__})")
    value = float(scale) if abs(scale) <= MAX_GUIDANCE or not isinstance(scale, int) else math.inf  # no OverflowError
    if not math.isfinite(value) or value > MAX_GUIDANCE:
        raise ConfigError(f"{what} must be {valid}, got {scale!r}")
    if value < low:
        hint = "" if allow_negative else (
            "; a negative w (extrapolating away from the conditional prediction) needs CFGDenoiser(..., allow_negative=True)"
        )
        raise ConfigError(f"{what} must be ≥ {low:g} (valid: {valid}), got {scale!r}{hint}")
    return value


def check_guidance_rescale(rescale: Any, *, what: str = "guidance rescale φ") -> float:
    """φ of guidance rescale as a float: a number in [0, 1] (0 = off; NaN and bools are errors)."""
    if not is_real(rescale) or not 0 <= rescale <= 1:
        raise ConfigError(f"{what} must be a number in [0, 1] (0 = off, 0.7 in the paper), got {rescale!r}")
    return float(rescale)


def _check_interval(interval: Any) -> tuple[float, float] | None:
    if interval is None:
        return None
    try:
        low, high = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ConfigError(f"guidance interval must be None or a pair (sigma_lo, sigma_hi), got {interval!r}") from None
    if not (0 <= low <= high) or math.isinf(low):
        raise ConfigError(
            f"guidance interval must satisfy 0 ≤ sigma_lo ≤ sigma_hi (sigma_hi may be inf), got ({low}, {high})"
        )
    return low, high


def _batch_leaf(value: torch.Tensor, batch: int, where: str) -> torch.Tensor:
    if value.ndim == 0 or value.shape[0] not in (1, batch):
        raise ShapeError(
            f"conditioning tensor{where} has shape {tuple(value.shape)}; it needs a leading batch dimension "
            f"of {batch} (or 1, expanded to the batch)"
        )
    return value.expand(batch, *value.shape[1:])


def batch_conditions(cond: Any, uncond: Any, batch: int, where: str = "") -> Any:
    """[cond; uncond] along the batch dimension, following the module's batching rule."""
    if isinstance(cond, torch.Tensor) or isinstance(uncond, torch.Tensor):
        if not (isinstance(cond, torch.Tensor) and isinstance(uncond, torch.Tensor)):
            raise ConfigError(
                f"conditioning{where}: a tensor in one branch needs a tensor in the other, got "
                f"{type(cond).__name__} (cond) and {type(uncond).__name__} (uncond)"
            )
        c, u = _batch_leaf(cond, batch, where), _batch_leaf(uncond, batch, where)
        if c.shape[1:] != u.shape[1:]:
            raise ShapeError(
                f"conditioning{where}: cond has per-sample shape {tuple(c.shape[1:])} but uncond "
                f"{tuple(u.shape[1:])}; they must match to share one batched forward"
            )
        return torch.cat([c, u])  # [2B, ...]
    if isinstance(cond, Mapping) or isinstance(uncond, Mapping):
        if not (isinstance(cond, Mapping) and isinstance(uncond, Mapping)) or set(cond) != set(uncond):
            cond_keys = sorted(map(str, cond)) if isinstance(cond, Mapping) else type(cond).__name__
            uncond_keys = sorted(map(str, uncond)) if isinstance(uncond, Mapping) else type(uncond).__name__
            raise ConfigError(
                f"conditioning{where}: cond and uncond must be Mappings with the same keys, got {cond_keys} and "
                f"{uncond_keys}"
            )
        return {key: batch_conditions(cond[key], uncond[key], batch, f"{where}[{key!r}]") for key in cond}
    if attrs.has(type(cond)) or attrs.has(type(uncond)):
        if type(cond) is not type(uncond):
            raise ConfigError(
                f"conditioning{where}: cond and uncond must be records of the same class, got "
                f"{type(cond).__name__} (cond) and {type(uncond).__name__} (uncond)"
            )
        combined = {  # keyed by the __init__ argument name (attrs' alias: "_x" → "x")
            f.alias: batch_conditions(getattr(cond, f.name), getattr(uncond, f.name), batch, f"{where}.{f.name}")
            for f in attrs.fields(type(cond))
            if f.init
        }
        return attrs.evolve(cond, **combined)  # [cond; uncond] field by field, validated again
    if cond is uncond or _equal(cond, uncond):
        return cond  # shared by both branches (None, a flag, a number, ...)
    raise ConfigError(
        f"conditioning{where}: non-tensor entries must be equal in both branches to be batched, got "
        f"{cond!r} (cond) and {uncond!r} (uncond)"
    )


def _equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # e.g. objects whose == is elementwise
        return False


class CFGDenoiser(nn.Module):
    """Classifier-free guidance around any denoiser ``D(x, σ, cond)``.

    Called as ``cfg(x, sigma, cond)``: ``cond`` is the conditional branch's record, the
    unconditional one (``uncond``) is fixed at construction. See the module docstring for
    how the two are batched, the rescale space and the interval.

    Args:
        denoiser: the wrapped denoiser (its ``forward_with_variance`` is used by
            :meth:`forward_with_variance`).
        scale: the guidance weight w (1 = the conditional prediction, returned exactly and
            with one forward; 0 = the unconditional one; > 1 = guidance). Finite and at most
            :data:`MAX_GUIDANCE` (1000) in size: a larger w scales the branches' difference
            past anything a sampler can integrate (w = 1e30 gives NaN samples), so it is an
            error, not a silently broken result.
        uncond: the unconditional record (a null label, the empty prompt's embedding, None).
        rescale: φ ∈ [0, 1] of guidance rescale (0 = off).
        rescale_space: ``"v"`` (default), ``"eps"`` or ``"x0"``: where the std is measured.
        interval: ``(sigma_lo, sigma_hi)``: guide only for σ in that closed interval.
        allow_negative: accept −1000 ≤ w < 0 (NaN and ±inf are always errors).
    """

    def __init__(
        self,
        denoiser: Callable[..., torch.Tensor],
        scale: float,
        *,
        uncond: Any,
        rescale: float = 0.0,
        rescale_space: str = "v",
        interval: tuple[float, float] | None = None,
        allow_negative: bool = False,
    ) -> None:
        super().__init__()
        self.denoiser = denoiser
        self.scale = check_guidance_scale(scale, allow_negative=allow_negative)
        self.uncond = uncond
        self.rescale = check_guidance_rescale(rescale)
        self.rescale_space = check_choice("guidance rescale space", rescale_space, RESCALE_SPACES)
        self.interval = _check_interval(interval)

    @property
    def path(self) -> str | None:
        """The wrapped denoiser's probability path (``"flow"`` around a FlowDenoiser), which guidance
        keeps and samplers such as ``heun`` read."""
        return getattr(self.denoiser, "path", None)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None) -> torch.Tensor:
        """x: [B, ...] in σ form; sigma: [B]. Returns the guided x0 estimate, shaped like x."""
        if self.scale == 1:
            return self.denoiser(x, sigma, cond)  # w = 1: exactly the conditional prediction
        denoised_cond, denoised_uncond = self._both(self.denoiser, x, sigma, cond)
        return self._guide(x, sigma, denoised_cond, denoised_uncond)

    def forward_with_variance(
        self, x: torch.Tensor, sigma: torch.Tensor, cond: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(guided x0, frac): the prediction is guided, the variance weight is the conditional one (as DiT)."""
        inner = getattr(self.denoiser, "forward_with_variance", None)
        if not callable(inner):
            raise ConfigError(
                f"the guided denoiser ({type(self.denoiser).__name__}) has no forward_with_variance, so it has no "
                "learned variance to pass through"
            )
        if self.scale == 1:
            return inner(x, sigma, cond)
        (x0_c, frac_c), (x0_u, _) = self._both(inner, x, sigma, cond)
        return self._guide(x, sigma, x0_c, x0_u), frac_c

    def _both(self, fn: Callable[..., Any], x: torch.Tensor, sigma: torch.Tensor, cond: Any) -> tuple[Any, Any]:
        """(conditional, unconditional) outputs of ``fn``: one forward of batch 2B when the records batch."""
        if sigma.shape != (x.shape[0],):
            raise ShapeError(f"sigma must have shape [batch] = [{x.shape[0]}], got {tuple(sigma.shape)}")
        if (cond is None) != (self.uncond is None):
            return fn(x, sigma, cond), fn(x, sigma, self.uncond)  # None cannot be batched with a record
        both = batch_conditions(cond, self.uncond, x.shape[0])
        out = fn(torch.cat([x, x]), torch.cat([sigma, sigma]), both)  # x [2B, ...], σ [2B]
        parts = out if isinstance(out, tuple) else (out,)  # (x0, frac) of forward_with_variance
        for part in parts:
            if part.shape[0] != 2 * x.shape[0]:
                raise ShapeError(f"the denoiser returned batch {part.shape[0]} for a batched input of {2 * x.shape[0]}")
        if isinstance(out, tuple):
            return tuple(zip(*(part.chunk(2) for part in out)))  # ((x0_c, frac_c), (x0_u, frac_u))
        return out.chunk(2)

    def _guide(
        self, x: torch.Tensor, sigma: torch.Tensor, denoised_cond: torch.Tensor, denoised_uncond: torch.Tensor
    ) -> torch.Tensor:
        work = torch.promote_types(x.dtype, torch.float32)  # fp16 differences in float32
        shape = (-1, *([1] * (x.ndim - 1)))
        cond, uncond = denoised_cond.to(work), denoised_uncond.to(work)
        guided = uncond + self.scale * (cond - uncond)  # Ho & Salimans 2022, eq. 6 in x0 form
        if self.rescale > 0:
            # r = D − k·y is the chosen space's prediction up to a per-sample factor b:
            # ε = (y − D)/σ (k = 1), v = (ε − σ·D)/√(1+σ²) (k = 1/(1+σ²)), x0 = D (k = 0)
            if self.rescale_space == "eps":
                anchor = x.to(work)
            elif self.rescale_space == "v":
                s = sigma.to(work).reshape(shape)
                anchor = x.to(work) / (1 + s * s)
            else:
                anchor = torch.zeros((), dtype=work, device=x.device)
            r_cond, r_guided = cond - anchor, guided - anchor
            dims = list(range(1, x.ndim))
            std_cond = r_cond.std(dim=dims, correction=0, keepdim=True)  # per sample, [B, 1, ...]
            std_guided = r_guided.std(dim=dims, correction=0, keepdim=True)
            positive = std_guided > 0
            ratio = torch.where(positive, std_cond / torch.where(positive, std_guided, 1.0), 1.0)
            # Lin et al. eqs. 15–16: x_final = φ·x_cfg·σ_pos/σ_cfg + (1 − φ)·x_cfg
            guided = anchor + r_guided * (self.rescale * ratio + (1 - self.rescale))
        if self.interval is not None:
            low, high = self.interval
            inside = ((sigma >= low) & (sigma <= high)).reshape(shape)  # [B, 1, ...] on x's device
            guided = torch.where(inside, guided, cond)  # Kynkäänniemi et al.: conditional outside
        return guided.to(x.dtype)
