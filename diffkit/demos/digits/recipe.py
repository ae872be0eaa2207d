"""``digits``: class-conditional diffusion on the embedded 8×8 UCI handwritten digits.

Sized for a laptop CPU: a 0.65 M-parameter UNet (two levels, 32 and 64 channels, attention
in the middle at 4×4), v-prediction on a cosine schedule, 10 % label dropout for
classifier-free guidance, 1,200 AdamW steps of 128 images (about 90 s on two cores), sampled
with UniPC in 20 steps at guidance 2. The ``dit`` choice is a 4-block DiT with patch 2.

``digits-flow`` is the same network, data and budget trained by flow matching instead
(velocity target on the ``flow`` schedule, SD3's logit-normal times), compared with
``digits`` by ``bench/flow_vs_vp.py``.
"""

from __future__ import annotations

from diffkit.recipes.base import RecipeDict


def digits() -> RecipeDict:
    return {
        "data": {"name": "digits", "size": 8},
        "pipeline": {
            "backbone": "unet",
            "schedule": ["cosine", {}],
            "conditioner": ["class_label", {"num_classes": 10, "drop_prob": 0.1}],
            "parameterization": "v",
            "sampler": "unipc",
            "objective": {"weighting": "none"},
            "default_steps": 20,
        },
        "backbones": {
            "unet": {
                "sample_size": 8,
                "in_channels": 1,
                "out_channels": 1,
                "block_out_channels": [32, 64],
                "layers_per_block": 1,
                "attention_levels": [],
                "mid_attention": True,
                "num_classes": 10,
                "dropout": 0.0,
                "norm_groups": 8,
            },
            "dit": {
                "input_size": 8,
                "patch_size": 2,
                "in_channels": 1,
                "hidden_size": 128,
                "depth": 4,
                "num_heads": 4,
                "num_classes": 10,
                "learn_sigma": False,
            },
        },
        "train": {
            "steps": 1200,
            "batch_size": 128,
            "lr": 2e-3,
            "warmup_steps": 50,
            "lr_schedule": "cosine",
            "ema_decay": 0.995,
            "save_every": 400,
            "sample_every": 200,
            "seed": 0,
        },
        "sample": {"n": 100, "steps": 20, "guidance": 2.0, "eval_n": 1000},
    }


def digits_flow() -> RecipeDict:
    """``digits`` under flow matching: x_t = (1 − t)·x0 + t·ε, velocity loss, logit-normal t (SD3 §3.1)."""
    recipe = digits()
    recipe["pipeline"].update(
        schedule=["flow", {"shift": 1.0}],
        parameterization="flow",
        objective={"weighting": "none", "timesteps": "logit_normal"},
    )
    return recipe
