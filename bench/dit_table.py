"""Parameters and forward GMACs of the 12 DiT presets, next to the paper's Table 4.

For each preset (DiT-S/B/L/XL × patch 2/4/8, 256 px: 32×32×4 latents, 1000 classes, learned σ):

* parameters: ``DiT.num_parameters()`` of the model built on the meta device (no memory), which
  counts the fixed sin-cos position embedding as the paper does;
* forward GMACs for one sample, two ways that must agree:
  - measured: ``torch.utils.flop_counter.FlopCounterMode`` around one forward of a batch of 1 on
    the meta device. It counts the matrix products (linear, conv, attention's two batched
    products) in FLOPs = 2 · multiply-accumulates; the table gives FLOPs / 2 / 1e9;
  - analytic: per block 12·T·D² (qkv 3, output projection 1, MLP 8) + 2·T²·D (q·kᵀ and
    attention·v) + 6·D² (adaLN), plus patch embedding T·D·p²·C, final layer T·D·p²·2C + 2·D²,
    and the timestep MLP 256·D + D² (T tokens of width D, patch p, C = 4 channels).

The paper's "Gflops" are multiply-accumulates counted per image (its Table 4 numbers equal the
GMACs here), not 2·MAC FLOPs.

    python -m bench.dit_table
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from diffkit.models.backbones.dit import PRESETS, DiT, DiTConfig

# Peebles & Xie 2023 (arXiv:2212.09748), Table 4: (Gflops, params in M) per preset at 256 px.
# Read from public transcriptions of the table (several independent ones agree); the PDF itself
# was not at hand. Note the /8 rows: S/8 0.36, B/8 1.42 (131M), L/8 5.01 (459M), XL/8 7.39 (676M).
PAPER_TABLE_4 = {
    "DiT-S/2": (6.06, 33), "DiT-S/4": (1.41, 33), "DiT-S/8": (0.36, 33),
    "DiT-B/2": (23.01, 130), "DiT-B/4": (5.56, 130), "DiT-B/8": (1.42, 131),
    "DiT-L/2": (80.71, 458), "DiT-L/4": (19.70, 458), "DiT-L/8": (5.01, 459),
    "DiT-XL/2": (118.64, 675), "DiT-XL/4": (29.05, 675), "DiT-XL/8": (7.39, 676),
}


def analytic_macs(cfg: DiTConfig) -> int:
    """Multiply-accumulates of one forward (batch 1) from the layer shapes."""
    tokens, dim, p, c = cfg.num_tokens, cfg.hidden_size, cfg.patch_size, cfg.in_channels
    hidden = int(dim * cfg.mlp_ratio)
    block = (
        3 * tokens * dim * dim  # qkv projection
        + 2 * tokens * tokens * dim  # q·kᵀ [T, T] and softmax·v, summed over heads
        + tokens * dim * dim  # attention output projection
        + 2 * tokens * dim * hidden  # MLP fc1 and fc2
        + 6 * dim * dim  # adaLN: c [D] → 6 vectors [D], once per sample
    )
    embed = tokens * dim * p * p * c + cfg.frequency_embedding_size * dim + dim * dim  # patches, t-MLP
    final = 2 * dim * dim + tokens * dim * p * p * cfg.out_channels  # adaLN (2 vectors) + linear
    return cfg.depth * block + embed + final


def measured_macs(model: DiT) -> int:
    """FlopCounterMode's FLOPs / 2 for one forward of a batch of 1 (meta tensors: no compute)."""
    cfg = model.config
    x = torch.empty(1, cfg.in_channels, cfg.input_size, cfg.input_size, device="meta")
    t, y = torch.zeros(1, device="meta"), torch.zeros(1, dtype=torch.long, device="meta")
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x, t, y)
    return counter.get_total_flops() // 2


def main() -> None:
    print(f"# torch {torch.__version__}; batch 1, 256 px (32×32×4 latents), meta device")
    print("# GMACs = FlopCounterMode FLOPs / 2 (measured) and from the layer shapes (analytic)")
    print("| model | params (M) | paper params (M) | GMACs measured | GMACs analytic | paper Gflops | measured / paper |")
    print("|---|---|---|---|---|---|---|")
    for name, cfg in PRESETS.items():
        with torch.device("meta"):
            model = DiT(cfg)
        params = model.num_parameters()
        measured, analytic = measured_macs(model), analytic_macs(cfg)
        paper, paper_params = PAPER_TABLE_4[name]
        print(
            f"| {name} | {params / 1e6:.1f} | {paper_params} | {measured / 1e9:.2f} | {analytic / 1e9:.2f} | "
            f"{paper:.2f} | {measured / 1e9 / paper:.3f} |"
        )


if __name__ == "__main__":
    main()
