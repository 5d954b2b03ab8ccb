#!/usr/bin/env bash
# GPU check, run from the repository root on a machine with a CUDA GPU and the packages of
# requirements.txt (faiss optional). Prints the device, versions, the GPU-relevant unit tests, a
# smoke comparison on the GPU, the network's throughput and a demo-preset epoch's pass timings.
#     bash benchmarks/device_check.sh [OUT_DIR]
set -uo pipefail
out=${1:-outputs/device-check}
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PICIE_PROGRESS=0
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 - <<'PY'
import torch, torchvision
from picie_lib.clustering import faiss, faiss_gpu_count, resolve_backend
print("torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.version.cuda,
      "| faiss", getattr(faiss, "__version__", None), "GPUs seen by faiss:", faiss_gpu_count(),
      "| k-means backend on cuda:", resolve_backend("auto", "cuda"))
PY
echo "== unit tests (device auto = cuda)"
python3 -m pytest -q -p no:cacheprovider tests/test_clustering.py tests/test_losses.py tests/test_metrics.py \
    tests/test_model.py tests/test_transforms.py tests/test_evaluate.py 2>&1 | tail -3
echo "== k-means on the GPU against the CPU, same start"
python3 - <<'PY'
import time, torch
from picie_lib.clustering import lloyd_kmeans, nearest_centroid
g = torch.Generator().manual_seed(0)
x = torch.nn.functional.normalize(torch.randn(2_000_000, 128, generator=g), dim=1)
init = x[:27].clone()
t = time.perf_counter(); c_cpu = lloyd_kmeans(x, 27, 5, 0, init=init); t_cpu = time.perf_counter() - t
xg = x.cuda(); torch.cuda.synchronize()
t = time.perf_counter(); c_gpu = lloyd_kmeans(xg, 27, 5, 0, init=init); torch.cuda.synchronize(); t_gpu = time.perf_counter() - t
agree = (nearest_centroid(x, c_cpu)[0] == nearest_centroid(xg, c_gpu)[0].cpu()).float().mean()
print(f"2M x 128, K=27, 5 iterations: CPU {t_cpu:.2f} s, GPU {t_gpu:.3f} s (x{t_cpu / t_gpu:.0f}); "
      f"max centroid difference {float((c_cpu - c_gpu.cpu()).abs().max()):.2e}; same assignment for {100 * agree:.4f}% of points")
PY
echo "== smoke comparison on the GPU"
python3 -m picie_lib compare --preset smoke --out "$out/smoke" -p device=cuda 2>&1 | tail -12
echo "== throughput, 320 px, batch 32"
python3 benchmarks/model_throughput.py --res 320 --batch 32 --device cuda --repeats 5
echo "== demo preset, 2 CE epochs on the GPU"
python3 -m picie_lib train --preset demo --loss ce --epochs 2 --out "$out/demo-ce" -p device=cuda 2>&1 | tail -2
python3 -c "
import json
for line in open('$out/demo-ce/log.jsonl'):
    r = json.loads(line); print('epoch', r['epoch'], 'loss %.3f' % r['loss'], {k: round(v, 2) for k, v in r['seconds'].items()})"
