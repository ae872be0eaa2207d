"""Peak memory of loading a diffusers pipeline folder: diffkit.load_pretrained against diffusers' from_pretrained.

    python -m bench.folder_memory [--scale N]

Builds a Stable Diffusion folder of about 100 M parameters with random weights (an SD-style
UNet2DConditionModel, the tiny VAE and CLIP text encoder of the tests), saves it with diffusers,
then loads it in fresh processes — once with ``diffkit.load_pretrained(folder)``, once with
``diffusers.StableDiffusionPipeline.from_pretrained(folder)`` — and reports, above the resident
memory after the imports and against the size of the weights on disk: the peak while loading
(``ru_maxrss``), the resident memory once every weight has been read (as sampling reads them),
and the peak overall. One copy of the weights is 1.0×; a loader that reads every file into a
state dict and then copies it into a freshly initialized module peaks near 2.0×. (diffusers
maps the safetensors files and reads them only when a weight is used, so its loading peak is
small and its memory comes in with the first use.)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

LOAD = {
    "diffkit": "import diffkit; before = current(); pipe = diffkit.load_pretrained(FOLDER)",
    "diffusers": "import diffusers; before = current(); pipe = diffusers.StableDiffusionPipeline.from_pretrained(FOLDER)",
}

PROBE = """
import json, os, resource, sys, warnings
warnings.simplefilter("ignore")
import torch
FOLDER = sys.argv[1]
PAGE = os.sysconf("SC_PAGE_SIZE")
def current():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE
def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
{load}
loaded_peak = peak()
parts = pipe.components.values() if hasattr(pipe, "components") else pipe.children()
modules = [m for m in parts if isinstance(m, torch.nn.Module)]
with torch.no_grad():  # read every weight once, as sampling does (pages of a memory-mapped file come in now)
    total = sum(float(t.float().sum()) for m in modules for t in m.state_dict().values())
print(json.dumps({{"before": before, "loaded_peak": loaded_peak, "in_use": current(), "final_peak": peak()}}))
"""


def build_folder(folder: Path, scale: int) -> int:
    """An SD-style pipeline folder whose UNet has about 100 M parameters at ``scale=1``; returns the weights' bytes."""
    import diffusers
    import torch

    from tests.integrations.tiny_pipelines import sd_pipeline

    pipe = sd_pipeline(diffusers.DDIMScheduler(), folder.parent / "tokenizer-source")
    torch.manual_seed(0)
    width = 160 * scale
    pipe.unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(width, 2 * width, 4 * width),
        layers_per_block=2, down_block_types=("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2, cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=32,
    )
    pipe.save_pretrained(folder)
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors"))


def measure(loader: str, folder: Path) -> dict[str, float]:
    script = PROBE.format(load=LOAD[loader])
    out = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=int, default=1, help="UNet width multiplier (1: about 100 M parameters)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "sd"
        weights = build_folder(folder, args.scale)
        print(f"folder: {weights / 2**20:.0f} MiB of safetensors weights (UNet, VAE, text encoder)")
        print("| loader | peak RSS while loading | RSS with every weight read | peak RSS overall |")
        print("|---|---|---|---|")
        for loader in LOAD:
            result = measure(loader, folder)
            cells = [result[key] - result["before"] for key in ("loaded_peak", "in_use", "final_peak")]
            print(f"| {loader} | " + " | ".join(f"{c / 2**20:.0f} MiB ({c / weights:.2f}×)" for c in cells) + " |")
    print(f"(ru_maxrss of fresh processes; {resource.getpagesize()}-byte pages)")


if __name__ == "__main__":
    main()
