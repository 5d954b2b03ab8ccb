"""The loss swaps' options, measured one at a time from the defaults (docs/loss-options.md).

Each variant changes one parameter of one method from the preset's defaults; every variant runs on
the preset's seeds (default 0, 1, 2 on the built-in data set's seed 0) and on other data seeds (default
1, training seed 0), and is evaluated as ``python -m picie_lib evaluate`` does. The untrained network's
k-means (the floor) and PiCIE (CE) with the defaults are measured on the same seeds, for reference.

    python experiments/loss_options.py [--preset demo] [--seeds 0 1 2] [--data-seeds 1]
                                       [--variants NAME ...] [--out outputs/loss-options] [-p KEY=VALUE ...]

Finished runs are kept: a rerun into the same ``--out`` trains only what is missing (a run whose
configuration changed is trained again). Writes ``results.{csv,json,md}`` (one row per variant: mean
and sample standard deviation over the seeds of the six numbers, then each other data seed's numbers)
and ``runs.csv`` (every run's numbers, the IB-Focal switch epoch, the largest training loss after it and how
far its phase moved the weights: relative L2 from the switch's weights).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from picie_lib.claims import COLUMNS, HEADERS
from picie_lib.config import RUNTIME_KEYS, differences, load_preset, parse_override
from picie_lib.distributed import resolve_device
from picie_lib.evaluate import evaluate_model, evaluate_rgb
from picie_lib.picie import build_model
from picie_lib.runs import atomic_write_text, csv_text, environment, read_jsonl, write_json
from picie_lib.scores import evaluate_run, read_metrics, write_evaluation
from picie_lib.train import movement_per_epoch, train

# name: (method, the changed parameters, what the change is and where it comes from)
VARIANTS = {
    "floor": ("untrained", {}, "k-means on the untrained network (reference)"),
    "rgb": ("rgb_kmeans", {}, "k-means on RGB pixels (reference)"),
    "floor, bn_eval=running": ("untrained", {"bn_eval": "running"}, "the floor scored on running statistics"),
    "ce": ("ce", {}, "PiCIE (CE), defaults (reference)"),
    "ce, bn_eval=running": ("ce", {"bn_eval": "running"}, "PiCIE's code: labels and scores on running statistics"),
    "focal": ("focal", {}, "Focal, defaults: no class weights (the paper's FL)"),
    "focal, focal_balance=picie": ("focal", {"focal_balance": "picie"}, "Focal with PiCIE's class weights"),
    "ib_focal": ("ib_focal", {}, "IB-Focal, defaults: Adam's rate kept, its moments restarted at the switch"),
    "ib_focal, literal": (
        "ib_focal",
        {"ib_lr_factor": 0.01, "ib_reset_optimizer": False},
        "the IB authors' SGD schedule carried to Adam as written: rate x 0.01 at the switch, moments kept",
    ),
    "ib_focal, drop-in": (
        "ib_focal",
        {"ib_lr_factor": 1.0, "ib_reset_optimizer": False},
        "PiCIE's optimizer untouched (rate and moments as they were): a drop-in loss swap",
    ),
    "ib_focal, alpha matched": (
        "ib_focal",
        {"ib_alpha_match": True, "ib_lr_factor": 1.0, "ib_reset_optimizer": False},
        "alpha set so the IB loss equals CE's at the switch (the IB author's rule), moments kept",
    ),
    "ib_focal, alpha matched and reset": (
        "ib_focal",
        {"ib_alpha_match": True, "ib_lr_factor": 1.0, "ib_reset_optimizer": True},
        "alpha matched at the switch and Adam's moments restarted",
    ),
    "ib_focal, switch=global_min": (
        "ib_focal",
        {"switch": "global_min"},
        "IB-Focal from the lowest CE loss over half the epochs instead of the first rise",
    ),
    "ib_focal, ib_weighted_pt=false": ("ib_focal", {"ib_weighted_pt": False}, "p_t from the unweighted softmax"),
    "ib_focal, ib_feature=raw": ("ib_focal", {"ib_feature": "raw"}, "L1 norm of the feature before normalisation"),
    "ib_focal, ib_gamma=1": ("ib_focal", {"ib_gamma": 1.0}, "the IB authors' focal exponent"),
    "ib_focal, balance=none": ("ib_focal", {"balance": "none"}, "CE phase without class weights (IB authors)"),
    "ib_focal, ib_detach=true": ("ib_focal", {"ib_detach": True}, "the IB factor as a weight, no gradient through it"),
}


def run(cfg, out: Path, method: str) -> dict:
    """Train (unless done) and evaluate one run; returns its metrics and training summary."""
    metrics_path = out / "metrics.json"
    if metrics_path.is_file():
        saved = read_metrics(metrics_path)
        if not differences(saved.get("config", {}), cfg, RUNTIME_KEYS):
            return saved | {"log": read_jsonl(out / "log.jsonl")}
    if method in ("untrained", "rgb_kmeans"):
        out.mkdir(parents=True, exist_ok=True)
        if method == "untrained":
            result = evaluate_model(build_model(cfg, resolve_device(cfg.device)), cfg)
        else:
            result = evaluate_rgb(cfg)
        write_evaluation(out, result, method, cfg)
        return read_metrics(metrics_path) | {"log": []}
    train(cfg, out, resume=True)
    evaluate_run(out)
    return read_metrics(metrics_path) | {"log": read_jsonl(out / "log.jsonl")}


SCHEDULE_COLUMNS = ("acc_all", "miou_all")  # the scores the schedule table follows through the switch


def run_record(name: str, seed: int, data_seed: int, result: dict) -> dict:
    """One run's row of ``runs.csv``: its six numbers and, for IB-Focal, where it switched, its largest loss after
    the switch, how far an IB epoch moved the weights against a CE epoch, its scores at the switch and the IB
    phase's own effect (final minus at-switch, with the evaluation's standard error)."""
    log = [r for r in result["log"] if not r.get("discarded")]
    after = [r["loss"] for r in log if r["phase"] == "ib_focal"]
    moved = movement_per_epoch(log)
    record = {"variant": name, "seed": seed, "data_seed": data_seed, **{c: result["scores"][c] for c in COLUMNS}}
    record.update(
        switch_epoch=next((r["epoch"] for r in log if r["phase"] == "ib_focal"), None),
        loss_after_switch=max(after) if after else None,
        ib_alpha=next((r["ib_alpha"] for r in log if "ib_alpha" in r), None),
        moved_ce_epoch=moved.get("ce"),
        moved_ib_epoch=moved.get("ib_focal"),
        moved_ratio=moved["ib_focal"] / moved["ce"] if {"ce", "ib_focal"} <= set(moved) else None,
    )
    effect = result.get("ib_phase_effect", {}).get("scores", {})
    for c in SCHEDULE_COLUMNS:
        record[f"{c}_at_switch"] = result["at_switch"]["scores"][c] if "at_switch" in result else None
        record[f"{c}_effect"] = effect.get(c, {}).get("difference")
        record[f"{c}_effect_eval_se"] = effect.get(c, {}).get("se")
    return record


def summarise(name: str, runs: list[dict], seeds: list[int], data_seeds: list[int]) -> dict:
    row = {"variant": name, "method": VARIANTS[name][0], "change": VARIANTS[name][2]}
    main = [r for r in runs if r["data_seed"] == 0 and r["seed"] in seeds]
    for c in COLUMNS:
        values = [r[c] for r in main]
        row[f"{c}_mean"] = float(np.mean(values))
        row[f"{c}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    for d in data_seeds:
        other = [r for r in runs if r["data_seed"] == d]
        for c in COLUMNS:
            row[f"{c}_data{d}"] = other[0][c] if other else math.nan
    row["switch_epochs"] = sorted({r["switch_epoch"] for r in runs if r.get("switch_epoch")})
    row["largest_loss_after_switch"] = max((r["loss_after_switch"] or 0.0 for r in runs), default=0.0)
    for key in ("moved_ratio", *(f"{c}_at_switch" for c in SCHEDULE_COLUMNS)):
        values = [r[key] for r in main if r.get(key) is not None]
        row[f"{key}_mean"] = float(np.mean(values)) if values else math.nan
        row[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else math.nan
    for c in SCHEDULE_COLUMNS:  # the IB phase's own effect: paired over seeds, and the evaluation's part of it
        effects = [r for r in main if r.get(f"{c}_effect") is not None]
        values = [r[f"{c}_effect"] for r in effects]
        row[f"{c}_effect_mean"] = float(np.mean(values)) if values else math.nan
        row[f"{c}_effect_se"] = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else math.nan
        eval_se = [r[f"{c}_effect_eval_se"] for r in effects]
        row[f"{c}_effect_eval_se"] = math.sqrt(sum(e * e for e in eval_se)) / len(eval_se) if eval_se else math.nan
    return row


def _pm(mean: float, spread: float, spec: str = ".1f") -> str:
    if math.isnan(mean):
        return "-"
    return format(mean, spec) + ("" if math.isnan(spread) else f" ± {spread:.1f}")


def schedule_markdown(rows: list[dict], seeds: list[int]) -> str:
    """The IB-Focal variants through the switch: how far an IB epoch moved the weights against a CE epoch of the
    same run, the scores at the switch and at the end, and the IB phase's own effect (final minus at-switch)
    with its standard error over the seeds and the evaluation's."""
    header = ["Variant", "switch after CE epoch", "IB epoch / CE epoch, weights moved"]
    for c in SCHEDULE_COLUMNS:
        name = dict(zip(COLUMNS, HEADERS, strict=True))[c]
        header += [f"{name} at the switch", f"{name} final", f"{name}: the IB phase's effect ± SE (seeds), ± eval."]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for r in rows:
        if r["method"] != "ib_focal":
            continue
        cells = [r["variant"], ", ".join(str(e - 1) for e in r["switch_epochs"]) or "-"]
        ratio, spread = r["moved_ratio_mean"], r["moved_ratio_std"]
        cells.append("-" if math.isnan(ratio) else f"{ratio:.2f}" + ("" if math.isnan(spread) else f" ± {spread:.2f}"))
        for c in SCHEDULE_COLUMNS:
            cells += [_pm(r[f"{c}_at_switch_mean"], r[f"{c}_at_switch_std"]), _pm(r[f"{c}_mean"], r[f"{c}_std"])]
            effect, se, eval_se = r[f"{c}_effect_mean"], r[f"{c}_effect_se"], r[f"{c}_effect_eval_se"]
            cells.append("-" if math.isnan(effect) else f"{effect:+.2f} ± {se:.2f}, ± {eval_se:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + (
        f"\n\nMean ± sample standard deviation over training seeds {seeds}; the effect's ± are the standard error of "
        "the mean paired difference over the seeds, and the one the evaluation's k-means draws leave in it."
    )


def markdown(rows: list[dict], seeds: list[int], data_seeds: list[int]) -> str:
    others = [f"All Acc / mIoU, data seed {d}" for d in data_seeds]
    lines = [
        "| Variant | " + " | ".join([*HEADERS, *others]) + " |",
        "|---" * (1 + len(HEADERS) + len(data_seeds)) + "|",
    ]
    for r in rows:
        cells = [f"{r[f'{c}_mean']:.1f} ± {r[f'{c}_std']:.1f}" for c in COLUMNS]
        cells += [f"{r[f'acc_all_data{d}']:.1f} / {r[f'miou_all_data{d}']:.1f}" for d in data_seeds]
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + (
        f"\n\nMean ± sample standard deviation over training seeds {seeds} (data seed 0); "
        "Thing / Stuff by the subset protocol."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data-seeds", type=int, nargs="*", default=[1])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME")
    parser.add_argument("--out", type=Path, default=Path("outputs/loss-options"))
    parser.add_argument("-p", dest="params", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    overrides = dict(parse_override(p) for p in args.params)
    base = load_preset(args.preset, **overrides)
    start = time.perf_counter()
    runs = []
    plan = [(s, 0) for s in args.seeds] + [(0, d) for d in args.data_seeds]
    for name in args.variants:
        method, changes, _ = VARIANTS[name]
        for seed, data_seed in plan:
            loss = method if method in ("ce", "focal", "ib_focal") else "ce"
            cfg = base.replace(loss=loss, seed=seed, data_seed=data_seed, **changes)
            folder = args.out / name.replace(", ", "__").replace("=", "-") / f"seed{seed}-data{data_seed}"
            print(f"{name}: seed {seed}, data seed {data_seed}", file=sys.stderr, flush=True)
            result = run(cfg, folder, method)
            runs.append(run_record(name, seed, data_seed, result))
    rows = [summarise(n, [r for r in runs if r["variant"] == n], args.seeds, args.data_seeds) for n in args.variants]
    text = markdown(rows, args.seeds, args.data_seeds)
    if any(r["method"] == "ib_focal" for r in rows):
        text += "\n\n" + schedule_markdown(rows, args.seeds)
    print("\n" + text)
    command = shlex.join(["python", "experiments/loss_options.py", *sys.argv[1:]])
    atomic_write_text(args.out / "results.md", f"`{command}`\n\n{text}\n")
    atomic_write_text(args.out / "results.csv", csv_text(rows))
    atomic_write_text(args.out / "runs.csv", csv_text(runs))
    seconds = time.perf_counter() - start
    results = {"command": command, "config": base.to_dict(), "rows": rows, "runs": runs, "seconds": seconds}
    write_json(args.out / "results.json", {**results, "environment": environment()})


if __name__ == "__main__":
    main()
