#!/usr/bin/env bash
# GPU check of the paper preset, run from the repository root on a machine with a CUDA GPU:
# memory and speed of PiCIE's training step at 320 px per batch size and precision, then the paper
# preset end to end on a tiny COCO-layout root that tests/layouts.py writes (sizes and epochs small).
#     bash benchmarks/device_check_paper.sh [OUT_DIR]
set -uo pipefail
out=${1:-outputs/device-paper}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PICIE_PROGRESS=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== training step, 320 px (peak memory, images/s)"
python3 benchmarks/train_memory.py --res 320 --batches 64 128 256
echo "== paper preset on a tiny COCO-layout root, on the GPU"
python3 -c "import sys; sys.path.insert(0, 'tests'); from layouts import write_cocostuff; write_cocostuff('$out/coco')"
python3 -m picie_lib compare --preset paper --out "$out/paper-tiny" -p device=cuda -p data_root="$out/coco" \
    -p pretrained=null -p curated=false -p res=64 -p base_res=96 -p batch_size_train=3 -p batch_size_cluster=3 \
    -p eval_batch_size=2 -p kmeans_init_batches=1 -p epochs_ce=1 -p epochs_focal=1 -p epochs_ib_focal=2 \
    -p num_workers=2 2>&1 | tail -12
