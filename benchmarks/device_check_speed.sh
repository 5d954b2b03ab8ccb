#!/usr/bin/env bash
# GPU check of the Speed issue's targets, run from the repository root on a machine with a CUDA GPU
# and many cores: one epoch and the evaluation at the paper's settings (320 px views from 640 px
# bases, batch 256, float32, random init) on 2,048 textured 640x480 JPEGs, each pass end to end,
# data path alone and network alone; then the clustering pass's k-means memory at the paper's size.
#     bash benchmarks/device_check_speed.sh [OUT_DIR]
set -uo pipefail
out=${1:-outputs/device-speed}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PICIE_PROGRESS=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, os; print('torch', torch.__version__, '| cores', os.cpu_count())"
echo "== epoch at the paper's settings"
timeout 420 python3 benchmarks/epoch.py --n 2048 --device cuda --root "$out/coco-2048" --out "$out/epoch"
echo "== k-means memory, paper size (both schedules at full size)"
timeout 240 python3 benchmarks/kmeans_memory.py --scale 1.0 --device cuda --out "$out/kmeans"
