"""The demo preset's training data path alone, one CPU thread, no worker: ms per image to make both views, and
with their photometric ops, the best of five passes over the built-in training set.

    python benchmarks/demo_data_path.py

To set two versions side by side, run it in each, one after the other (e.g. the other one from a
``git worktree`` with ``PYTHONPATH`` pointing there). Prints one line; writes nothing.
"""

from __future__ import annotations

import time

import torch

from picie_lib.config import load_preset
from picie_lib.data import build_dataset
from picie_lib.loader import Batches
from picie_lib.transforms import augment, draw_view_params


def best_ms_per_image(dataset, cfg, photometric: bool, repeats: int = 5) -> float:
    order = list(range(len(dataset)))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for index, views in Batches(dataset, order, cfg.batch_size_cluster, cfg):
            if photometric:
                augment(views, index, dataset.view_params, dataset.base_size)
        best = min(best, time.perf_counter() - start)
    return 1000 * best / len(dataset)


def main() -> None:
    torch.set_num_threads(1)
    cfg = load_preset("demo").replace(num_workers=0, device="cpu")
    dataset = build_dataset(cfg, "train", "train")
    dataset.set_view_params(draw_view_params(len(dataset), cfg, torch.Generator().manual_seed(0)))
    views, with_photometric = (best_ms_per_image(dataset, cfg, p) for p in (False, True))
    print(
        f"demo data path, {len(dataset)} images of {dataset.base_size} px -> {cfg.res} px views: both views "
        f"{views:.3f} ms per image, with their photometric ops {with_photometric:.3f} ms per image"
    )


if __name__ == "__main__":
    main()
