"""Peak memory of the clustering pass's two k-means at the paper's settings, fed features directly
(no data set needed): 20 initial batches of 256 images x 6,400 pixels of 128-d unit features per view,
then a few running-mean batches. Two schedules, measured side by side, each in a fresh process:

- **joint**: both views fed batch by batch, as one pass over the data would: both initial sets in
  memory at once;
- **one view at a time**: view 1's initial set and fit, then view 2's, then both views' running means
  (``picie_lib.picie.cluster_pass``): one initial set in memory at a time.

    python benchmarks/kmeans_memory.py [--scale 1.0] [--joint-scale 0.25] [--device auto] [--iters 20]
                                       [--backend auto] [--out DIR]

``--scale`` shrinks the number of initial batches' images (1.0 = 20 x 256); ``--joint-scale`` lets the
joint schedule run smaller where the machine cannot hold it whole (its peak grows linearly with the
scale). Prints and writes ``results.json`` / ``results.md``: host and GPU peaks in GiB, and seconds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from measure import Peaks, device_name, synchronize  # this folder is on sys.path when a script here runs

from picie_lib.clustering import MiniBatchKMeans
from picie_lib.distributed import resolve_device
from picie_lib.runs import environment, write_json

DIM, K, PIXELS = 128, 27, 6400


def feature_batches(n_images: int, batches: int, device: torch.device, seed: int):
    """``batches`` batches of ``n_images`` x 6,400 unit 128-d vectors around 27 centres (PiCIE's shapes),
    made cheaply from a small pool of noise rows so that generating them costs little memory."""
    g = torch.Generator(device=device).manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(K, DIM, generator=g, device=device), dim=1)
    pool = torch.randn(1 << 16, DIM, generator=g, device=device)
    for _ in range(batches):
        n = n_images * PIXELS
        rows = torch.randint(0, len(pool), (n,), generator=g, device=device)
        labels = torch.randint(0, K, (n,), generator=g, device=device)
        yield torch.nn.functional.normalize(centres[labels] + 0.7 * pool[rows], dim=1)


def run_schedule(schedule: str, images_per_batch: int, init_batches: int, rest: int, iters: int, backend, device):
    kms = [MiniBatchKMeans(K, init_batches, iters, seed=view, backend=backend) for view in (1, 2)]
    with Peaks(device) as peaks:
        start = time.perf_counter()
        if schedule == "joint":
            for batch in zip(
                *(feature_batches(images_per_batch, init_batches + rest, device, v) for v in (1, 2)), strict=True
            ):
                for km, x in zip(kms, batch, strict=True):
                    km.update(x)
        else:
            for view in (0, 1):
                for x in feature_batches(images_per_batch, init_batches, device, view + 1):
                    kms[view].update(x)
            tails = (feature_batches(images_per_batch, rest, device, 10 + v) for v in (1, 2))
            for batch in zip(*tails, strict=True):
                for km, x in zip(kms, batch, strict=True):
                    km.update(x)
        for km in kms:
            km.finish()
        synchronize(device)
        seconds = time.perf_counter() - start
    points = init_batches * images_per_batch * PIXELS
    return {
        "schedule": schedule,
        "initial_points_per_view": points,
        "initial_set_gib_per_view": points * DIM * 4 / 2**30,
        "host_peak_gib": peaks.host_gib,
        "gpu_peak_gib": peaks.gpu_gib,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--joint-scale", type=float, default=None, help="default: --scale")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--backend", default="auto", help="k-means backend: auto, faiss or torch")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--rest", type=int, default=2, help="running-mean batches after the initial fit")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = resolve_device(args.device)

    def images(scale: float) -> tuple[int, int]:  # (images per batch, initial batches) for a scale
        per_batch = max(1, round(256 * min(scale, 1.0)))
        return per_batch, max(1, round(20 * scale * 256 / per_batch))

    if args.child:
        scale = args.scale if args.child == "one view at a time" else (args.joint_scale or args.scale)
        per_batch, init = images(scale)
        row = run_schedule(args.child, per_batch, init, args.rest, args.iters, args.backend, device)
        print(json.dumps({**row, "scale": scale}))
        return

    print(f"{device_name(device)}, torch {torch.__version__}, k-means backend {args.backend}", flush=True)
    rows = []
    for schedule in ("joint", "one view at a time"):
        command = [sys.executable, __file__, "--child", schedule, *sys.argv[1:]]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{schedule}: failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}")
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"  {schedule}: done in {rows[-1]['seconds']:.0f} s", flush=True)
    lines = [
        "| schedule | scale | initial set per view, GiB | host peak, GiB | GPU peak, GiB | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        gpu = "" if r["gpu_peak_gib"] is None else f"{r['gpu_peak_gib']:.1f}"
        lines.append(
            f"| {r['schedule']} | {r['scale']:g} | {r['initial_set_gib_per_view']:.1f} | {r['host_peak_gib']:.1f} "
            f"| {gpu} | {r['seconds']:.0f} |"
        )
    markdown = "\n".join(lines)
    print("\n" + markdown)
    out = args.out or Path("outputs/benchmarks") / time.strftime("kmeans-memory-%Y%m%d-%H%M%S")
    write_json(out / "results.json", {"parameters": vars(args), "rows": rows, "device": device_name(device),
                                      "environment": environment()})  # fmt: skip
    command = "python benchmarks/kmeans_memory.py " + " ".join(sys.argv[1:])
    (out / "results.md").write_text(f"`{command}`\n\n{device_name(device)}, torch {torch.__version__}\n\n{markdown}\n")
    print(f"\nwrote {out}/results.json and results.md")


if __name__ == "__main__":
    main()
