#!/usr/bin/env bash
# GPU check of the Speed targets (docs/speed.md), run from the repository root on a machine with a CUDA GPU
# and many cores, in under 6 minutes (timeouts 5 + 15 + 40 + 30 + 135 + 130 s):
# (1) the training views and evaluation crops made on the device against those made per item on the CPU, 64
#     images with odd JPEGs among them (benchmarks/views_check.py; exit 1 beyond its limits);
# (2) the training command a user runs, the paper preset for 2 CE epochs on N_CLI textured 640x480 JPEGs (random
#     init, every core but one as workers): images/s per epoch;
# (3) benchmarks/epoch.py on N_BENCH images: every pass end to end, data path alone and network alone, float32
#     and bf16 side by side, and what Table 2 would take on COCO-Stuff-27.
# Writes OUT_DIR/results.md, with each step's exit code (124: ended by its timeout).
#     bash benchmarks/device_check_speed.sh [OUT_DIR]
# (DEVICE=cpu N_CLI=32 N_BENCH=32 EXTRA="-p res=64 -p base_res=96" BENCH="--res 64 --base-res 96 --batch 16" try
# the script itself on a CPU.)
set -uo pipefail
out=${1:-outputs/device-speed}
n_cli=${N_CLI:-8192} n_bench=${N_BENCH:-2048} device=${DEVICE:-cuda}
workers=${WORKERS:-$(( $(nproc) > 1 ? $(nproc) - 1 : 0 ))}
mkdir -p "$out"
: > "$out/exits.txt"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PICIE_PROGRESS=0
timeout 5 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
timeout 15 python3 -c "import torch, os; print('torch', torch.__version__, '| cores', os.cpu_count(), '| CUDA', torch.version.cuda)"
echo "== $n_cli train images for the command, $n_bench for the benchmark"
timeout 40 python3 - "$out/coco-$n_cli" "$n_cli" "$out/coco-$n_bench" "$n_bench" <<'PY'
import sys
from pathlib import Path
sys.path.insert(0, "benchmarks")
from epoch import write_root
for root, n in zip(sys.argv[1::2], sys.argv[2::2]):
    write_root(Path(root), int(n), max(1, int(n) // 8))
PY
code=$?
echo "data $code" >> "$out/exits.txt"
if [ "$code" != 0 ]; then echo "== the data sets were not written (exit code $code)"; exit 1; fi
echo "== the views and evaluation crops made on $device against per item on the CPU"
timeout 30 python3 benchmarks/views_check.py "$out" --n 64 --device "$device" | tee "$out/views.txt"
echo "views ${PIPESTATUS[0]}" >> "$out/exits.txt"
echo "== python -m picie_lib train --preset paper ... --loss ce --epochs 2 ($workers workers)"
timeout 135 python3 -m picie_lib train --preset paper -p data_root="$out/coco-$n_cli" -p pretrained=null \
    -p num_workers="$workers" -p device="$device" ${EXTRA:-} --loss ce --epochs 2 --out "$out/cli" --overwrite
code=$?
echo "command $code" >> "$out/exits.txt"
echo "== exit code $code"
echo "== benchmarks/epoch.py --n $n_bench --both"
timeout 130 python3 benchmarks/epoch.py --n "$n_bench" --device "$device" --workers "$workers" --both \
    --root "$out/coco-$n_bench" --out "$out/epoch" ${BENCH:-}
code=$?
echo "benchmark $code" >> "$out/exits.txt"
echo "== exit code $code"
python3 benchmarks/speed_results.py "$out" "$n_cli" | tee "$out/results.md"
