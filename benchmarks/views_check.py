"""The items a device makes from the files' bytes (nvJPEG and tensor ops on a GPU) against those the workers make
per item on the CPU, same files and parameters: training views and evaluation crops, in grey levels, and the
files each way leaves out. Exits 1 when they are further apart than the limits below.

    python benchmarks/views_check.py OUT_DIR [--n 64] [--device cuda]

Writes a COCO-Stuff layout of ``n`` textured 640x480 JPEGs under OUT_DIR (``epoch.write_root``), then turns
four of the training images into a greyscale, a CMYK and a progressive JPEG and a truncated one. nvJPEG and
libjpeg may round pixels differently, and the GPU resizes in float32 where the CPU resizes in uint8 (each within
2 grey levels of PIL), so the limits are on the mean and on the share of values far apart, not on equality.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from epoch import write_root  # noqa: E402

from picie_lib.config import load_preset  # noqa: E402
from picie_lib.data import CocoStuff27  # noqa: E402
from picie_lib.loader import Batches  # noqa: E402
from picie_lib.transforms import draw_view_params  # noqa: E402

MEAN_LIMIT, FAR, FAR_SHARE_LIMIT = 1.0, 8, 0.01  # grey levels; values more than FAR apart: at most 1 %


def odd_files(dataset: CocoStuff27) -> None:
    """Images 0-3 of ``dataset``: greyscale, CMYK and progressive JPEGs, and a truncated one."""
    image = Image.open(dataset.image_path(0)).convert("RGB")
    image.convert("L").save(dataset.image_path(0), quality=90)
    image.convert("CMYK").save(dataset.image_path(1), quality=90)
    image.save(dataset.image_path(2), quality=90, progressive=True)
    data = dataset.image_path(3).read_bytes()
    dataset.image_path(3).write_bytes(data[: len(data) // 2])


def both_ways(dataset, cfg, device: str) -> tuple[list, list, bool]:
    """The batches made on ``device`` (moved to the CPU) and per item on the CPU, and whether both left out the
    same files (printed)."""
    order = list(range(len(dataset)))
    made = Batches(dataset, order, 16, cfg.replace(device=device), on_device=True)
    per_item = Batches(dataset, order, 16, cfg.replace(device="cpu"), on_device=False)
    made_batches, per_item_batches = [[t.cpu() for t in batch] for batch in made], list(per_item)
    same = made.skipped_files == per_item.skipped_files
    print(
        f"{dataset.mode}: files left out, made on {device} {made.skipped_files}, per item {per_item.skipped_files}: "
        f"{'the same' if same else 'NOT the same'}",
        flush=True,
    )
    return made_batches, per_item_batches, same


def compare(name: str, made: list[torch.Tensor], per_item: list[torch.Tensor], device: str) -> bool:
    """Print one line on how far apart the two ways' pixels are; True if within the limits."""
    diff = (torch.cat(made).int() - torch.cat(per_item).int()).abs().float()
    mean, far = float(diff.mean()), float((diff > FAR).float().mean())
    ok = mean <= MEAN_LIMIT and far <= FAR_SHARE_LIMIT
    print(
        f"{name}, {sum(map(len, made))} images, made on {device} vs per item on the CPU: max {int(diff.max())}, "
        f"mean {mean:.3f} grey levels, {100 * far:.2f} % of values more than {FAR} apart: "
        f"{'within' if ok else 'OUTSIDE'} the limits (mean {MEAN_LIMIT}, {100 * FAR_SHARE_LIMIT:.0f} %)",
        flush=True,
    )
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    root = write_root(args.out / f"coco-views-{args.n}", args.n, max(4, args.n // 8))
    cfg = load_preset("paper").replace(data_root=str(root), num_workers=0, curated=False)
    train = CocoStuff27(root, "train", "train", res=cfg.res, base_res=cfg.base_res, curated=False)
    odd_files(train)
    train.set_view_params(draw_view_params(len(train), cfg, torch.Generator().manual_seed(0)))
    made, per_item, ok = both_ways(train, cfg, args.device)
    for view in (0, 1):
        ok &= compare(f"view {view + 1}", [b[1][:, view] for b in made], [b[1][:, view] for b in per_item], args.device)
    val = CocoStuff27(root, "val", "eval", res=cfg.res, curated=False)
    made, per_item, same = both_ways(val, cfg, args.device)
    ok &= same & compare("evaluation crops", [b[1] for b in made], [b[1] for b in per_item], args.device)
    ok &= compare("labels", [b[2] for b in made], [b[2] for b in per_item], args.device)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
