"""Training throughput: diffkit's ``Trainer.train_step`` against a diffusers training loop.

The model is the ``digits`` recipe's class-conditional UNet (8×8×1 images, widths 32/64, one
ResBlock per level, attention in the middle, 8 norm groups, 10 classes + a null class for
classifier-free guidance). Both sides train the same network from the same weights:

* diffusers: a ``UNet2DModel`` built from the recipe's UNet config (``num_class_embeds`` = 10 + 1,
  the last row being the null class that the 10 % label dropout selects), trained by a plain loop
  as diffusers' training examples write it — a shuffling ``DataLoader`` over the digits tensor,
  ``DDPMScheduler(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")``,
  ``add_noise`` and ``get_velocity`` for x_t and the v target, MSE, backward, gradient clipping,
  ``AdamW`` with a cosine warm-up LR schedule, and ``EMAModel.step`` every step.
* diffkit: the recipe's pipeline (``build_pipeline(get_recipe("digits"))``) whose backbone is
  loaded with that ``UNet2DModel``'s weights through ``unet_from_diffusers`` (the null-class row
  copied into diffkit's null row), trained by the real :meth:`Trainer.train_step` (batch
  sampling, CFG label drop, v-prediction loss, clipping, AdamW, LR schedule, EMA).

Before timing, the benchmark checks that the converted UNet's config equals the recipe's, that
the two networks compute the same outputs (and the same v-loss gradient norm) on the same inputs,
and prints both parameter counts. Then, after a warm-up of each loop, it alternates blocks of
``--steps-per-block`` optimizer steps of each (the order swapped every repeat), and reports
steps/s and images/s of the median and of the fastest block, and the throughput ratio
diffkit/diffusers (> 1: diffkit faster). float32, CPU, torch's default number of threads.

    python -m bench.training [--repeats 5] [--steps-per-block 50] [--batch-size 128] [--warmup 10]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import torch
import torch.nn.functional as F

from diffkit.io.diffusers.unet import config_from_diffusers, unet_from_diffusers
from diffkit.models.backbones.unet import UNetConfig
from diffkit.pipeline import Pipeline
from diffkit.recipes import build_data, build_pipeline, get_recipe
from diffkit.recipes.base import RecipeDict
from diffkit.training import TrainConfig, Trainer

RECIPE = "digits"
TOLERANCE = 1e-4  # max |diffkit − diffusers| of the outputs before timing (float32 round-off)
GRAD_TOLERANCE = 1e-4  # relative difference of the v-loss gradient norms


# -- the same network on both sides ----------------------------------------------------------------


def diffusers_kwargs(config: UNetConfig) -> dict[str, Any]:
    """``UNet2DModel`` arguments for the architecture of a diffkit :class:`UNetConfig`.

    The class table gets ``num_classes + 1`` rows: diffusers has no null class, so a diffusers
    loop with classifier-free guidance's label dropout reserves one more label (the last) for it.
    """
    if config.resample != "conv" or config.vector_dim:
        raise ValueError("only conv resampling and no conditioning vector have a UNet2DModel equivalent here")
    levels = range(config.num_levels)
    attn = set(config.attention_levels)
    return {
        "sample_size": config.sample_size,
        "in_channels": config.in_channels,
        "out_channels": config.out_channels,
        "block_out_channels": tuple(config.block_out_channels),
        "layers_per_block": config.layers_per_block,
        "down_block_types": tuple("AttnDownBlock2D" if lv in attn else "DownBlock2D" for lv in levels),
        "up_block_types": tuple("AttnUpBlock2D" if lv in attn else "UpBlock2D" for lv in reversed(levels)),
        "add_attention": config.mid_attention,
        "attention_head_dim": config.attention_head_dim,  # None: one head over all channels, as here
        "time_embedding_dim": config.time_embed_dim,
        "flip_sin_to_cos": config.timestep_cos_first,
        "freq_shift": config.timestep_freq_shift,
        "num_class_embeds": config.num_classes + 1 if config.num_classes else None,
        "dropout": config.dropout,
        "resnet_time_scale_shift": "scale_shift" if config.scale_shift else "default",
        "attn_norm_num_groups": config.norm_groups if config.scale_shift else None,
        "downsample_padding": config.downsample_padding,
        "norm_num_groups": config.norm_groups,
        "norm_eps": config.norm_eps,
    }


def build_models(recipe: RecipeDict, seed: int) -> tuple[Any, Pipeline]:
    """(diffusers ``UNet2DModel``, diffkit pipeline whose backbone holds the same weights)."""
    from diffusers import UNet2DModel

    pipeline = build_pipeline(recipe)
    ours_config: UNetConfig = pipeline.backbone.config
    torch.manual_seed(seed)
    theirs = UNet2DModel(**diffusers_kwargs(ours_config))

    # Convert with diffkit's converter. It maps a K-row diffusers table to K + 1 rows (null row 0),
    # so it is given the first K rows; diffusers' extra row (its null label K) then becomes ours.
    num_classes = ours_config.num_classes
    config_dict = {"_class_name": type(theirs).__name__, **dict(theirs.config)}
    state = dict(theirs.state_dict())
    if num_classes:
        config_dict["num_class_embeds"] = num_classes
        state["class_embedding.weight"] = state["class_embedding.weight"][:num_classes]
    converted_config = config_from_diffusers(config_dict)
    if converted_config != ours_config:
        differ = [
            f"{f.name}: recipe {getattr(ours_config, f.name)!r}, converted {getattr(converted_config, f.name)!r}"
            for f in attrs.fields(UNetConfig)
            if getattr(ours_config, f.name) != getattr(converted_config, f.name)
        ]
        raise AssertionError("the UNet2DModel is not the recipe's architecture: " + "; ".join(differ))
    converted = unet_from_diffusers(config_dict, state)
    if num_classes:
        with torch.no_grad():
            converted.class_embed.embedding_table.weight[num_classes].copy_(theirs.class_embedding.weight[num_classes])
    pipeline.backbone.load_state_dict(converted.state_dict(), strict=True)
    return theirs, pipeline


def check_agreement(theirs: Any, pipeline: Pipeline, scheduler: Any, seed: int) -> tuple[float, float]:
    """(max |Δ output|, relative Δ of the v-loss gradient norm) on one batch with null labels.

    Both networks get the same x_t, integer t, labels (a quarter of them the null class) and
    v target; train mode (dropout is 0 in the recipe).
    """
    ours = pipeline.backbone
    g = torch.Generator().manual_seed(seed)
    c, h, w = pipeline.sample_shape
    num_classes = ours.config.num_classes
    x0 = torch.rand(32, c, h, w, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (32,), generator=g)
    labels = torch.randint(0, num_classes + 1, (32,), generator=g) if num_classes else None
    x_t = scheduler.add_noise(x0, noise, t)
    target = scheduler.get_velocity(x0, noise, t)

    norms = []
    outputs = []
    for model, run in (
        (theirs, lambda: theirs(x_t, t, class_labels=labels).sample),
        (ours, lambda: ours(x_t, t.float(), labels)),
    ):
        model.train()
        model.zero_grad(set_to_none=True)
        out = run()
        F.mse_loss(out, target).backward()
        grads = [p.grad.flatten() for p in model.parameters() if p.grad is not None]
        norms.append(torch.cat(grads).norm().item())
        outputs.append(out.detach())
        model.zero_grad(set_to_none=True)
    diff = (outputs[0] - outputs[1]).abs().max().item()
    grad_rel = abs(norms[0] - norms[1]) / norms[0]
    assert outputs[0].abs().max() > 0.1, "trivially small outputs: the check would prove nothing"
    assert diff < TOLERANCE, f"outputs differ by {diff:.2e}"
    assert grad_rel < GRAD_TOLERANCE, f"v-loss gradient norms differ by {grad_rel:.2e} (relative)"
    return diff, grad_rel


def count_parameters(module: torch.nn.Module) -> int:
    """Trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# -- the diffusers training loop -------------------------------------------------------------------


class DiffusersLoop:
    """A diffusers-style training loop for a class-conditional v-prediction ``UNet2DModel``.

    One :meth:`step`: next batch from a shuffling ``DataLoader``; labels replaced by the null
    label with probability ``drop_prob``; t ~ U{0 … T−1}, ε ~ N(0, I); x_t = ``add_noise``,
    v = ``get_velocity``; MSE; backward; clip; AdamW; LR scheduler; EMA.
    """

    def __init__(
        self,
        model: Any,
        images: torch.Tensor,
        labels: torch.Tensor,
        config: TrainConfig,
        *,
        num_train_timesteps: int,
        null_label: int,
        drop_prob: float,
    ) -> None:
        from diffusers import DDPMScheduler, UNet2DModel
        from diffusers.optimization import get_cosine_schedule_with_warmup
        from diffusers.training_utils import EMAModel
        from torch.utils.data import DataLoader, TensorDataset

        self.model = model
        self.batch_size = config.batch_size
        self.grad_clip = config.grad_clip
        self.null_label, self.drop_prob = null_label, drop_prob
        self.scheduler = DDPMScheduler(
            num_train_timesteps=num_train_timesteps,
            beta_schedule="squaredcos_cap_v2",
            prediction_type="v_prediction",
        )
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=config.lr, betas=config.adam_betas, weight_decay=config.weight_decay
        )
        self.lr_scheduler = get_cosine_schedule_with_warmup(self.optimizer, config.warmup_steps, config.steps)
        # foreach=True: the faster of EMAModel's two update paths (the default loops over tensors)
        self.ema = EMAModel(
            model.parameters(), decay=config.ema_decay, foreach=True, model_cls=UNet2DModel, model_config=model.config
        )
        self.loader = DataLoader(
            TensorDataset(images, labels),
            batch_size=config.batch_size,
            shuffle=True,
            drop_last=True,
            generator=torch.Generator().manual_seed(config.seed),
        )
        self.batches: Iterator[Any] = iter(())

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            return next(self.batches)
        except StopIteration:  # a new epoch
            self.batches = iter(self.loader)
            return next(self.batches)

    def step(self) -> torch.Tensor:
        model, scheduler = self.model, self.scheduler
        model.train()
        images, labels = self.next_batch()
        batch = images.shape[0]
        drop = torch.rand(batch) < self.drop_prob  # classifier-free guidance: the null label
        labels = torch.where(drop, torch.full_like(labels, self.null_label), labels)
        noise = torch.randn_like(images)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), device=images.device)
        noisy = scheduler.add_noise(images, noise, timesteps)
        target = scheduler.get_velocity(images, noise, timesteps)
        prediction = model(noisy, timesteps, class_labels=labels).sample
        loss = F.mse_loss(prediction.float(), target.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(model.parameters())
        return loss.detach()


# -- timing ----------------------------------------------------------------------------------------


def run_block(step: Callable[[], torch.Tensor], steps: int) -> tuple[float, float]:
    """(seconds, mean loss) of ``steps`` calls of ``step``; losses are read once, at the end."""
    start = time.perf_counter()
    losses = [step() for _ in range(steps)]
    seconds = time.perf_counter() - start
    return seconds, torch.stack(losses).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks of each loop (alternating)")
    parser.add_argument("--steps-per-block", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's (128)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps of each loop first")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name in ("repeats", "steps_per_block", "warmup"):
        if getattr(args, name) < (0 if name == "warmup" else 1):
            parser.error(f"--{name.replace('_', '-')} must be ≥ {0 if name == 'warmup' else 1}")
    import diffusers

    recipe = get_recipe(RECIPE)
    config = TrainConfig(**recipe["train"])
    config = attrs.evolve(config, batch_size=args.batch_size or config.batch_size, seed=args.seed)

    theirs, pipeline = build_models(recipe, args.seed)
    data = build_data(recipe)
    conditioner = pipeline.conditioner.config
    loop = DiffusersLoop(
        theirs,
        data.images,
        data.labels,
        config,
        num_train_timesteps=pipeline.schedule.num_train_timesteps,
        null_label=conditioner.num_classes,
        drop_prob=conditioner.drop_prob,
    )
    diff, grad_rel = check_agreement(theirs, pipeline, loop.scheduler, args.seed + 1)
    alpha_bar_diff = (loop.scheduler.alphas_cumprod.double() - pipeline.schedule.alphas_cumprod).abs().max().item()
    trainer = Trainer(pipeline, data, config, progress=False, device="cpu")
    torch.manual_seed(args.seed)

    print(
        f"# machine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, diffusers {diffusers.__version__}"
    )
    print(
        f"# recipe {RECIPE!r}: batch {config.batch_size}, AdamW lr {config.lr}, warm-up {config.warmup_steps}, "
        f"clip {config.grad_clip}, EMA {config.ema_decay}, CFG drop {conditioner.drop_prob}; float32 CPU"
    )
    print(
        f"# same network: max |Δ output| {diff:.1e}, relative Δ of the v-loss gradient norm {grad_rel:.1e}; "
        f"max |Δ ᾱ| of the cosine tables {alpha_bar_diff:.1e}"
    )
    print(
        f"# parameters: diffkit pipeline {count_parameters(pipeline):,}, diffusers UNet2DModel {count_parameters(theirs):,}"
    )
    print(
        f"# {args.warmup} warm-up steps each, then {args.repeats} alternating blocks of {args.steps_per_block} steps each"
    )

    loops = {"diffkit": trainer.train_step, "diffusers": loop.step}
    if args.warmup:
        for step in loops.values():
            run_block(step, args.warmup)
    times: dict[str, list[float]] = {name: [] for name in loops}
    losses: dict[str, float] = {}
    for repeat in range(args.repeats):
        order = list(loops) if repeat % 2 == 0 else list(reversed(loops))
        for name in order:
            seconds, losses[name] = run_block(loops[name], args.steps_per_block)
            times[name].append(seconds)

    def rates(name: str, pick: Callable[[list[float]], float]) -> tuple[float, float]:
        steps_per_s = args.steps_per_block / pick(times[name])
        return steps_per_s, steps_per_s * config.batch_size

    print()
    print("| training loop | median steps/s | median images/s | best steps/s | best images/s | "
          "ms/step (median) | loss (last block) |")
    print("|---|---|---|---|---|---|---|")
    labels = {"diffkit": "diffkit `Trainer.train_step`", "diffusers": "diffusers loop (UNet2DModel)"}
    for name in loops:
        med, best = rates(name, statistics.median), rates(name, min)
        ms = statistics.median(times[name]) / args.steps_per_block * 1e3
        print(f"| {labels[name]} | {med[0]:.2f} | {med[1]:.0f} | {best[0]:.2f} | {best[1]:.0f} | {ms:.1f} | "
              f"{losses[name]:.4f} |")
    ratio_med = rates("diffkit", statistics.median)[0] / rates("diffusers", statistics.median)[0]
    ratio_best = rates("diffkit", min)[0] / rates("diffusers", min)[0]
    print(f"| **ratio diffkit/diffusers** (throughput, > 1 = diffkit faster) | **{ratio_med:.3f}** | "
          f"**{ratio_med:.3f}** | **{ratio_best:.3f}** | **{ratio_best:.3f}** | | |")
    print()
    for name in loops:
        print(f"# {name} block seconds: " + ", ".join(f"{s:.3f}" for s in times[name]))


if __name__ == "__main__":
    main()
