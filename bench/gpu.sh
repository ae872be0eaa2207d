#!/usr/bin/env bash
# The one prepared script for a GPU session: environment, the GPU tests, the DiT-XL/2 benchmarks.
#
#   bash bench/gpu.sh                           # on the GPU machine (well under 10 minutes on an H100)
#   DIFFKIT_BENCH_SMOKE=1 bash bench/gpu.sh     # the same commands at CPU-sized settings (no GPU needed)
#
# PYTHON (default .venv/bin/python) must have diffkit installed with its dev extra
# (`pip install -e '.[dev]'`); nothing is installed here. Each step runs under its own
# `timeout`, writes its output to ${OUT:-bench-out}/<step>.txt, and a failing step does not
# stop the later ones; the script exits non-zero if any step failed.
set -euo pipefail

PYTHON="${PYTHON:-.venv/bin/python}"
OUT="${OUT:-bench-out}"
SMOKE="${DIFFKIT_BENCH_SMOKE:-0}"
mkdir -p "$OUT"
failed=()

step() {  # step NAME SECONDS COMMAND...
    local name="$1" limit="$2"
    shift 2
    echo "== $name (timeout ${limit}s): $*"
    local start=$SECONDS status=0
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.txt" 2>&1 || status=$?
    echo "   exit $status after $((SECONDS - start)) s -> $OUT/$name.txt"
    tail -n 15 "$OUT/$name.txt" | sed 's/^/   | /'
    if [ "$status" -ne 0 ]; then failed+=("$name (exit $status)"); fi
}

if [ "$SMOKE" = "1" ]; then
    # CPU-sized: DiT-S/8, batch 2, a few steps (the benchmark's CPU defaults)
    bench=(--device cpu)
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
else
    bench=(--device cuda --preset DiT-XL/2)
fi

{
    echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) smoke=$SMOKE"
    nvidia-smi 2>&1 || echo "(no nvidia-smi)"
    "$PYTHON" - <<'PY'
import platform, torch
import diffusers
print(f"python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"diffusers {diffusers.__version__}, cuda available: {torch.cuda.is_available()}")
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(), f"capability {torch.cuda.get_device_capability()}")
try:
    import triton
    print(f"triton {triton.__version__}")
except ImportError:
    print("triton: not installed (torch.compile's CUDA backend needs it)")
PY
} >"$OUT/environment.txt" 2>&1 || failed+=("environment")
cat "$OUT/environment.txt"

step gpu-tests 180 "$PYTHON" -m pytest tests/gpu -q -rs -p no:cacheprovider
step train-eager 120 "$PYTHON" -m bench.dit_xl train "${bench[@]}"
step train-compile 270 "$PYTHON" -m bench.dit_xl train "${bench[@]}" --compile
step sample 120 "$PYTHON" -m bench.dit_xl sample "${bench[@]}"
# last (the numbers above come first): the command line end to end on the GPU — torchrun, NCCL,
# FSDP2, bf16, channels-last UNet, compile — on the digits recipe
if [ "$SMOKE" = "1" ]; then e2e=(--steps 5); else e2e=(--steps 200 --compile); fi
step torchrun-fsdp 150 "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=1 -m diffkit train \
    --recipe digits --fsdp --no-progress --out "$OUT/run-fsdp" "${e2e[@]}" sample.n=20

if [ "${#failed[@]}" -ne 0 ]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all steps passed; outputs in $OUT/"
