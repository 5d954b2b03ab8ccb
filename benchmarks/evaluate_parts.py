"""Where the final evaluation's time goes: one evaluation (``evaluate_model``, one k-means draw), profiled.

    python benchmarks/evaluate_parts.py RUN_DIR [--device auto] [--out DIR]
    python benchmarks/evaluate_parts.py --preset demo [-p KEY=VALUE ...] [--out DIR]

RUN_DIR scores a trained run's weights; ``--preset`` the untrained network of a preset (``-p`` overrides,
e.g. ``-p data_root=ROOT`` for the COCO-layout root of ``benchmarks/epoch.py``). The items are read in
this process (``num_workers: 0``), so that reading is profiled with the rest. Each part is the cumulative
time of the functions that do it (cProfile, so every part carries a little of the profiler's cost): reading
and cutting the images, the network's features, the k-means fit, the predictions' upsampling and argmax,
the confusion matrix, the per-object fragment counts and the matching with the scores. Then the fragment
counts side by side: ``metrics.ObjectFragments`` (one labelling of the image's (class, prediction) pairs)
against the definition written plainly (``fragments_by_object``: one labelling per object and per cluster
inside it), on blobby maps of 27 predicted values and 8 classes at the demo's 96 px and the paper's 320 px.
Writes ``evaluate_parts.json`` and ``evaluate_parts.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time
from pathlib import Path

import numpy as np
from measure import device_name  # this folder is on sys.path when a script here runs
from scipy import ndimage

from picie_lib.config import load_config, load_preset, parse_overrides
from picie_lib.data import build_dataset
from picie_lib.distributed import resolve_device
from picie_lib.evaluate import evaluate_model
from picie_lib.metrics import ObjectFragments
from picie_lib.picie import build_model
from picie_lib.runs import environment
from picie_lib.scores import load_trained_model

# part -> (file suffix, function name) whose cumulative time it is
PARTS = {
    "reading images": ("picie_lib/data/base.py", "__getitem__"),
    "network features": ("picie_lib/picie.py", "network_features"),
    "k-means fit": ("picie_lib/clustering.py", "update"),
    "predict (network, upsampling, argmax)": ("picie_lib/evaluate.py", "predict"),
    "confusion matrix": ("picie_lib/metrics.py", "update"),
    "fragments per object": ("picie_lib/metrics.py", "update"),
    "matching and scores": ("picie_lib/metrics.py", "protocol_scores"),
}


def fragments_by_object(pred, target, num_classes: int, min_piece: float = 0.05, min_object_pixels: int = 16):
    """Fragments per object by the definition, written plainly: every ground-truth object labelled on its own,
    every predicted value inside it labelled on its own. Returns the per-class sums of pieces and objects."""
    fragments, objects = np.zeros(num_classes), np.zeros(num_classes, dtype=int)
    for cls in np.unique(target[target >= 0]):
        labels, _ = ndimage.label(target == cls)
        for j, box in enumerate(ndimage.find_objects(labels), start=1):
            mask = labels[box] == j
            area = int(mask.sum())
            if area < min_object_pixels:
                continue
            inside = pred[box]
            pieces = 0
            for cluster in np.unique(inside[mask]):
                parts, _ = ndimage.label(mask & (inside == cluster))
                pieces += int((np.bincount(parts.ravel())[1:] >= min_piece * area).sum())
            fragments[cls] += max(pieces, 1)
            objects[cls] += 1
    return fragments, objects


def blobs(rng: np.random.Generator, levels: int, size: tuple[int, int], sigma: float) -> np.ndarray:
    """Smoothed noise cut into ``levels`` equal-area values: a map of connected regions of many sizes."""
    field = ndimage.gaussian_filter(rng.normal(size=size), sigma=sigma)
    return np.digitize(field, np.quantile(field, np.linspace(0, 1, levels + 1)[1:-1]))


def fragments_side_by_side(side: int, images: int) -> dict:
    """ms per image of the two fragment counts on the same maps (checked equal)."""
    rng = np.random.default_rng(0)
    maps = [
        (blobs(rng, 27, (side, side), side / 24) - 1, blobs(rng, 8, (side, side), side / 12)) for _ in range(images)
    ]
    start = time.perf_counter()
    plain = [fragments_by_object(pred, target, 8) for pred, target in maps]
    plain_ms = 1000 * (time.perf_counter() - start) / images
    counter = ObjectFragments(8)
    start = time.perf_counter()
    for pred, target in maps:
        counter.update(pred, target)
    fast_ms = 1000 * (time.perf_counter() - start) / images
    assert np.array_equal(counter.fragments, sum(f for f, _ in plain)), "the two counts differ"
    return {"side": side, "images": images, "per_object_ms": plain_ms, "pair_map_ms": fast_ms}


def cumulative(stats: pstats.Stats, suffix: str, name: str, line_of: dict[str, int]) -> float:
    total = 0.0
    for (path, line, function), (_, _, _, cum, _) in stats.stats.items():
        if path.endswith(suffix) and function == name and (name not in line_of or line == line_of[name]):
            total += cum
    return total


def profile_evaluation(model, cfg) -> dict:
    train_set, val_set = build_dataset(cfg, "train", mode="eval"), build_dataset(cfg, "val", mode="eval")
    evaluate_model(model, cfg, train_set, val_set)  # warm-up: first-call costs out of the figures
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.enable()
    evaluate_model(model, cfg, train_set, val_set)
    profiler.disable()
    total = time.perf_counter() - start
    stats = pstats.Stats(profiler)
    from picie_lib import metrics  # the two update methods of metrics.py are told apart by their lines

    lines = {"confusion matrix": metrics.ConfusionMatrix.update.__code__.co_firstlineno,
             "fragments per object": metrics.ObjectFragments.update.__code__.co_firstlineno}  # fmt: skip
    parts = {}
    for part, (suffix, name) in PARTS.items():
        parts[part] = cumulative(stats, suffix, name, {name: lines[part]} if part in lines else {})
    return {"seconds": total, "parts": parts, "train_images": len(train_set), "val_images": len(val_set)}


def markdown(result: dict) -> str:
    total = result["seconds"]
    lines = [f"One evaluation (one k-means draw): {total:.2f} s for {result['train_images']} train and "
             f"{result['val_images']} val images on {result['device']}.", "",
             "| part | s | share of the evaluation |", "|---|---|---|"]  # fmt: skip
    for part, seconds in result["parts"].items():
        lines.append(f"| {part} | {seconds:.2f} | {100 * seconds / total:.0f} % |")
    lines += [
        "",
        "Parts nest: the network's features on val are counted in predict too; the k-means fit is the "
        "k-means' own work on the features.",
        "",
        "| fragments per object, ms per image | per object and cluster (the definition) | one labelling of the "
        "pair map | ratio |",
        "|---|---|---|---|",
    ]
    for row in result.get("fragments", []):
        plain, fast = row["per_object_ms"], row["pair_map_ms"]
        where = f"{row['side']} x {row['side']} px, {row['images']} images"
        lines.append(f"| {where} | {plain:.1f} | {fast:.1f} | x{plain / fast:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, nargs="?", help="a trained run's folder")
    parser.add_argument("--preset", default=None, help="profile a preset's untrained network instead")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/evaluate_parts"))
    args = parser.parse_args()
    if (args.run_dir is None) == (args.preset is None):
        parser.error("give a RUN_DIR or --preset, one of the two")
    overrides = {**parse_overrides(args.param), "num_workers": 0, "eval_seeds": 1}
    if args.run_dir is not None:
        cfg = load_config(args.run_dir / "config.json").replace(**overrides)
        model = load_trained_model(args.run_dir, cfg)
    else:
        cfg = load_preset(args.preset).replace(**overrides)
        model = build_model(cfg, resolve_device(cfg.device))
    result = profile_evaluation(model, cfg)
    result["fragments"] = [fragments_side_by_side(96, 100), fragments_side_by_side(320, 20)]
    result.update(device=device_name(next(model.parameters()).device), config=cfg.to_dict(), environment=environment())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "evaluate_parts.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    (args.out / "evaluate_parts.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
