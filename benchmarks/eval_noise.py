"""The evaluation's noise on fixed weights: what averaging k-means draws and restarts of its k-means buy, and cost.

    python benchmarks/eval_noise.py RUN_DIR [--seeds 5] [--draws 1,10,30 | --restarts 1,10 [--init-batches B]
                                             | --split 8x8]

``--draws``: the scores of ``--seeds`` evaluations, each the mean of M k-means draws (``eval_seeds`` = M under
run seeds 0, 1, ...: disjoint blocks of draws 0 .. M - 1, M .. 2M - 1, ...), for each M; computed from one series
of ``--seeds`` x max(M) single draws, which is what those evaluations compute. Per M: every evaluation's
All Acc and mIoU, their range and std, and the seconds of one evaluation (M draws).

For each number of restarts (``eval_kmeans_restarts``) the trained weights in RUN_DIR are scored under
``--seeds`` evaluation k-means seeds (the run's seed, then the next ones); the table gives, per setting,
All Acc and mIoU of every seed, their range and sample std, and the seconds of one evaluation, measured side
by side in one run. Then one Lloyd fit at the paper's initial-fit size is timed on this machine, scaled down
by ``--paper-scale`` (20 batches x 256 images x 80 x 80 pixels, 128-d, K = 27, 20 iterations: restarts add
(R - 1) such fits to an evaluation). Writes eval_noise.json and eval_noise.md under --out.

``--split OxS``: where one draw's noise comes from. A draw has two random parts: the train split's reading order
(which images form the initial fit, and under batch statistics which images share a BatchNorm batch) and the
k-means' random start. O orders x S starts are scored (``evaluate_clusters(seed=start, order_seed=order)``), and
the draws' variance is split into a between-orders and a within-order part (one-way random effects, balanced:
``variance_split``). What it tells: whether draws could share one pass over the split (one order, many starts)
and still average the noise away. Writes eval_split.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from picie_lib.clustering import lloyd_kmeans
from picie_lib.config import load_config
from picie_lib.data import build_dataset
from picie_lib.distributed import resolve_device
from picie_lib.evaluate import evaluate_clusters, evaluate_model, network_feature_fn
from picie_lib.picie import clustering_bn, labelling_bn
from picie_lib.scores import load_trained_model

PAPER_INIT_POINTS = 20 * 256 * 80 * 80  # the evaluation's initial fit at the paper preset


def noise_of(run_dir: Path, seeds: int, restarts: int, init_batches: int | None) -> dict:
    cfg = load_config(run_dir / "config.json").replace(
        eval_seeds=seeds, eval_kmeans_restarts=restarts, eval_kmeans_init_batches=init_batches
    )
    model = load_trained_model(run_dir, cfg)
    train_set, val_set = build_dataset(cfg, "train", mode="eval"), build_dataset(cfg, "val", mode="eval")
    start = time.perf_counter()
    spread = evaluate_model(model, cfg, train_set, val_set)["eval_spread"]
    seconds = (time.perf_counter() - start) / seeds
    return {"restarts": restarts, "init_batches": init_batches or cfg.kmeans_init_batches, "seeds": spread["seeds"],
            "seconds_per_evaluation": seconds,
            **{k: spread[k] for k in ("acc_all", "miou_all")}}  # fmt: skip


def draw_series(run_dir: Path, draws: int) -> tuple[dict, float]:
    """``draws`` single k-means draws on the run's weights (k-means seeds 0 .. ``draws - 1``, one start each):
    their ``eval_spread`` and the seconds per draw."""
    cfg = load_config(run_dir / "config.json").replace(seed=0, eval_seeds=draws, eval_kmeans_restarts=1)
    model = load_trained_model(run_dir, cfg)
    train_set, val_set = build_dataset(cfg, "train", mode="eval"), build_dataset(cfg, "val", mode="eval")
    start = time.perf_counter()
    spread = evaluate_model(model, cfg, train_set, val_set)["eval_spread"]
    return spread, (time.perf_counter() - start) / draws


def averaged_evaluations(values: list[float], draws: int, evaluations: int) -> list[float]:
    """The scores of ``evaluations`` evaluations with ``eval_seeds = draws`` under run seeds 0, 1, ..., from the
    single draws' ``values`` of k-means seeds 0, 1, ...: the means of consecutive groups of ``draws``."""
    if len(values) < draws * evaluations:
        raise ValueError(f"{len(values)} draws: expected at least {draws} x {evaluations}")
    return [float(np.mean(values[i * draws : (i + 1) * draws])) for i in range(evaluations)]


def draws_rows(spread: dict, seconds_per_draw: float, draw_counts: list[int], evaluations: int) -> list[dict]:
    rows = []
    for m in draw_counts:
        row = {"draws": m, "seconds_per_evaluation": m * seconds_per_draw}
        for key in ("acc_all", "miou_all"):
            scores = averaged_evaluations(spread[key]["values"], m, evaluations)
            row[key] = {"values": scores, "range": float(np.ptp(scores)), "std": float(np.std(scores, ddof=1))}
        rows.append(row)
    return rows


def draws_markdown(rows: list[dict], evaluations: int) -> str:
    lines = [f"| k-means draws per score | All Acc of {evaluations} evaluations | range | std | mIoU range | std "
             "| s per evaluation |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        acc, miou = r["acc_all"], r["miou_all"]
        lines.append(
            f"| {r['draws']} | {', '.join(f'{v:.2f}' for v in acc['values'])} | {acc['range']:.2f} | {acc['std']:.2f} "
            f"| {miou['range']:.2f} | {miou['std']:.2f} | {r['seconds_per_evaluation']:.1f} |"
        )
    return "\n".join(lines)


def order_start_series(run_dir: Path, orders: int, starts: int) -> tuple[np.ndarray, np.ndarray, float]:
    """All Acc and mIoU (orders, starts) of the run's weights under reading-order seeds 0 .. ``orders - 1`` and
    k-means start seeds 0 .. ``starts - 1`` (one start each; draw (s, s) is the evaluation seeded s), and the seconds
    per draw. Each draw scores a fresh copy of the model (``bn_eval: running`` moves its statistics)."""
    cfg = load_config(run_dir / "config.json").replace(eval_kmeans_restarts=1)
    model = load_trained_model(run_dir, cfg)
    train_set, val_set = build_dataset(cfg, "train", mode="eval"), build_dataset(cfg, "val", mode="eval")
    acc, miou = np.zeros((orders, starts)), np.zeros((orders, starts))
    start_time = time.perf_counter()
    for o in range(orders):
        for s in range(starts):
            copied = copy.deepcopy(model)
            scores = evaluate_clusters(
                network_feature_fn(copied, cfg, clustering_bn(cfg)), cfg, "dot", train_set, val_set,
                score_extract=network_feature_fn(copied, cfg, labelling_bn(cfg)), seed=s, order_seed=o,
            )["scores"]  # fmt: skip
            acc[o, s], miou[o, s] = scores["acc_all"], scores["miou_all"]
        print(f"order {o + 1}/{orders}: All Acc {acc[o].mean():.2f} over {starts} starts", flush=True)
    return acc, miou, (time.perf_counter() - start_time) / (orders * starts)


def variance_split(values: np.ndarray) -> dict:
    """One-way random effects on a balanced (orders, starts) table: a draw = mean + order effect (std
    ``between``) + start noise (std ``within``). Method of moments: within^2 = the mean of the rows' sample
    variances, between^2 = the variance of the row means less within^2 / starts (0 when negative).
    ``total``: the sample std of all draws."""
    orders, starts = values.shape
    if orders < 2 or starts < 2:
        raise ValueError(f"a table of {orders} x {starts}: expected at least 2 orders and 2 starts")
    within = float(values.var(axis=1, ddof=1).mean())
    between = max(0.0, float(values.mean(axis=1).var(ddof=1)) - within / starts)
    return {"total": float(values.std(ddof=1)), "within": math.sqrt(within), "between": math.sqrt(between)}


def mean_std(split: dict, draws: int, orders: int) -> float:
    """The std of a score that averages ``draws`` draws spread evenly over ``orders`` reading orders."""
    return math.sqrt(split["between"] ** 2 / orders + split["within"] ** 2 / draws)


def split_markdown(splits: dict[str, dict], draws: int, seconds: float, shape: tuple[int, int]) -> str:
    lines = [f"{shape[0]} reading orders x {shape[1]} k-means starts, {seconds:.1f} s per draw.", "",
             f"| score | one draw's std | within an order (starts) | between orders | mean of {draws} draws: "
             f"{draws} orders | 4 orders | 1 order |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for key, sp in splits.items():
        stds = [mean_std(sp, draws, g) for g in (draws, 4, 1)]
        lines.append(f"| {key} | {sp['total']:.2f} | {sp['within']:.2f} | {sp['between']:.2f} | "
                     + " | ".join(f"{v:.2f}" for v in stds) + " |")  # fmt: skip
    return "\n".join(lines)


def lloyd_seconds(points: int, device: str) -> float:
    x = torch.nn.functional.normalize(torch.randn(points, 128, device=device), dim=1)
    start = time.perf_counter()
    lloyd_kmeans(x, 27, 20, seed=0)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def markdown(rows: list[dict], fit: dict) -> str:
    lines = ["| restarts (initial-fit batches) | All Acc per seed | range | std | mIoU per seed | range | std "
             "| s per evaluation |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        cells = [f"{r['restarts']} ({r['init_batches']})"]
        for key in ("acc_all", "miou_all"):
            spread = r[key]
            cells += [", ".join(f"{v:.2f}" for v in spread["values"]), f"{spread['range']:.2f}", f"{spread['std']:.2f}"]
        lines.append("| " + " | ".join(cells) + f" | {r['seconds_per_evaluation']:.1f} |")
    base = rows[0]["seconds_per_evaluation"]
    ratios = ", ".join(f"{r['restarts']} restart(s) {r['seconds_per_evaluation'] / base:.2f}x" for r in rows)
    lines += ["", f"Cost of an evaluation against the first setting: {ratios}."]
    lines += [
        "",
        f"One Lloyd fit of {fit['points']:,} points on {fit['device']}: {fit['seconds']:.2f} s; at the paper's "
        f"{PAPER_INIT_POINTS:,} points about {fit['paper_seconds']:.0f} s, so each restart beyond the first adds that "
        "to the paper preset's evaluation (linear in the points).",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="a trained run's folder (python -m picie_lib train ... --out)")
    parser.add_argument("--seeds", type=int, default=5, help="evaluation k-means seeds per setting")
    parser.add_argument("--restarts", default="1,10", help="comma-separated eval_kmeans_restarts to compare")
    parser.add_argument("--draws", default=None, help="comma-separated eval_seeds to compare (e.g. 1,10,30)")
    parser.add_argument(
        "--init-batches", type=int, default=None, help="batches in the initial fit (default: the run's; all: one fit)"
    )
    parser.add_argument("--split", default=None, help="OxS: O reading orders x S k-means starts (e.g. 8x8)")
    parser.add_argument("--paper-scale", type=float, default=1 / 256, help="share of the paper's fit size timed")
    parser.add_argument("--out", type=Path, default=Path("outputs/benchmarks/eval_noise"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.split:
        try:
            orders, starts = (int(n) for n in args.split.lower().split("x"))
        except ValueError:
            parser.error(f"--split {args.split}: expected ORDERSxSTARTS, e.g. 8x8")
        acc, miou, seconds = order_start_series(args.run_dir, orders, starts)
        splits = {"All Acc": variance_split(acc), "mIoU": variance_split(miou)}
        (args.out / "eval_split.json").write_text(
            json.dumps({"acc_all": acc.tolist(), "miou_all": miou.tolist(), "split": splits, "seconds": seconds})
        )
        draws = max(2, load_config(args.run_dir / "config.json").eval_seeds)  # the run's draws per score
        text = split_markdown(splits, draws, seconds, acc.shape)
        (args.out / "eval_split.md").write_text(text + "\n")
        print(text)
        return
    if args.draws:
        counts = [int(m) for m in args.draws.split(",")]
        spread, per_draw = draw_series(args.run_dir, args.seeds * max(counts))
        rows = draws_rows(spread, per_draw, counts, args.seeds)
        (args.out / "eval_draws.json").write_text(json.dumps({"rows": rows, "single_draws": spread}, indent=1))
        text = draws_markdown(rows, args.seeds)
        (args.out / "eval_draws.md").write_text(text + "\n")
        print(text)
        return
    rows = []
    for restarts in [int(r) for r in args.restarts.split(",")]:
        rows.append(noise_of(args.run_dir, args.seeds, restarts, args.init_batches))
        acc, miou, seconds = rows[-1]["acc_all"], rows[-1]["miou_all"], rows[-1]["seconds_per_evaluation"]
        print(f"restarts {restarts}: All Acc range {acc['range']:.2f}, mIoU range {miou['range']:.2f}, "
              f"{seconds:.1f} s per evaluation", flush=True)  # fmt: skip
    device = str(resolve_device("auto"))
    points = int(PAPER_INIT_POINTS * args.paper_scale)
    seconds = lloyd_seconds(points, device)
    fit = {"points": points, "device": device, "seconds": seconds, "paper_seconds": seconds / args.paper_scale}
    (args.out / "eval_noise.json").write_text(json.dumps({"settings": rows, "lloyd_fit": fit}, indent=1))
    text = markdown(rows, fit)
    (args.out / "eval_noise.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
