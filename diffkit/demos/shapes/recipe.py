"""``shapes``: latent text-to-image on the generated captioned shapes (issue 6).

The seed's latent-diffusion section, trained for real on a CPU:

1. a KL autoencoder with f = 4 (32×32×3 → 8×8×4; :data:`SHAPES_AUTOENCODER`)
   is trained on the images, its latents scaled to unit variance;
2. the training images are encoded once (posterior mode);
3. a DiT conditioned through its adaLN vector on the ``text`` conditioner's pooled embedding
   (word tokens from the training captions and a small transformer, trained jointly, 10 %
   caption dropout for CFG) learns v-prediction on those latents — or, with
   ``--backbone latent_unet``, the seed's UNet with cross-attention to the token context;
4. samples are decoded and judged for colour, shape and position on prompts whose
   (colour, shape, position) combinations never appear in training.

``pipeline.conditioner=["minilm", {...}]`` uses the pretrained
MiniLM plugin instead of the text encoder trained from scratch.
"""

from __future__ import annotations

from typing import Any

from diffkit.recipes.base import RecipeDict

TEXT_WIDTH = 128


# A KLConfig for 32×32 RGB images at f = 4 (32×32×3 → 8×8×4, 12× fewer numbers): 3 levels of
# widths 16-32-64 (narrow at full resolution, where the convolutions cost the most), one residual
# block per encoder level (two per decoder level), no attention (at 8×8 the convolutions already
# see the whole latent). 648,375 parameters, 86.4 M multiply-adds per 32×32 image forward.
# With the AutoencoderTrainConfig defaults (1500 steps of 16 images) it reached 32.2 dB PSNR on
# the held-out shapes images (ShapesConfig(image_size=32, count=6000, seed=0)) in 226 s on one
# busy CPU core (1200 steps: 28.6 dB); the posterior ends nearly deterministic (mean log σ² ≈ −11).
# The scaling factor is a placeholder: after training, set it with
# ``with_scaling_factor(ae, latent_scaling_factor(ae, images))`` (0.346 in that run).
SHAPES_AUTOENCODER: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": [16, 32, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 16,
    "double_z": True,
    "mid_block_attention": False,
    "use_quant_conv": True,
    "scaling_factor": 1.0,
    "shift_factor": 0.0,
    "dropout": 0.0,
}


def shapes() -> RecipeDict:
    return {
        "data": {"name": "shapes", "image_size": 32, "count": 6000, "heldout_count": 480, "seed": 0, "held_out": 12},
        "autoencoder": {
            "config": dict(SHAPES_AUTOENCODER),
            "train": {"steps": 1500, "batch_size": 16, "lr": 3e-3, "seed": 0},  # 32 dB held-out PSNR
        },
        "pipeline": {
            # the DiT: 2-D position embeddings place objects where the prompt says, and it trains
            # 5× faster than the latent UNet here (docs/benchmarks.md); --backbone latent_unet
            # is the cross-attention UNet of the seed
            "backbone": "dit",
            "schedule": ["cosine", {}],
            "conditioner": [
                "text",
                # word tokens from the training captions: one token per attribute word
                {"width": TEXT_WIDTH, "depth": 2, "heads": 4, "max_length": 16, "context_dim": TEXT_WIDTH,
                 "drop_prob": 0.1, "vocabulary": "captions"},
            ],
            "parameterization": "v",
            "sampler": "unipc",
            "default_steps": 20,
        },
        "backbones": {
            "latent_unet": {
                "sample_size": 8,
                "in_channels": 4,
                "out_channels": 4,
                "block_out_channels": [64, 128],
                "layers_per_block": 1,
                "cross_attention_levels": [0, 1],
                "num_heads": 4,
                "context_dim": TEXT_WIDTH,
                "norm_groups": 16,
            },
            "dit": {
                "input_size": 8,
                "patch_size": 2,
                "in_channels": 4,
                "hidden_size": 128,
                "depth": 4,
                "num_heads": 4,
                "num_classes": 0,
                "vector_dim": TEXT_WIDTH,
                "learn_sigma": False,
            },
        },
        "train": {
            "steps": 4000,
            "batch_size": 64,
            "lr": 2e-3,
            "warmup_steps": 100,
            "lr_schedule": "cosine",
            "ema_decay": 0.995,
            "save_every": 1000,
            "sample_every": 1000,
            "seed": 0,
        },
        "sample": {"n": 25, "steps": 20, "guidance": 2.0, "prompts": None, "eval_per_combination": 8},
    }


def shapes_flow() -> RecipeDict:
    """``shapes`` with its DiT trained by flow matching (velocity loss, logit-normal t) instead of v-prediction."""
    recipe = shapes()
    recipe["pipeline"].update(
        schedule=["flow", {"shift": 1.0}],
        parameterization="flow",
        objective={"weighting": "none", "timesteps": "logit_normal"},
    )
    return recipe
