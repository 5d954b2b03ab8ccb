"""GPU memory and time of one PiCIE training step (both views, the four loss terms, backward,
Adam) at the paper's size, per batch size and precision, measured side by side in one run.

    python benchmarks/train_memory.py [--res 320] [--batches 64 128 256] [--device cuda]

Prints the peak memory (torch.cuda.max_memory_allocated) and images/s of each variant; a batch
that does not fit prints "out of memory". These numbers size the paper preset's batch.
"""

from __future__ import annotations

import argparse

import torch
from measure import best_seconds  # this folder is on sys.path when a script here runs

from picie_lib.config import load_preset
from picie_lib.distributed import resolve_device
from picie_lib.picie import build_model, make_criterion, picie_loss, view_features
from picie_lib.transforms import draw_view_params


def training_step_cost(cfg, device: torch.device, batch: int, repeats: int) -> tuple[float, float]:
    """(peak GiB, images/s) of the IB-Focal training step, the costliest of the three losses."""
    model = build_model(cfg, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    params = draw_view_params(batch, cfg, torch.Generator().manual_seed(0))
    view1 = torch.randn(batch, 3, cfg.res, cfg.res)
    view2 = torch.randn(batch, 3, cfg.res, cfg.res)
    centroids = torch.nn.functional.normalize(torch.randn(2, cfg.n_clusters, 128), dim=2).to(device)
    h = cfg.res // 4
    labels = torch.randint(0, cfg.n_clusters, (2, batch, h, h), device=device)
    criterion = make_criterion(cfg, "ib_focal")

    def step() -> None:
        f1, f2 = view_features(model, view1, view2, params.crop, params.flip, cfg)
        loss, _ = picie_loss(f1, f2, labels[0], labels[1], centroids, [None, None], criterion, cfg.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    step()  # warm-up, and the peak: Adam's state exists from the first step on
    seconds = best_seconds(step, device, repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return peak, batch / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", type=int, default=320)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}, res {args.res}, IB-Focal step (two views, four terms, Adam)")
    print(f"{'batch':>6} {'precision':>22} {'peak GiB':>9} {'images/s':>9}")
    for batch in args.batches:
        for label, amp in (("float32, channels-last", False), ("bf16 autocast", True)):
            cfg = load_preset("paper", res=args.res, amp=amp, pretrained=None, device=args.device)
            try:
                peak, speed = training_step_cost(cfg, device, batch, args.repeats)
                print(f"{batch:>6} {label:>22} {peak:>9.1f} {speed:>9.1f}", flush=True)
            except torch.OutOfMemoryError:
                print(f"{batch:>6} {label:>22} {'out of memory':>19}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
