"""Backbone speed: diffkit's DiT, UNet and KL autoencoder against the diffusers models they port.

Each diffusers model is built with a small configuration and seeded random weights; its weights
are converted into diffkit with the converters (``dit_from_diffusers``, ``unet_from_diffusers``,
``kl_from_diffusers``), so both networks compute the same function — checked before timing
(max |diffkit − diffusers| on the same inputs must be below 1e-4). Then, CPU, float32, same
process, alternating diffkit and diffusers runs:

* forward: ``eval()``, ``torch.no_grad()``;
* forward+backward: ``train()`` (no dropout in either), ``out.sum().backward()``, gradients
  cleared (set to None) before each run.

The figure is the fastest of several repeats (the least disturbed by the rest of the machine),
in ms per call, and the ratio diffkit/diffusers (goal ≤ 1.0).

    python -m bench.backbones [--repeats 5] [--threads N] [--only dit,unet,kl-encode,kl-decode]
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from typing import Any

import torch

from diffkit.io.diffusers.dit import dit_from_diffusers
from diffkit.io.diffusers.kl import kl_from_diffusers
from diffkit.io.diffusers.unet import unet_from_diffusers

TOLERANCE = 1e-4  # max abs difference of the outputs allowed before timing (float32 round-off)


# -- the models under test -------------------------------------------------------------------------


def randomize(model: torch.nn.Module, seed: int, std: float = 0.05) -> torch.nn.Module:
    """Seeded N(0, std²) weights everywhere, GroupNorm/LayerNorm scales around 1.

    Random weights everywhere (no zero-initialised layer) make every path of both networks count
    in the agreement check and in the timing.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=generator) * std
            p.copy_(1 + noise if "norm" in name and p.ndim == 1 and name.endswith("weight") else noise)
    return model


def dit_case() -> dict[str, Any]:
    """DiT-S/2 (depth 12, width 384, 6 heads, patch 2, learned σ) on 32×32×4 latents, batch 8."""
    from diffusers import DiTTransformer2DModel

    theirs = randomize(
        DiTTransformer2DModel(
            num_attention_heads=6, attention_head_dim=64, in_channels=4, out_channels=8, num_layers=12,
            sample_size=32, patch_size=2, num_embeds_ada_norm=1000,
        ),
        seed=0,
    )
    state = theirs.state_dict()
    with torch.no_grad():  # one shared embedder, as in converted DiT weights (diffusers keeps a copy per block)
        for key, value in state.items():
            if ".norm1.emb." in key:
                value.copy_(state["transformer_blocks.0." + key.split(".", 2)[2]])
    ours = dit_from_diffusers(theirs)
    g = torch.Generator().manual_seed(1)
    x, t, y = torch.randn(8, 4, 32, 32, generator=g), torch.rand(8, generator=g) * 999, torch.arange(8) * 97
    return {
        "name": "DiT-S/2, 32×32×4, batch 8",
        "ours": ours, "theirs": theirs,
        "run_ours": lambda m: m(x, t, y),
        "run_theirs": lambda m: m(x, t, y).sample,
    }


def unet_case() -> dict[str, Any]:
    """A small DDPM-style UNet2DModel: 3 levels (64, 128, 128), 2 ResBlocks each, attention at 16² and 8²."""
    from diffusers import UNet2DModel

    theirs = randomize(
        UNet2DModel(
            sample_size=32, in_channels=3, out_channels=3, block_out_channels=(64, 128, 128), layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
            up_block_types=("AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=32, norm_num_groups=32,
        ),
        seed=0,
    )
    ours = unet_from_diffusers(theirs)
    g = torch.Generator().manual_seed(1)
    x, t = torch.randn(8, 3, 32, 32, generator=g), torch.rand(8, generator=g) * 999
    return {
        "name": "UNet (64,128,128)×2, attn 16²+8², 32×32×3, batch 8",
        "ours": ours, "theirs": theirs,
        "run_ours": lambda m: m(x, t),
        "run_theirs": lambda m: m(x, t).sample,
    }


def _kl_pair():
    from diffusers import AutoencoderKL

    theirs = randomize(
        AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64, 64), layers_per_block=2,
            down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
            norm_num_groups=32,
        ),
        seed=0,
    )
    return kl_from_diffusers(theirs), theirs


KL_NAME = "KL f4 (32,64,64)×2, mid attention"


def kl_cases() -> list[dict[str, Any]]:
    """A small kl-f4 AutoencoderKL (3 levels, 2 ResBlocks each, mid-block attention), 64×64 images, batch 4."""
    ours, theirs = _kl_pair()
    g = torch.Generator().manual_seed(1)
    x, z = torch.randn(4, 3, 64, 64, generator=g), torch.randn(4, 4, 16, 16, generator=g)

    def moments_ours(m):  # (B, 2·4, 16, 16): mean and log-variance of q(z|x)
        posterior = m.encode(x)
        return torch.cat([posterior.mean, posterior.logvar], dim=1)

    def moments_theirs(m):
        posterior = m.encode(x).latent_dist
        return torch.cat([posterior.mean, posterior.logvar], dim=1)

    return [
        {"name": f"{KL_NAME}: encode 64×64×3, batch 4", "ours": ours, "theirs": theirs,
         "run_ours": moments_ours, "run_theirs": moments_theirs},
        {"name": f"{KL_NAME}: decode 16×16×4 → 64×64, batch 4", "ours": ours, "theirs": theirs,
         "run_ours": lambda m: m.decode(z), "run_theirs": lambda m: m.decode(z).sample},
    ]


# -- timing ----------------------------------------------------------------------------------------


def forward_timer(model: torch.nn.Module, run: Callable) -> Callable[[], float]:
    def timed() -> float:
        model.eval()
        with torch.no_grad():
            start = time.perf_counter()
            run(model)
            return time.perf_counter() - start

    return timed


def backward_timer(model: torch.nn.Module, run: Callable) -> Callable[[], float]:
    def timed() -> float:
        model.train()
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        run(model).sum().backward()
        return time.perf_counter() - start

    return timed


def fastest_pair(ours: Callable[[], float], theirs: Callable[[], float], repeats: int) -> tuple[float, float]:
    """The fastest of ``repeats`` runs of each, run alternately after one warm-up of each."""
    ours(), theirs()
    times = [(ours(), theirs()) for _ in range(repeats)]
    return min(t[0] for t in times), min(t[1] for t in times)


def check_agreement(case: dict[str, Any]) -> float:
    """max |diffkit − diffusers| of the outputs (eval, no_grad); must be below TOLERANCE."""
    case["ours"].eval(), case["theirs"].eval()
    with torch.no_grad():
        got, expected = case["run_ours"](case["ours"]), case["run_theirs"](case["theirs"])
    diff = (got - expected).abs().max().item()
    assert expected.abs().max() > 0.1, f"{case['name']}: trivially small output"
    assert diff < TOLERANCE, f"{case['name']}: outputs differ by {diff:.2e}"
    return diff


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--only", default="dit,unet,kl-encode,kl-decode")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import diffusers

    print(
        f"# machine: {platform.machine()} {platform.processor() or ''}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, diffusers {diffusers.__version__}"
    )
    print(f"# float32 CPU; fastest of {args.repeats} alternating repeats after one warm-up; ms per call")
    wanted = args.only.split(",")
    builders = {"dit": lambda: [dit_case()], "unet": lambda: [unet_case()]}
    cases: list[dict[str, Any]] = []
    for key in ("dit", "unet"):
        if key in wanted:
            cases += builders[key]()
    if "kl-encode" in wanted or "kl-decode" in wanted:
        kl = kl_cases()
        cases += [c for c, key in zip(kl, ("kl-encode", "kl-decode")) if key in wanted]

    print("| model | max abs diff | fwd diffkit ms | fwd diffusers ms | fwd ratio | fwd+bwd diffkit ms | "
          "fwd+bwd diffusers ms | fwd+bwd ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for case in cases:
        diff = check_agreement(case)
        ours, theirs = case["ours"], case["theirs"]
        f_ours, f_theirs = fastest_pair(
            forward_timer(ours, case["run_ours"]), forward_timer(theirs, case["run_theirs"]), args.repeats
        )
        b_ours, b_theirs = fastest_pair(
            backward_timer(ours, case["run_ours"]), backward_timer(theirs, case["run_theirs"]), args.repeats
        )
        print(
            f"| {case['name']} | {diff:.1e} | {f_ours * 1e3:.1f} | {f_theirs * 1e3:.1f} | {f_ours / f_theirs:.2f} | "
            f"{b_ours * 1e3:.1f} | {b_theirs * 1e3:.1f} | {b_ours / b_theirs:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
