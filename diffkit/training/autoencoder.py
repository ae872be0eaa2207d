"""Training the KL autoencoder (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models", §3 and App. G) and preparing its latents for diffusion.

The objective for a batch of B images x [B, C, H, W] in [−1, 1], with z ~ q(z|x) = N(μ, diag σ²)
drawn by the reparameterisation z = μ + σ·ε and x̂ = decode(z):

    L = (1 / (B·C·H·W)) · Σ_b [ Σ_pixels ρ(x̂ − x) + β · KL(q(z|x_b) ‖ N(0, I)) ]

ρ is |·| ("l1"), (·)² ("mse") or |·| + (·)² ("l1+mse"). As in the LDM code the reconstruction
is summed over the pixels of an image and the KL over its latent elements, so β
(``kl_weight``, 1e-6 in LDM) keeps its meaning there; the whole sum is then divided by the
number of pixel values so that the logged loss reads as a per-pixel error. The KL term only
keeps the latent space from drifting to huge values; with β this small the posterior is nearly
deterministic. No adversarial or perceptual term is used: both need a second network (LPIPS
needs pretrained weights), and on small synthetic images the pixel loss alone reaches the
target PSNR.

Diffusion then runs on scaled latents (LDM §4.3.2): latents = (z − shift)·scale with
scale = 1 / std(μ) over the training images (:func:`latent_scaling_factor`); the factor is
stored in the autoencoder's config (:func:`with_scaling_factor`), so it is saved with the weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from typing import Any

import attrs
import torch

from diffkit.errors import ConfigError, ShapeError
from diffkit.models.autoencoders.kl import KLAutoencoder
from diffkit.training.data import batch_indices
from diffkit.training.ema import EMA
from diffkit.validators import int_at_least, is_integer, one_of, real_in

LOSSES = ("l1", "mse", "l1+mse")
"""Pixel reconstruction losses ρ."""


def _optional_decay(instance: Any, attribute: attrs.Attribute, value: Any) -> None:
    if value is None:
        return
    real_in(0, 1, high_open=True)(instance, attribute, value)


@attrs.frozen(kw_only=True)
class AutoencoderTrainConfig:
    """Settings of :func:`train_autoencoder` (AdamW, linear warm-up then cosine decay)."""

    steps: int = attrs.field(default=1500, validator=int_at_least(1))
    """Optimizer steps."""
    batch_size: int = attrs.field(default=16, validator=int_at_least(1))
    """Images per step."""
    lr: float = attrs.field(default=3e-3, validator=real_in(0, 1))
    """Peak learning rate of AdamW."""
    min_lr_ratio: float = attrs.field(default=0.05, validator=real_in(0, 1))
    """The cosine decay ends at ``min_lr_ratio``·lr on the last step."""
    warmup_steps: int = attrs.field(default=50, validator=int_at_least(0))
    """Linear warm-up from 0 to ``lr``."""
    weight_decay: float = attrs.field(default=0.0, validator=real_in(0, 1))
    kl_weight: float = attrs.field(default=1e-6, validator=real_in(0, 1))
    """β: weight of the per-image KL against the per-image summed reconstruction error (LDM: 1e-6)."""
    loss: str = attrs.field(default="l1+mse", validator=one_of(LOSSES))
    """ρ, the pixel reconstruction loss (see :data:`LOSSES`)."""
    grad_clip: float = attrs.field(default=1.0, validator=real_in(0))
    """Clip the global gradient norm to this value (0 = off)."""
    seed: int = attrs.field(default=0, validator=int_at_least(0))
    """Seeds the batch order, the posterior samples and the global RNG (dropout)."""
    ema_decay: float | None = attrs.field(default=None, validator=_optional_decay)
    """Keep an EMA of the weights with this decay and return it (None = no EMA)."""
    eval_images: int = attrs.field(default=1024, validator=int_at_least(0))
    """The final train PSNR is measured on the first ``eval_images`` images (0 = skip it)."""
    log_every: int = attrs.field(default=25, validator=int_at_least(1))
    """Refresh the loss on the progress bar every N steps."""

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    def learning_rate(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based): warm-up, then cosine decay."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        span = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        floor = self.lr * self.min_lr_ratio
        return floor + (self.lr - floor) * 0.5 * (1 + math.cos(math.pi * progress))


@attrs.frozen
class AutoencoderResult:
    """What :func:`train_autoencoder` returns."""

    autoencoder: KLAutoencoder
    """The weights to use: the EMA copy when ``ema_decay`` is set, else the trained module itself."""
    steps: int
    seconds: float
    """Wall-clock time of the optimisation loop (without the final PSNR measurement)."""
    initial_loss: float
    """Loss of the first step's batch."""
    final_loss: float
    """Loss of the last step's batch."""
    train_psnr: float
    """:func:`reconstruction_psnr` of ``autoencoder`` on the first ``eval_images`` images (NaN if 0)."""


# -- checks ---------------------------------------------------------------------------------


def _check_images(autoencoder: KLAutoencoder, images: Any, *, what: str = "images") -> torch.Tensor:
    """Images must be a float tensor [N, C_in, H, W] with H and W divisible by f, N ≥ 1."""
    if not isinstance(autoencoder, KLAutoencoder):
        raise ConfigError(f"expected a KLAutoencoder, got {type(autoencoder).__name__}")
    cfg, f = autoencoder.config, autoencoder.downsampling_factor
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise ShapeError(f"{what} must be a floating-point tensor [N, {cfg.in_channels}, H, W], got {type(images).__name__}"
                         + (f" of {images.dtype}" if isinstance(images, torch.Tensor) else ""))
    if images.ndim != 4 or images.shape[1] != cfg.in_channels or images.shape[0] == 0:
        raise ShapeError(f"{what} must be [N ≥ 1, {cfg.in_channels}, H, W], got {tuple(images.shape)}")
    h, w = images.shape[-2:]
    if h % f or w % f:
        raise ShapeError(
            f"{what} of size {h}×{w} cannot be encoded by an autoencoder with downsampling factor f = {f} "
            f"({len(cfg.block_out_channels)} levels): H and W must be multiples of {f}; "
            f"crop or pad to e.g. {h - h % f or f}×{w - w % f or f}"
        )
    return images


def _check_range(images: torch.Tensor) -> None:
    """Pixel losses and PSNR assume [−1, 1]; images in [0, 255] or [0, 1] by mistake are caught here."""
    low, high = float(images.min()), float(images.max())
    if low < -1.01 or high > 1.01:
        raise ConfigError(f"images must be in [−1, 1] (x/127.5 − 1 for 8-bit images), got values in [{low:g}, {high:g}]")


def _model_device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


# -- the loss -------------------------------------------------------------------------------


def _pixel_loss(reconstruction: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """Σ over C·H·W of ρ(x̂ − x) per image: [B]."""
    diff = reconstruction - target  # (B, C, H, W)
    if kind == "l1":
        per_pixel = diff.abs()
    elif kind == "mse":
        per_pixel = diff.square()
    else:  # "l1+mse"
        per_pixel = diff.abs() + diff.square()
    return per_pixel.flatten(1).sum(dim=1)  # (B,)


def autoencoder_loss(
    autoencoder: KLAutoencoder,
    images: torch.Tensor,
    config: AutoencoderTrainConfig,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The scalar L of the module docstring for one batch [B, C, H, W] (z sampled from q(z|x))."""
    reconstruction, posterior = autoencoder(images, sample_posterior=True, generator=generator)
    rec = _pixel_loss(reconstruction.float(), images.float(), config.loss)  # (B,)
    kl = posterior.kl().float()  # (B,): ½ Σ (μ² + σ² − 1 − log σ²)
    return (rec + config.kl_weight * kl).mean() / images[0].numel()


# -- training -------------------------------------------------------------------------------


def train_autoencoder(
    autoencoder: KLAutoencoder,
    images: torch.Tensor,
    config: AutoencoderTrainConfig,
    *,
    progress: bool = True,
    generator: torch.Generator | None = None,
) -> AutoencoderResult:
    """Train ``autoencoder`` in place on ``images`` [N, C, H, W] in [−1, 1].

    The batch order is a function of (``config.seed``, position) (the trainer's epoch-wise
    permutations); posterior samples come from ``generator`` (a CPU generator seeded with
    ``config.seed`` when None); the global RNG (dropout) is seeded with ``config.seed``. Two runs
    with the same arguments on the CPU therefore give identical weights. Images stay where they
    are and each batch is moved to the autoencoder's device.
    """
    if not isinstance(config, AutoencoderTrainConfig):
        raise ConfigError(f"config must be an AutoencoderTrainConfig, got {type(config).__name__}")
    images = _check_images(autoencoder, images)
    _check_range(images)
    if autoencoder.config.out_channels != autoencoder.config.in_channels:
        raise ConfigError(
            f"a reconstruction needs out_channels == in_channels, got {autoencoder.config.out_channels} "
            f"and {autoencoder.config.in_channels}"
        )
    trainable = [p for p in autoencoder.parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError("the autoencoder has no trainable parameters (requires_grad is off everywhere)")

    device = _model_device(autoencoder)
    torch.manual_seed(config.seed)
    if generator is None:
        generator = torch.Generator().manual_seed(config.seed)  # ε is drawn on the CPU, then moved
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    ema = EMA(autoencoder, config.ema_decay) if config.ema_decay is not None else None

    autoencoder.train()
    bar = _progress_bar(config.steps) if progress else None
    initial_loss = final = math.nan
    start = time.perf_counter()
    try:
        for step in range(config.steps):
            for group in optimizer.param_groups:
                group["lr"] = config.learning_rate(step)
            indices = batch_indices(len(images), config.seed, step * config.batch_size, config.batch_size)
            batch = images[indices].to(device, non_blocking=True)  # (B, C, H, W)
            loss = autoencoder_loss(autoencoder, batch, config, generator=generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(trainable, config.grad_clip)
            optimizer.step()
            if ema is not None:
                ema.update(autoencoder)
            last = step + 1 == config.steps
            if step == 0 or last or (step + 1) % config.log_every == 0:
                final = float(loss.detach())  # reading the value syncs an accelerator: only when logging
                if step == 0:
                    initial_loss = final
                if bar is not None:
                    bar.set_postfix(loss=f"{final:.4f}", lr=f"{config.learning_rate(step):.2e}")
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - start
    autoencoder.eval()
    result_model = autoencoder if ema is None else ema.module
    train_psnr = math.nan
    if config.eval_images:
        train_psnr = reconstruction_psnr(result_model, images[: config.eval_images])
    return AutoencoderResult(
        autoencoder=result_model,
        steps=config.steps,
        seconds=seconds,
        initial_loss=initial_loss,
        final_loss=final,
        train_psnr=train_psnr,
    )


def _progress_bar(total: int) -> Any:
    import sys

    from tqdm.auto import tqdm

    interval = 0.1 if sys.stderr.isatty() else 5.0  # redraw every 5 s into a log file
    return tqdm(total=total, desc="autoencoder", unit="step", dynamic_ncols=True, mininterval=interval)


# -- evaluation and latents ------------------------------------------------------------------


def psnr(reference: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image [N] of images [N, …] in [−1, 1], measured on [0, 1].

    Both are mapped by x ↦ (x + 1)/2, the reconstruction clipped to [0, 1] (as when it is saved
    as an image), and PSNR = 10·log10(1 / MSE) with the MSE over each image's pixels (peak 1).
    Identical images give +inf. Computed in float64.
    """
    if reference.shape != reconstruction.shape or reference.ndim < 2:
        raise ShapeError(
            f"psnr needs two batches of the same shape [N, …], got {tuple(reference.shape)} and "
            f"{tuple(reconstruction.shape)}"
        )
    ref = (reference.double() + 1) / 2  # (N, …) in [0, 1]
    rec = ((reconstruction.double() + 1) / 2).clamp(0, 1)
    mse = (rec - ref).square().flatten(1).mean(dim=1)  # (N,)
    return 10 * torch.log10(1.0 / mse)


class _EvalMode:
    """Puts a module in eval mode for a ``with`` block and restores its previous mode after."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.was_training = module.training

    def __enter__(self) -> torch.nn.Module:
        self.module.eval()
        return self.module

    def __exit__(self, *exc: object) -> None:
        self.module.train(self.was_training)


def _batches(images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
    if not is_integer(batch_size) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer ≥ 1, got {batch_size!r}")
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


@torch.no_grad()
def reconstruction_psnr(autoencoder: KLAutoencoder, images: torch.Tensor, batch_size: int = 256) -> float:
    """Mean PSNR (dB, :func:`psnr`) of decode(mode of q(z|x)) against ``images`` [N, C, H, W] in [−1, 1]."""
    images = _check_images(autoencoder, images)
    _check_range(images)
    device = _model_device(autoencoder)
    total, count = 0.0, 0
    with _EvalMode(autoencoder):
        for batch in _batches(images, batch_size):
            batch = batch.to(device)
            reconstruction = autoencoder.decode(autoencoder.encode(batch).mode())  # (b, C, H, W)
            total += float(psnr(batch, reconstruction).sum())
            count += len(batch)
    return total / count


@torch.no_grad()
def latent_scaling_factor(autoencoder: KLAutoencoder, images: torch.Tensor, batch_size: int = 256) -> float:
    """1 / std of the posterior-mode latents μ(x) over all ``images`` (LDM §4.3.2, App. D.1).

    The std is taken over every element of every latent [N, z, h, w] (mean removed, population
    variance, accumulated in float64), as LDM computes SD's 0.18215; the mean itself is not removed
    from the latents (that is what ``shift_factor`` is for).
    """
    images = _check_images(autoencoder, images)
    device = _model_device(autoencoder)
    total = torch.zeros((), dtype=torch.float64)
    squares = torch.zeros((), dtype=torch.float64)
    count = 0
    with _EvalMode(autoencoder):
        for batch in _batches(images, batch_size):
            mu = autoencoder.encode(batch.to(device)).mode().double().cpu()  # (b, z, h, w)
            total += mu.sum()
            squares += mu.square().sum()
            count += mu.numel()
    mean = total / count
    variance = float(squares / count - mean * mean)  # E[μ²] − E[μ]²
    if not variance > 0 or not math.isfinite(variance):
        raise ConfigError(f"the latents have no spread (variance {variance:g}); cannot compute a scaling factor")
    return 1.0 / math.sqrt(variance)


def with_scaling_factor(autoencoder: KLAutoencoder, factor: float) -> KLAutoencoder:
    """A copy of ``autoencoder`` whose config carries ``scaling_factor=factor`` (same weights).

    The config is frozen, so a new :class:`KLAutoencoder` is built from ``attrs.evolve(config,
    scaling_factor=factor)`` and the weights are loaded with ``strict=True``; the copy has the
    original's device, dtype and train/eval mode. A bad factor (≤ 0, not a number) is a ConfigError.
    """
    if not isinstance(autoencoder, KLAutoencoder):
        raise ConfigError(f"expected a KLAutoencoder, got {type(autoencoder).__name__}")
    config = attrs.evolve(autoencoder.config, scaling_factor=factor)
    reference = next(autoencoder.parameters())
    copy = KLAutoencoder(config).to(device=reference.device, dtype=reference.dtype)
    copy.load_state_dict(autoencoder.state_dict(), strict=True)
    copy.train(autoencoder.training)
    return copy


@torch.no_grad()
def encode_dataset(
    autoencoder: KLAutoencoder,
    images: torch.Tensor,
    batch_size: int = 256,
    sample: bool = False,
    *,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Scaled latents (z − shift)·scale [N, z, H/f, W/f] of ``images`` [N, C, H, W], on the images' device.

    z is the posterior mode μ (``sample=False``) or a draw from q(z|x) with ``generator``.
    """
    images = _check_images(autoencoder, images)
    device = _model_device(autoencoder)
    out = []
    with _EvalMode(autoencoder):
        for batch in _batches(images, batch_size):
            latents = autoencoder.encode_latents(batch.to(device), sample=sample, generator=generator)
            out.append(latents.to(images.device))
    return torch.cat(out)
