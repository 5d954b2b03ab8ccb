"""The training views a device makes from the files' bytes (nvJPEG and tensor ops on a GPU) against those the
workers make per item on the CPU, same files and parameters: how far apart they are, in grey levels.

    python benchmarks/views_check.py ROOT [--n 64] [--device cuda]

ROOT: a COCO-Stuff layout (``benchmarks/epoch.py`` writes one). nvJPEG and libjpeg may round a few pixels
differently; the resizes are PIL's filter within one grey level on both. Prints one line per view and writes
nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from picie_lib.config import load_preset
from picie_lib.data import CocoStuff27
from picie_lib.loader import Batches
from picie_lib.transforms import draw_view_params


def views_both_ways(root: Path, n: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, 2, 3, 320, 320) views of the first ``n`` train images: made on ``device``, and per item on the CPU."""
    cfg = load_preset("paper").replace(data_root=str(root), num_workers=0, max_images=n)
    dataset = CocoStuff27(root, "train", "train", res=cfg.res, base_res=cfg.base_res, curated=False, max_images=n)
    dataset.set_view_params(draw_view_params(len(dataset), cfg, torch.Generator().manual_seed(0)))
    order = list(range(len(dataset)))
    made = [views.cpu() for _, views in Batches(dataset, order, 32, cfg.replace(device=device), on_device=True)]
    per_item = [views for _, views in Batches(dataset, order, 32, cfg.replace(device="cpu"), on_device=False)]
    return torch.cat(made), torch.cat(per_item)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    made, per_item = views_both_ways(args.root, args.n, args.device)
    for view in (0, 1):
        diff = (made[:, view].int() - per_item[:, view].int()).abs()
        print(
            f"view {view + 1}, {len(made)} images, made on {args.device} vs per item on the CPU: "
            f"max {int(diff.max())}, "
            f"mean {float(diff.float().mean()):.3f} grey levels, {float((diff > 2).float().mean()) * 100:.2f} % of "
            "values more than 2 apart",
            flush=True,
        )


if __name__ == "__main__":
    main()
