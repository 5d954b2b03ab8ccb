"""Throughput of the network's forward pass and training step under the memory-format and
precision options (``channels_last``, ``amp``), measured side by side in one run.

    python benchmarks/model_throughput.py [--res 96] [--batch 32] [--device auto] [--repeats 5]

Prints images/s for each variant and its ratio to the float32, contiguous baseline. These numbers
chose the defaults: channels-last always (same numbers, faster), bf16 autocast in the demo preset.
"""

from __future__ import annotations

import argparse

import torch
from measure import best_seconds, device_name  # this folder is on sys.path when a script here runs

from picie_lib.config import Config
from picie_lib.distributed import resolve_device
from picie_lib.picie import build_model, network_features

VARIANTS = {
    "float32, contiguous": dict(channels_last=False, amp=False),
    "float32, channels-last": dict(channels_last=True, amp=False),
    "bf16 autocast, channels-last": dict(channels_last=True, amp=True),
}


def images_per_second(cfg: Config, device: torch.device, res: int, batch: int, repeats: int, train: bool) -> float:
    model = build_model(cfg, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 3, res, res, device=device)

    def step() -> None:
        if train:
            loss = network_features(model, x, cfg).square().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        else:
            with torch.no_grad():
                network_features(model, x, cfg)

    step()  # warm-up
    return batch / best_seconds(step, device, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--res", type=int, default=96)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"PanopticFPN, {args.res} px, batch {args.batch}, {device_name(device)}, torch {torch.__version__}")
    for train in (False, True):
        print(f"\n{'training step' if train else 'forward (no grad)'}:")
        base = None
        for label, options in VARIANTS.items():
            cfg = Config(device=args.device, **options)
            ips = images_per_second(cfg, device, args.res, args.batch, args.repeats, train)
            base = base or ips
            print(f"  {label:30s} {ips:9.1f} images/s   x{ips / base:.2f}")


if __name__ == "__main__":
    main()
