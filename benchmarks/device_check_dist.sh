#!/usr/bin/env bash
# GPU check of torchrun (docs/torchrun.md), run from the repository root on a machine with one CUDA GPU:
# the paper preset (random init, 4 workers, training batch 64) on N textured 640x480 JPEGs, trained for
# one CE epoch and evaluated (1) in one process, (2) under torchrun with 1 process (a process group of
# one: every collective through NCCL) and (3) with 2 processes sharing the GPU (gloo). Prints each rank's
# phases (PICIE_DIST_DEBUG=1) and the exit codes, and writes results.md: seconds per pass side by side,
# scores side by side, and how long each evaluation took to exit after writing its scores.
#     bash benchmarks/device_check_dist.sh [OUT_DIR] [N]
# (DEVICE=cpu EXTRA="-p res=64 -p base_res=96" and a small N try the script itself on a CPU.)
set -uo pipefail
out=${1:-outputs/device-dist}
n=${2:-512}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PICIE_PROGRESS=0 PICIE_DIST_DEBUG=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, os; print('torch', torch.__version__, '| cores', os.cpu_count(), '| CUDA', torch.version.cuda)"
echo "== $n train / $((n / 8)) val images"
timeout 60 python3 -c "import sys; sys.path.insert(0, 'benchmarks'); from pathlib import Path; from epoch import write_root; write_root(Path('$out/coco'), $n, $((n / 8)))"
# torch's k-means in every run: under torchrun the fit is torch's (faiss sees one process), so the scores compare
args=(--preset paper --loss ce --epochs 1 -p data_root="$out/coco" -p pretrained=null -p num_workers=4
      -p device="${DEVICE:-cuda}" -p batch_size_train=64 -p kmeans_backend=torch ${EXTRA:-})
launch() {  # launch NAME PROCESSES COMMAND...: one-process runs without torchrun
    local name=$1 procs=$2; shift 2
    local start=$(date +%s.%N)
    if [ "$procs" = 0 ]; then timeout 150 python3 -m picie_lib "$@"
    else timeout 150 torchrun --standalone --nproc-per-node "$procs" -m picie_lib "$@"; fi
    local code=$?
    echo "$name $code $start $(date +%s.%N)" >> "$out/exits.txt"
    echo "== $name: exit code $code"
}
rm -f "$out/exits.txt"
for run in single:0 nccl1:1 gloo2:2; do
    name=${run%:*} procs=${run#*:}
    echo "== train, $name"
    [ "$name" = gloo2 ] && export PICIE_DIST_BACKEND=gloo
    launch "train-$name" "$procs" train "${args[@]}" --out "$out/$name" --overwrite
    echo "== evaluate, $name"
    launch "evaluate-$name" "$procs" evaluate "$out/$name"
    unset PICIE_DIST_BACKEND
done
python3 benchmarks/dist_results.py "$out" | tee "$out/results.md"
