"""One PiCIE epoch (cluster, label, train passes) and the final evaluation, on a COCO-layout root of
realistic JPEGs, each pass measured three ways side by side in one run:

- **end to end**: the pass as training runs it (``picie_lib.picie.cluster_pass`` ...);
- **data path alone**: the same batches read, decoded and turned into the network's inputs (both
  views, their photometric ops on the device), with no network;
- **network alone** (the floor): the same number of batches of the network's forward passes (and, for
  training, backward passes and Adam steps) on inputs already on the device.

Also the peak resident memory of the main process and of the largest data-loader worker, and the peak
GPU memory. ``--views`` adds the per-image cost of one item's views as the definition computes them
(``reference_views``: photometric ops on the base image) beside the fast path, with their ratio.

    python benchmarks/epoch.py [--n 2048] [--device auto] [--workers 8] [--res 320] [--base-res 640]
                               [--batch 256] [--train-batch 256] [--threads N] [--measure data,network,e2e]
                               [--views] [--root DIR] [--out DIR]

The root (``--n`` train images of 640x480 and ``--n``/8 val images, with label PNGs and curated
lists) is written once under ``outputs/benchmarks/`` and reused. The k-means fits its initial set on
PiCIE's share of the batches (20 of 194, at least one). Writes ``results.json`` and ``results.md``
(parameters, versions, machine, the table) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
from measure import Peaks, device_name, synchronize  # this folder is on sys.path when a script here runs
from PIL import Image

from picie_lib.config import load_preset
from picie_lib.data import build_dataset
from picie_lib.distributed import resolve_device
from picie_lib.evaluate import evaluate_model
from picie_lib.loader import Batches
from picie_lib.losses import class_weights
from picie_lib.model import batch_statistics
from picie_lib.picie import (
    build_model,
    cluster_pass,
    derive_seed,
    label_pass,
    make_criterion,
    permutation,
    picie_loss,
    train_pass,
    view_features,
)
from picie_lib.runs import environment, write_json
from picie_lib.transforms import augment, cut_views, draw_view_params, reference_views, to_network_input

PASSES = ("cluster", "label", "train", "evaluate")
CURATED = "Coco164kFull_Stuff_Coarse_7.txt"
COCO_TRAIN, COCO_VAL = 49_629, 2_175  # COCO-Stuff-27's curated splits (IIC's lists), what Table 2 reads
WAYS = {"e2e": "end to end", "data": "data path alone", "network": "network alone"}


# ---- the data set ----------------------------------------------------------------------------------
def textured_scene(rng: np.random.Generator, height: int = 480, width: int = 640) -> tuple[np.ndarray, np.ndarray]:
    """A photo-like test image: stuff regions (a Voronoi partition) and thing boxes, each a coloured
    grating of its own angle and period plus sensor noise; uint8 (H, W, 3) and fine ids (H, W)."""
    n_regions = int(rng.integers(3, 7))
    seeds = rng.uniform(0, 1, (n_regions, 2)) * (width, height)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    region = np.argmin([(xx - sx) ** 2 + (yy - sy) ** 2 for sx, sy in seeds], axis=0)
    fine = rng.integers(91, 182, n_regions)[region].astype(np.uint8)  # stuff ids
    masks = [region == r for r in range(n_regions)]
    for _ in range(int(rng.integers(0, 4))):  # things on top
        h, w = rng.integers(height // 8, height // 2), rng.integers(width // 8, width // 2)
        top, left = rng.integers(0, height - h), rng.integers(0, width - w)
        box = np.zeros((height, width), dtype=bool)
        box[top : top + h, left : left + w] = True
        fine[box] = rng.integers(0, 91)
        masks = [m & ~box for m in masks] + [box]
    image = np.zeros((height, width, 3), dtype=np.float32)
    for mask in masks:
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 40)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        colour, contrast = rng.uniform(40, 215, 3), rng.uniform(10, 60)
        image[mask] = colour + contrast * wave[mask, None]
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), fine


def _write_scene(task: tuple[Path, str, int, int]) -> None:
    root, folder, index, seed = task
    stem = f"{index + (0 if folder == 'train2017' else 10**6):012d}"
    image, fine = textured_scene(np.random.default_rng([seed, folder == "val2017", index]))
    Image.fromarray(image).save(root / "images" / folder / f"{stem}.jpg", quality=90)
    Image.fromarray(fine).save(root / "annotations" / folder / f"{stem}.png")


def write_root(root: Path, n_train: int, n_val: int, seed: int = 0) -> Path:
    """A COCO-Stuff layout (images, label PNGs, curated lists) of textured 640x480 JPEGs, written once,
    on every core."""
    stamp, wanted = root / "complete.json", {"train": n_train, "val": n_val, "seed": seed, "scenes": 2}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return root
    tasks = []
    for folder, n in (("train2017", n_train), ("val2017", n_val)):
        for kind in ("images", "annotations", "curated"):
            (root / kind / folder).mkdir(parents=True, exist_ok=True)
        ids = [f"{i + (0 if folder == 'train2017' else 10**6):012d}" for i in range(n)]
        (root / "curated" / folder / CURATED).write_text("".join(f"{i}\n" for i in ids))
        tasks += [(root, folder, i, seed) for i in range(n)]
    with ProcessPoolExecutor() as pool:
        for done, _ in enumerate(pool.map(_write_scene, tasks, chunksize=16), 1):
            if done % 512 == 0:
                print(f"  written {done}/{len(tasks)}", flush=True)
    stamp.write_text(json.dumps(wanted))
    return root


# ---- the three measurements of a pass ----------------------------------------------------------------
def data_path(dataset, orders: list[list[int]], batch: int, cfg, device) -> int:
    """Read ``orders`` as the pass reads them and make the network's inputs; returns images read."""
    images = 0
    for order in orders:
        for index, pixels, *_ in Batches(dataset, order, batch, cfg):
            if dataset.mode == "train":
                augment(pixels, index, dataset.view_params, dataset.base_size, device)
            else:
                to_network_input(pixels, device)
            images += len(index)
    synchronize(device)
    return images


def read_all(reads: list[tuple], cfg, device) -> int:
    return sum(data_path(dataset, orders, batch, cfg, device) for dataset, orders, batch in reads)


def network_alone(model, optimizer, cfg, device, batches: list[int], kind: str) -> None:
    """The network's work of a pass on inputs already on the device: ``kind`` "two views" (cluster,
    label), "train" (both views, the loss, backward, Adam) or "one view" (evaluation)."""
    res, h = cfg.res, cfg.res // 4
    params = draw_view_params(max(batches), cfg, torch.Generator().manual_seed(0))
    x = torch.randn(max(batches), 3, res, res, device=device)
    centroids = torch.nn.functional.normalize(torch.randn(2, cfg.n_clusters, 128, device=device), dim=2)
    labels = torch.randint(0, cfg.n_clusters, (2, max(batches), h, h), device=device)
    criterion = make_criterion(cfg, "ce")
    for b in batches:
        crop, flip = params.crop[:b], params.flip[:b]
        if kind == "train":
            model.train()
            f1, f2 = view_features(model, x[:b], x[:b], crop, flip, cfg)
            loss, _ = picie_loss(f1, f2, labels[0, :b], labels[1, :b], centroids, [None, None], criterion, 1.0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        else:
            with torch.no_grad(), batch_statistics(model):
                view_features(model, x[:b], x[:b], crop, flip, cfg, which=(0, 1) if kind == "two views" else (0,))
    synchronize(device)


def batch_sizes(n: int, batch: int) -> list[int]:
    return [min(batch, n - start) for start in range(0, n, batch)]


def timed(device, fn, *args) -> tuple[float, Peaks, object]:
    """Seconds and memory peaks of ``fn(*args)``, and what it returned."""
    with Peaks(device) as peaks:
        synchronize(device)
        start = time.perf_counter()
        out = fn(*args)
        synchronize(device)
        seconds = time.perf_counter() - start
    return seconds, peaks, out


def measure_epoch(cfg, device, measure: set[str]) -> dict:
    train_set = build_dataset(cfg, "train", mode="train")
    n = len(train_set)
    train_set.set_view_params(draw_view_params(n, cfg, torch.Generator().manual_seed(derive_seed(cfg.seed, 1, 1))))
    cluster_order = permutation(n, derive_seed(cfg.seed, 1, 2))
    train_order = permutation(n, derive_seed(cfg.seed, 1, 3))
    eval_train = build_dataset(cfg, "train", mode="eval")
    eval_val = build_dataset(cfg, "val", mode="eval")
    model = build_model(cfg, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    head = cluster_order[: cfg.kmeans_init_batches * cfg.batch_size_cluster]
    cb, tb, eb = cfg.batch_size_cluster, cfg.batch_size_train, cfg.eval_batch_size
    passes = {  # what each pass reads (data path), its network batches and their kind
        "cluster": ([head, head, cluster_order[len(head) :]], cb, "two views"),  # the head once per view
        "label": ([cluster_order], cb, "two views"),
        "train": ([train_order], tb, "train"),
    }
    state: dict = {}

    def end_to_end(name: str):
        if name == "cluster":
            state["centroids"] = cluster_pass(model, train_set, cluster_order, cfg, derive_seed(cfg.seed, 1, 4))[0]
        elif name == "label":
            state["labels"], state["counts"] = label_pass(model, train_set, cluster_order, state["centroids"], cfg)
        elif name == "train":
            weights = [class_weights(c, cfg.balance) for c in state["counts"]]
            criterion = make_criterion(cfg, "ce")
            train_pass(model, optimizer, train_set, train_order, state["labels"], state["centroids"], weights,
                       criterion, cfg, 1)  # fmt: skip
        else:
            evaluate_model(model, cfg, eval_train, eval_val)

    if cfg.num_workers:  # the workers' fork server starts once per job (2-3 s), not in a measured pass
        next(iter(Batches(eval_val, [0], 1, cfg)))
    results = {}
    for name in PASSES:
        row = {}
        if name == "evaluate":
            reads = [(eval_train, [list(range(len(eval_train)))], cb), (eval_val, [list(range(len(eval_val)))], eb)]
            sizes, kind = batch_sizes(len(eval_train), cb) + batch_sizes(len(eval_val), eb), "one view"
            images = len(eval_train) + len(eval_val)
        else:
            orders, batch, kind = passes[name]
            reads = [(train_set, orders, batch)]
            sizes, images = [s for order in orders for s in batch_sizes(len(order), batch)], n
            if name == "cluster":  # the head is read twice, but each view goes through the network once
                sizes = batch_sizes(len(head), cb) + batch_sizes(n - len(head), cb)
        if "data" in measure:
            seconds, peaks, counted = timed(device, read_all, reads, cfg, device)
            row["data"] = {"seconds": seconds, "images": counted, "host_gib": peaks.host_gib}
        if "network" in measure:
            network_alone(model, optimizer, cfg, device, sizes[:1], kind)  # warm-up
            seconds, peaks, _ = timed(device, network_alone, model, optimizer, cfg, device, sizes, kind)
            row["network"] = {"seconds": seconds, "images": sum(sizes), "gpu_gib": peaks.gpu_gib}
        if "e2e" in measure:
            seconds, peaks, _ = timed(device, end_to_end, name)
            row["e2e"] = {
                "seconds": seconds,
                "images": images,
                "host_gib": peaks.host_gib,
                "worker_gib": peaks.children_gib,
                "gpu_gib": peaks.gpu_gib,
            }
        results[name] = row
        print(f"  {name}: " + ", ".join(f"{k} {v['seconds']:.1f} s" for k, v in row.items()), flush=True)
    return results


def views_side_by_side(cfg, n: int) -> dict:
    """ms per item of both views: the definition (photometric ops on the base image, one item at a
    time) against the fast path (geometry per item, photometric ops on the batch), same items."""
    dataset = build_dataset(cfg.replace(max_images=n), "train", mode="train")
    params = draw_view_params(len(dataset), cfg, torch.Generator().manual_seed(0))
    dataset.set_view_params(params)
    bases = [dataset.load(i)[0] for i in range(len(dataset))]  # the square base images, decoded
    start = time.perf_counter()
    for i, base in enumerate(bases):
        reference_views(base.float() / 255, params, i, cfg.res)
    reference = (time.perf_counter() - start) / len(bases)
    start = time.perf_counter()
    geometry = [
        cut_views(base[None], params.crop[i : i + 1], params.flip[i : i + 1], cfg.res)[0]
        for i, base in enumerate(bases)
    ]
    per_item = (time.perf_counter() - start) / len(bases)
    start = time.perf_counter()
    for lo in range(0, len(geometry), 32):
        augment(
            torch.stack(geometry[lo : lo + 32]), torch.arange(lo, min(lo + 32, len(geometry))), params, cfg.base_res
        )
    batched = (time.perf_counter() - start) / len(bases)
    return {
        "items": len(bases),
        "definition_ms": 1000 * reference,
        "geometry_ms": 1000 * per_item,
        "photometric_ms": 1000 * batched,
        "ratio": reference / (per_item + batched),
    }


# ---- the report ----------------------------------------------------------------------------------------
def rate(entry: dict | None) -> float | None:
    return entry["images"] / entry["seconds"] if entry else None


def table(results: dict, n: int) -> str:
    def cell(value, fmt="{:.0f}"):
        return "" if value is None else fmt.format(value)

    lines = [
        "| pass | end to end, images/s | data path alone, images/s | network alone, images/s | "
        "end to end / network | host peak, GiB | largest worker's peak, GiB | GPU peak, GiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in PASSES:
        row = results[name]
        e2e, data, net = row.get("e2e"), row.get("data"), row.get("network")
        ratio = rate(e2e) / rate(net) if e2e and net else None
        host = max((r["host_gib"] or 0) for r in (e2e, data) if r) if (e2e or data) else None
        lines.append(
            f"| {name} | {cell(rate(e2e), '{:.1f}')} | {cell(rate(data), '{:.1f}')} | {cell(rate(net), '{:.1f}')} | "
            f"{cell(ratio, '{:.2f}')} | {cell(host, '{:.1f}')} | {cell(e2e and e2e['worker_gib'], '{:.1f}')} | "
            f"{cell(e2e and e2e['gpu_gib'], '{:.1f}')} |"
        )
    epoch = {}
    for key in ("e2e", "data", "network"):
        if all(key in results[p] for p in ("cluster", "label", "train")):
            epoch[key] = n / sum(results[p][key]["seconds"] for p in ("cluster", "label", "train"))
    if epoch:
        ratio = epoch["e2e"] / epoch["network"] if "e2e" in epoch and "network" in epoch else None
        lines.append(
            f"| **epoch** (cluster + label + train) | {cell(epoch.get('e2e'), '{:.1f}')} | "
            f"{cell(epoch.get('data'), '{:.1f}')} | {cell(epoch.get('network'), '{:.1f}')} | {cell(ratio, '{:.2f}')} "
            "| | | |"
        )
    return "\n".join(lines)


def table2_hours(results: dict, epochs: dict[str, int]) -> dict[str, float]:
    """Hours Table 2 would take on COCO-Stuff-27 at this run's per-image costs, for each way measured: every
    method's ``epochs`` of the three passes over the 49,629 training images, and one evaluation per method
    (its fresh k-means over the training images and its scores over the 2,175 validation images)."""
    hours = {}
    for way in WAYS:
        if not all(way in results[p] for p in PASSES):
            continue
        per_image = {p: results[p][way]["seconds"] / results[p][way]["images"] for p in PASSES}
        epoch = COCO_TRAIN * sum(per_image[p] for p in ("cluster", "label", "train"))
        evaluation = (COCO_TRAIN + COCO_VAL) * per_image["evaluate"]
        hours[way] = (sum(epochs.values()) * epoch + len(epochs) * evaluation) / 3600
    return hours


def table2_line(hours: dict[str, float], epochs: dict[str, int]) -> str:
    plan = " + ".join(str(e) for e in epochs.values())
    measured = "; ".join(f"{WAYS[w]} {h:.2f} h" for w, h in hours.items())
    return (
        f"Table 2 on COCO-Stuff-27 ({COCO_TRAIN:,} train / {COCO_VAL:,} val images; {plan} epochs and one "
        f"evaluation per method) at these per-image costs: {measured}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2048, help="train images (val: n / 8)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=None, help="data-loader workers (default: CPU cores - 1)")
    parser.add_argument("--res", type=int, default=320)
    parser.add_argument("--base-res", type=int, default=640)
    parser.add_argument("--batch", type=int, default=256, help="clustering, labelling and evaluation batch")
    parser.add_argument("--train-batch", type=int, default=None, help="training batch (default: --batch)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the main process")
    parser.add_argument("--measure", default="data,network,e2e", help="any of data, network, e2e")
    parser.add_argument("--views", action="store_true", help="also: one item's views, definition vs fast path")
    parser.add_argument("--amp", action="store_true", help="bf16 autocast (the paper preset: float32)")
    parser.add_argument("--both", action="store_true", help="float32 and bf16 side by side, in this one run")
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    workers = args.workers if args.workers is not None else max(0, (torch.multiprocessing.cpu_count() or 1) - 1)
    device = resolve_device(args.device)
    root = args.root or Path("outputs/benchmarks") / f"coco-{args.n}"
    print(f"root {root}: {args.n} train, {max(1, args.n // 8)} val images of 640x480", flush=True)
    write_root(root, args.n, max(1, args.n // 8))
    init_batches = max(1, round(20 / 194 * math.ceil(args.n / args.batch)))
    cfg = load_preset(
        "paper",
        data_root=str(root),
        pretrained=None,
        res=args.res,
        base_res=args.base_res,
        batch_size_cluster=args.batch,
        batch_size_train=args.train_batch or args.batch,
        eval_batch_size=args.batch,
        kmeans_init_batches=init_batches,
        num_workers=workers,
        device=str(device),
        amp=args.amp,
    )
    print(
        f"{device_name(device)}, torch {torch.__version__}, {workers} workers, views {args.res} px from "
        f"{args.base_res} px bases, batch {cfg.batch_size_cluster} / train {cfg.batch_size_train}, "
        f"k-means initial fit on {init_batches} batch(es), {'bf16' if args.amp else 'float32'}",
        flush=True,
    )
    epochs = {loss: cfg.epochs_for(loss) for loss in ("ce", "focal", "ib_focal")}
    precisions = (False, True) if args.both else (cfg.amp,)
    out = args.out or Path("outputs/benchmarks") / time.strftime("epoch-%Y%m%d-%H%M%S")
    parameters = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    meta = {"parameters": {**parameters, "workers": workers, "kmeans_init_batches": init_batches}}
    flags = " ".join(
        "--" + k.replace("_", "-") + ("" if v is True else f" {v}")
        for k, v in parameters.items()
        if v is not None and v is not False
    )
    header = f"`python benchmarks/epoch.py {flags}`\n\n{device_name(device)}, torch {torch.__version__}, "
    header += f"{workers} workers"

    def save(report: dict, markdown: str) -> None:
        """results.json and results.md with what is measured so far (a run ended early keeps its first tables)."""
        info = {"config": cfg.to_dict(), "device": device_name(device), "environment": environment()}
        write_json(out / "results.json", {**meta, **report, **info})
        (out / "results.md").write_text(f"{header}\n\n{markdown}\n")

    report, sections = {}, []
    for amp in precisions:
        name = "bf16" if amp else "float32"
        print(f"{name}:", flush=True)
        results = measure_epoch(cfg.replace(amp=amp), device, set(args.measure.split(",")))
        hours = table2_hours(results, epochs)
        report[name] = {"epoch": results, "table2_hours": hours}
        sections.append(f"**{name}**\n\n{table(results, args.n)}\n\n{table2_line(hours, epochs)}")
        save(report, "\n\n".join(sections))
    if args.both and report["float32"]["table2_hours"].get("e2e") and report["bf16"]["table2_hours"].get("e2e"):
        speedup = report["float32"]["table2_hours"]["e2e"] / report["bf16"]["table2_hours"]["e2e"]
        sections.append(f"bf16 against float32, end to end, same run: x{speedup:.2f}.")
    markdown = "\n\n".join(sections)
    if args.views:
        report["views"] = views_side_by_side(cfg, min(args.n, 256))
        v = report["views"]
        markdown += (
            f"\n\nBoth views of one item, {v['items']} items, one after another: the definition (photometric ops "
            f"on the {args.base_res} px base) {v['definition_ms']:.1f} ms; the fast path {v['geometry_ms']:.1f} ms "
            f"of geometry (a worker's share) + {v['photometric_ms']:.1f} ms of photometric ops (batched): "
            f"x{v['ratio']:.1f}."
        )
    print("\n" + markdown)
    save(report, markdown)
    print(f"\nwrote {out}/results.json and results.md")


if __name__ == "__main__":
    main()
