"""Class-conditional DiT-XL/2 on the GPU: diffkit against diffusers, training and sampling.

The model is DiT-XL/2 at 256 px as in the DiT paper: 4×32×32 latents, patch 2, 1000 classes
plus a null class, learned σ (8 output channels). A diffusers ``DiTTransformer2DModel`` is
built with that config (seeded random weights; every block's copy of the timestep/label
embedder set equal, as in converted DiT checkpoints) and its weights are loaded into the
diffkit pipeline's ``dit`` backbone with diffkit's converter, so both sides train and sample
the same network. Before timing, one fp32 forward of both on the same (x, t, y) is compared
(TF32 off): the max difference must be float32 round-off.

``train`` — one optimizer step per call, images/s:

* diffkit: ``diffkit.Pipeline(backbone=dit, schedule="linear", conditioner=class_label
  (drop 0.1), parameterization="eps")`` trained by the real ``Trainer.train_step``: batches
  from ``InMemoryData`` (random latents and labels), CFG label drop, σ and ε draws, the hybrid
  loss of a learned-σ network (ε MSE + L_vlb), bf16 autocast on CUDA, fused AdamW, EMA.
* diffusers: the loop as diffusers' examples write it — random batch to the device (the
  model's own label embedder drops labels to the null class with p = 0.1 in train mode: the
  same CFG dropout inside the network), t ~ U{0…999}, ``DDPMScheduler.add_noise``, bf16
  autocast, MSE on the ε half of the output, backward, fused AdamW, ``EMAModel.step``.

Both: AdamW lr 1e-4, no weight decay, no clipping, EMA 0.9999 (the paper's settings).
``--compile`` compiles both networks with :func:`diffkit.runtime.accel.compile_module`
(``nn.Module.compile``; the same mechanism on both sides — diffkit's through
``Trainer(compile=True)``). TF32 is enabled for both after the
agreement check (:func:`diffkit.runtime.accel.enable_tf32`).

``sample`` — 50 steps of DPM-Solver++(2M) with classifier-free guidance (scale 4.0) from
N(0, I) latents, images/s (no decoding):

* diffkit: ``Pipeline.sample(n, cond=labels, guidance=4.0, steps=50, sampler="dpmpp_2m",
  decode=False, generator=…)`` (CFG batches [cond; uncond] in one forward per step; on CUDA
  its default ``precision="auto"`` runs the network under bf16 autocast, the sampler in fp32);
* diffusers: ``DPMSolverMultistepScheduler`` (dpmsolver++, order 2, ``trailing`` spacing so
  the σ grid is diffkit's default one) driven by DiTPipeline's loop: latents doubled, labels
  [y; 1000], one forward of 2B, guidance on the ε channels, the learned-σ half dropped,
  ``scheduler.step`` on the 2B batch.

Both in bf16 autocast on CUDA. Both are also run once in fp32 from the same starting noise and
the max difference of the final latents is printed (same solver and grid: small).

Timing: warm-up calls first (they include compilation), then ``--repeats`` alternating blocks
(order swapped every repeat), each timed with CUDA events around the whole block
(``torch.cuda.synchronize`` before and after; nothing inside a step waits for the GPU);
medians are reported, with the ratio diffkit/diffusers (> 1: diffkit faster).

MFU (training) = images/s × 3 × F / peak. F is the forward cost of one image in FLOP,
counted from the architecture: per block 12·T·D² (qkv, projection, MLP) + 2·T²·D (QKᵀ and
AV) multiply-accumulates per image, plus adaLN, embedders and the output layer. For XL/2
(T = 256 tokens, D = 1152, 28 blocks) that is 118.6 G multiply-accumulates — the paper's
"118.6 Gflops" counts MACs — so F = 2 × 118.6 = 237.2 GFLOP, and the backward pass costs twice
the forward (gradients with respect to activations and to weights), hence 3 × F per trained
image. Peak = the GPU's dense bf16 tensor throughput: 989 TFLOP/s for H100 SXM and H200,
756 for H100 PCIe, 312 for A100 (from ``torch.cuda.get_device_name``); ``--peak-tflops``
overrides, and on the CPU MFU is printed only when it is given.

    python -m bench.dit_xl train  [--preset DiT-XL/2] [--batch-size 64] [--steps 10] [--repeats 5] [--compile]
    python -m bench.dit_xl sample [--preset DiT-XL/2] [--batch-size 32] [--steps 50] [--repeats 3] [--compile]

On the CPU the defaults shrink to DiT-S/8, batch 2 and a few steps (a smoke run).
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

import diffkit
from diffkit.io.diffusers.dit import config_from_diffusers, convert_diffusers_state_dict
from diffkit.models.backbones.dit import DiTConfig
from diffkit.runtime.accel import compile_module, enable_tf32
from diffkit.runtime.precision import autocast
from diffkit.training import InMemoryData, TrainConfig, Trainer

NUM_CLASSES = 1000
DROP_PROB = 0.1
GUIDANCE = 4.0
LR = 1e-4
EMA_DECAY = 0.9999
AGREEMENT_TOLERANCE = 1e-3  # max |Δ| / max |output| of the fp32 forwards (float32 round-off)
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.0), ("H200", 989.0), ("A100", 312.0))


# -- cost model ------------------------------------------------------------------------------------


def forward_macs(config: DiTConfig) -> float:
    """Multiply-accumulates of one image's forward pass (the DiT paper's "Gflops")."""
    t, d, p = config.num_tokens, config.hidden_size, config.patch_size
    hidden = int(d * config.mlp_ratio)
    block = t * (3 * d * d + d * d + 2 * d * hidden) + 2 * t * t * d + 6 * d * d  # linear, attention, adaLN
    embed = t * d * p * p * config.in_channels + config.frequency_embedding_size * d + d * d
    final = 2 * d * d + t * d * p * p * config.out_channels
    return float(config.depth * block + embed + final)


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    """Dense bf16 peak in FLOP/s: ``--peak-tflops``, else from the CUDA device name, else None."""
    if override_tflops is not None:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((tflops * 1e12 for key, tflops in PEAK_BF16_TFLOPS if key in name), None)


# -- the same network on both sides ----------------------------------------------------------------


def diffusers_config(preset: str) -> dict[str, Any]:
    """``DiTTransformer2DModel`` arguments for a diffkit DiT preset (learned σ, 1000 classes)."""
    cfg = DiTConfig.from_preset(preset)
    return {
        "num_attention_heads": cfg.num_heads, "attention_head_dim": cfg.hidden_size // cfg.num_heads,
        "in_channels": cfg.in_channels, "out_channels": cfg.out_channels, "num_layers": cfg.depth,
        "sample_size": cfg.input_size, "patch_size": cfg.patch_size, "num_embeds_ada_norm": NUM_CLASSES,
    }


def build_models(preset: str, device: torch.device, seed: int) -> tuple[Any, diffkit.Pipeline]:
    """(diffusers ``DiTTransformer2DModel``, diffkit pipeline whose backbone holds the same weights)."""
    from diffusers import DiTTransformer2DModel

    diffkit.get_entry("backbone", "dit")  # load the registry outside the device context below
    torch.manual_seed(seed)
    with torch.device(device):  # initialise on the device: no 675 M-parameter CPU init and copy
        theirs = DiTTransformer2DModel(**diffusers_config(preset))
        state = theirs.state_dict()
        with torch.no_grad():  # one shared embedder, as in converted DiT weights
            for key, value in state.items():
                if ".norm1.emb." in key:
                    value.copy_(state["transformer_blocks.0." + key.split(".", 2)[2]])
        # diffusers' DiT conventions (timestep frequencies, MLP-branch LayerNorm ε), see diffusers_dit
        converted = config_from_diffusers({"_class_name": type(theirs).__name__, **dict(theirs.config)})
        backbone = diffkit.build(
            "backbone", "dit", preset=preset,
            timestep_freq_shift=converted.timestep_freq_shift, mlp_norm_eps=converted.mlp_norm_eps,
        )
    if backbone.config != converted:
        raise AssertionError(f"the diffusers model is not {preset}: {converted} != {backbone.config}")
    backbone.load_state_dict(convert_diffusers_state_dict(state, backbone.config), strict=True)
    pipeline = diffkit.Pipeline(
        backbone=backbone, schedule="linear",
        conditioner=("class_label", {"num_classes": NUM_CLASSES, "drop_prob": DROP_PROB}),
        parameterization="eps",
    )
    return theirs, pipeline.to(device)


def check_agreement(theirs: Any, ours: torch.nn.Module, device: torch.device, seed: int) -> float:
    """max |diffkit − diffusers| / max |diffusers| of one fp32 forward (TF32 off), asserted small."""
    g = torch.Generator(device=device).manual_seed(seed)
    cfg = ours.config
    x = torch.randn(4, cfg.in_channels, cfg.input_size, cfg.input_size, device=device, generator=g)
    t = torch.tensor([0.0, 250.0, 611.0, 999.0], device=device)
    y = torch.tensor([0, 207, 999, NUM_CLASSES], device=device)  # the null class included
    theirs.eval()  # in train mode diffusers' label embedder drops labels at random (its CFG dropout)
    ours.eval()
    with torch.no_grad(), _ieee_matmuls():
        expected = theirs(x, timestep=t, class_labels=y).sample
        got = ours(x, t, y)
    scale = expected.abs().max().item()
    relative = (got - expected).abs().max().item() / scale
    assert scale > 0.1, "trivially small outputs: the check would prove nothing"
    assert relative < AGREEMENT_TOLERANCE, f"diffkit and diffusers differ by {relative:.2e} (relative)"
    return relative


@contextlib.contextmanager
def _ieee_matmuls():
    matmul = getattr(torch.backends.cuda.matmul, "fp32_precision", None)
    if matmul is None:
        yield
        return
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision = matmul


# -- training ----------------------------------------------------------------------------------


class DiffusersTrainLoop:
    """A diffusers-style DiT training step (see the module docstring)."""

    def __init__(self, model: Any, latents: torch.Tensor, labels: torch.Tensor, batch: int, device: torch.device) -> None:
        from diffusers import DDPMScheduler
        from diffusers.training_utils import EMAModel

        self.model, self.latents, self.labels, self.batch, self.device = model, latents, labels, batch, device
        self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, fused=device.type == "cuda")
        self.ema = EMAModel(model.parameters(), decay=EMA_DECAY, foreach=True)
        self.generator = torch.Generator().manual_seed(1)

    def step(self) -> torch.Tensor:
        model, device = self.model, self.device
        model.train()
        index = torch.randint(0, len(self.latents), (self.batch,), generator=self.generator)
        latents = self.latents[index].to(device, non_blocking=True)
        labels = self.labels[index].to(device, non_blocking=True)
        noise = torch.randn_like(latents)
        timesteps = torch.randint(0, self.scheduler.config.num_train_timesteps, (self.batch,), device=device)
        noisy = self.scheduler.add_noise(latents, noise, timesteps)
        with autocast("auto", device):
            output = model(noisy, timestep=timesteps, class_labels=labels).sample
        eps = output[:, : latents.shape[1]]  # the ε half; the other half is the learned σ
        loss = F.mse_loss(eps.float(), noise.float())
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(model.parameters())
        return loss.detach()


def run_train(args: argparse.Namespace, device: torch.device) -> None:
    theirs, pipeline = build_models(args.preset, device, args.seed)
    relative = check_agreement(theirs, pipeline.backbone, device, args.seed + 1)
    enable_tf32()
    if args.compile:
        compile_module(theirs)  # diffkit's side: Trainer(compile=True) below, the library's own path
    g = torch.Generator().manual_seed(args.seed + 2)
    size = 4 * args.batch_size
    cfg = pipeline.backbone.config
    latents = torch.randn(size, cfg.in_channels, cfg.input_size, cfg.input_size, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (size,), generator=g)
    config = TrainConfig(
        batch_size=args.batch_size, steps=10**9, lr=LR, lr_schedule="constant", warmup_steps=0,
        weight_decay=0.0, grad_clip=0.0, ema_decay=EMA_DECAY, save_every=0, seed=args.seed,
    )
    trainer = Trainer(
        pipeline, InMemoryData(latents, labels), config, progress=False, device=device, encoded=True,
        compile=args.compile,
    )
    loop = DiffusersTrainLoop(theirs, latents, labels, args.batch_size, device)
    header(args, device, f"fp32 forward agreement: max |Δ| / max |out| = {relative:.1e}")
    steps = {"diffkit": trainer.train_step, "diffusers": loop.step}
    times, losses = timed_blocks(steps, args, device)
    per_second = {name: args.steps * args.batch_size / statistics.median(t) for name, t in times.items()}
    flops = 3 * 2 * forward_macs(cfg)
    peak = peak_flops(device, args.peak_tflops)
    print(f"# training FLOP per image: 3 × {2 * forward_macs(cfg) / 1e9:.1f} GFLOP (forward + backward)"
          + (f"; peak {peak / 1e12:.0f} TFLOP/s" if peak else ""))
    print()
    print("| training step | median images/s | ms/step | " + ("MFU | " if peak else "") + "loss (last block) |")
    print("|---|---|---|" + ("---|" if peak else "") + "---|")
    for name in steps:
        ms = statistics.median(times[name]) / args.steps * 1e3
        mfu = f"{per_second[name] * flops / peak:.1%} | " if peak else ""
        print(f"| {name} | {per_second[name]:.1f} | {ms:.1f} | {mfu}{losses[name]:.4f} |")
    ratio = per_second["diffkit"] / per_second["diffusers"]
    print(f"| **ratio diffkit/diffusers** (> 1 = diffkit faster) | **{ratio:.3f}** | | " + ("| " if peak else "") + "|")
    print_blocks(times)


# -- sampling ------------------------------------------------------------------------------------


def diffusers_scheduler(steps: int) -> Any:
    from diffusers import DPMSolverMultistepScheduler

    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_schedule="linear", algorithm_type="dpmsolver++", solver_order=2,
        timestep_spacing="trailing", final_sigmas_type="zero",
    )
    scheduler.set_timesteps(steps)
    return scheduler


def diffusers_sample(model: Any, labels: torch.Tensor, noise: torch.Tensor, steps: int) -> torch.Tensor:
    """DiTPipeline's guided loop with DPM-Solver++(2M): latents [B, C, H, W] from ``noise``."""
    scheduler = diffusers_scheduler(steps)
    channels = noise.shape[1]
    x = torch.cat([noise, noise]) * scheduler.init_noise_sigma  # [2B, …]: DiTPipeline steps both halves
    class_input = torch.cat([labels, torch.full_like(labels, NUM_CLASSES)])  # [y; ∅]
    for t in scheduler.timesteps:
        half = x[: len(x) // 2]
        x = scheduler.scale_model_input(torch.cat([half, half]), t)
        timesteps = t[None].to(x.device).expand(x.shape[0]) if torch.is_tensor(t) else torch.full((x.shape[0],), t)
        out = model(x, timestep=timesteps, class_labels=class_input).sample
        eps = out[:, :channels]  # the learned-σ channels are dropped, as DiTPipeline does
        cond_eps, uncond_eps = eps.chunk(2)
        guided = uncond_eps + GUIDANCE * (cond_eps - uncond_eps)
        eps = torch.cat([guided, guided])
        x = scheduler.step(eps, t, x).prev_sample
    return x.chunk(2)[0]


def run_sample(args: argparse.Namespace, device: torch.device) -> None:
    theirs, pipeline = build_models(args.preset, device, args.seed)
    relative = check_agreement(theirs, pipeline.backbone, device, args.seed + 1)
    theirs.eval()
    pipeline.eval()
    n = args.batch_size
    shape = (n, *pipeline.sample_shape)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=torch.Generator().manual_seed(args.seed)).to(device)

    def ours(steps: int, generator: torch.Generator, precision: str) -> torch.Tensor:
        return pipeline.sample(n, cond=labels, guidance=GUIDANCE, steps=steps, sampler="dpmpp_2m",
                               decode=False, generator=generator, precision=precision)

    # fp32 spot check: the same starting noise (diffkit draws x = σ_max·z; diffusers z·init_noise_sigma)
    spot_steps = min(args.steps, 10)
    z = torch.randn(shape, generator=torch.Generator(device=device).manual_seed(5), device=device)
    with torch.no_grad(), _ieee_matmuls():
        mine = ours(spot_steps, torch.Generator(device=device).manual_seed(5), "fp32")
        theirs_out = diffusers_sample(theirs, labels, z, spot_steps)
    # diffkit's sample is in σ form at σ = 0 = the clean latent; diffusers' prev_sample at t = 0 too
    spot = (mine - theirs_out).abs().max().item()
    assert torch.isfinite(mine).all() and torch.isfinite(theirs_out).all(), "non-finite latents"

    enable_tf32()
    if args.compile:
        compile_module(pipeline.backbone)
        compile_module(theirs)

    def diffkit_call() -> torch.Tensor:  # the library's own bf16 path on CUDA: precision="auto"
        return ours(args.steps, torch.Generator(device=device).manual_seed(0), "auto")

    def diffusers_call() -> torch.Tensor:
        noise = torch.randn(shape, generator=torch.Generator(device=device).manual_seed(0), device=device)
        with torch.no_grad(), autocast("auto", device):
            return diffusers_sample(theirs, labels, noise, args.steps)

    header(args, device, f"fp32 forward agreement: max |Δ| / max |out| = {relative:.1e}; fp32 {spot_steps}-step "
           f"samples from the same noise: max |Δ| = {spot:.1e}")
    calls = {"diffkit": diffkit_call, "diffusers": diffusers_call}
    times, finals = timed_blocks(calls, args, device, per_block=1, reduce=lambda x: x.float().abs().mean())
    print()
    print(f"| sampling ({args.steps} steps, CFG {GUIDANCE}) | median images/s | s per batch of {n} | mean |latent| |")
    print("|---|---|---|---|")
    rate = {name: n / statistics.median(t) for name, t in times.items()}
    for name in calls:
        print(f"| {name} | {rate[name]:.2f} | {statistics.median(times[name]):.3f} | {finals[name]:.3f} |")
    print(f"| **ratio diffkit/diffusers** (> 1 = diffkit faster) | **{rate['diffkit'] / rate['diffusers']:.3f}** | | |")
    print_blocks(times)


# -- timing and printing ------------------------------------------------------------------------


def timed_blocks(
    calls: dict[str, Callable[[], torch.Tensor]],
    args: argparse.Namespace,
    device: torch.device,
    *,
    per_block: int | None = None,
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda x: x,
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Warm-up, then ``repeats`` alternating blocks; (seconds per block, last block's mean result)."""
    per_block = per_block or args.steps
    for call in calls.values():
        for _ in range(args.warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    results: dict[str, float] = {}
    for repeat in range(args.repeats):
        for name in list(calls) if repeat % 2 == 0 else list(reversed(calls)):
            seconds, outputs = time_block(calls[name], per_block, device)
            times[name].append(seconds)
            results[name] = torch.stack([reduce(o).float() for o in outputs]).mean().item()  # read after timing
    return times, results


def time_block(call: Callable[[], torch.Tensor], count: int, device: torch.device) -> tuple[float, list[torch.Tensor]]:
    """Seconds of ``count`` calls: CUDA events around the block, nothing waits inside it."""
    if device.type != "cuda":
        start = time.perf_counter()
        outputs = [call() for _ in range(count)]
        return time.perf_counter() - start, outputs
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(device)
    begin.record()
    outputs = [call() for _ in range(count)]
    end.record()
    torch.cuda.synchronize(device)
    return begin.elapsed_time(end) / 1e3, outputs


def header(args: argparse.Namespace, device: torch.device, agreement: str) -> None:
    import diffusers

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    precision = "bf16 autocast, TF32" if device.type == "cuda" else "fp32"
    print(f"# {where}; {platform.python_implementation()} {platform.python_version()}, torch {torch.__version__}, "
          f"diffusers {diffusers.__version__}")
    print(f"# {args.mode}: {args.preset}, batch {args.batch_size}, {precision}, compile={'on' if args.compile else 'off'}; "
          f"{args.warmup} warm-up call(s) each, {args.repeats} alternating blocks")
    print(f"# same network: {agreement}")


def print_blocks(times: dict[str, list[float]]) -> None:
    print()
    for name, seconds in times.items():
        print(f"# {name} block seconds: " + ", ".join(f"{s:.3f}" for s in seconds))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=("train", "sample"))
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--preset", default=None, help="a DiT preset (default DiT-XL/2 on CUDA, DiT-S/8 on the CPU)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step / per sampling call")
    parser.add_argument("--steps", type=int, default=None, help="train: steps per timed block; sample: sampler steps")
    parser.add_argument("--repeats", type=int, default=None, help="timed blocks of each library (alternating)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls of each library first")
    parser.add_argument("--compile", action="store_true", help="compile both networks (diffkit.runtime.accel.compile_module)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="dense bf16 peak for MFU (default: detected)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = device.type == "cuda"
    training = args.mode == "train"
    defaults = {
        "preset": "DiT-XL/2" if gpu else "DiT-S/8",
        "batch_size": (64 if training else 32) if gpu else 2,
        "steps": (10 if training else 50) if gpu else (2 if training else 5),
        "repeats": (5 if training else 3) if gpu else 3,
        "warmup": (3 if training else 1) if gpu else 1,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("batch_size", "steps", "repeats"):
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be ≥ 1")
    if args.warmup < 0:
        parser.error("--warmup must be ≥ 0")
    try:
        DiTConfig.from_preset(args.preset)
    except (LookupError, ValueError) as exc:  # an unknown preset, with close matches
        parser.error(str(exc))
    (run_train if training else run_sample)(args, device)


if __name__ == "__main__":
    main()
