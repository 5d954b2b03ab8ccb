"""The paper's comparison (its Table 2): PiCIE (CE), Focal and IB-Focal, trained and evaluated
side by side, with reference points that calibrate the data set.

Rows of ``results.json`` (one per method and seed): ``loss`` is ``ce``, ``focal``, ``ib_focal``,
or a reference: ``untrained`` (k-means on the untrained network, the floor), ``rgb_kmeans``
(k-means on raw RGB pixels) and ``linear_probe`` (a supervised linear probe on the CE model's
features, the ceiling; only when ``probe_epochs > 0``). Thing/Stuff columns follow the subset
protocol, as the paper's table; the ``global_*`` columns give the global protocol.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from picie_lib.config import LOSSES, Config, save_config
from picie_lib.data import build_dataset
from picie_lib.evaluate import evaluate_model, evaluate_rgb, linear_probe, load_trained_model, write_evaluation
from picie_lib.progress import progress
from picie_lib.runs import atomic_write_text, csv_text, environment, new_run_dir, write_json
from picie_lib.train import build_model, resolve_device, train

COLUMNS = ("acc_all", "miou_all", "acc_thing", "miou_thing", "acc_stuff", "miou_stuff")
GLOBAL_COLUMNS = ("global_acc_thing", "global_miou_thing", "global_acc_stuff", "global_miou_stuff")
HEADERS = ("Acc All", "mIoU All", "Acc Thing", "mIoU Thing", "Acc Stuff", "mIoU Stuff")

# The paper's Table 2 (COCO-Stuff-27, ImageNet-pretrained ResNet-18, batch 256, 320 px).
PAPER_TABLE = {
    "ce": (49.99, 14.36, 69.39, 23.83, 74.56, 17.32),
    "focal": (46.21, 16.34, 77.17, 33.68, 61.27, 22.68),
    "ib_focal": (51.37, 15.57, 74.73, 29.01, 69.33, 20.99),
}
METHOD_NAMES = {
    "ce": "PiCIE (CE)",
    "focal": "Method 1: Focal",
    "ib_focal": "Method 2: IB-Focal",
    "rgb_kmeans": "k-means on RGB pixels",
    "untrained": "k-means on the untrained network (floor)",
    "linear_probe": "supervised linear probe on PiCIE's features (ceiling)",
}
REFERENCES = ("rgb_kmeans", "untrained", "linear_probe")


def _row(name: str, seed: int, result: dict, **extra) -> dict:
    scores = result["scores"]
    return {
        "loss": name,
        "seed": seed,
        **{k: scores[k] for k in COLUMNS + GLOBAL_COLUMNS},
        "seconds": result.get("seconds"),
        **extra,
    }


def compare(cfg: Config, out_dir: Path, overwrite: bool = False) -> list[dict]:
    """Train and evaluate the three methods for every seed in ``cfg.seeds``, plus the references.

    Writes ``results.csv``, ``results.json``, ``results.md`` and ``results.png`` in ``out_dir``
    (rewritten after every method, so an interrupted comparison keeps what it finished), and one
    folder per method and seed holding the run and its evaluation.
    """
    out_dir = new_run_dir(out_dir, overwrite=overwrite)
    save_config(cfg, out_dir / "config.json")
    write_json(out_dir / "environment.json", environment())
    train_set, val_set = build_dataset(cfg, "train", mode="eval"), build_dataset(cfg, "val", mode="eval")
    rows: list[dict] = []
    start = time.perf_counter()
    steps = [(seed, m) for seed in cfg.seeds for m in ("rgb_kmeans", "untrained", *LOSSES, "linear_probe")]
    if cfg.probe_epochs == 0:
        steps = [s for s in steps if s[1] != "linear_probe"]
    for seed, method in progress(steps, "compare", leave=True):
        run_cfg = cfg.replace(seed=seed, loss=method if method in LOSSES else cfg.loss)
        run_dir = out_dir / f"{method}-seed{seed}"
        t0 = time.perf_counter()
        extra = {}
        if method == "rgb_kmeans":
            result = evaluate_rgb(run_cfg, train_set, val_set)
        elif method == "untrained":
            result = evaluate_model(build_model(run_cfg, resolve_device(run_cfg.device)), run_cfg, train_set, val_set)
        elif method == "linear_probe":
            ce_cfg = run_cfg.replace(loss="ce")
            model = load_trained_model(out_dir / f"ce-seed{seed}", ce_cfg)
            result = linear_probe(model, ce_cfg, train_set, val_set)
        else:
            summary = train(run_cfg, run_dir, overwrite=overwrite)
            result = evaluate_model(load_trained_model(run_dir, run_cfg), run_cfg, train_set, val_set)
            extra = {"epochs": summary["epochs"], "switch_epoch": summary["switch_epoch"]}
        result["seconds"] = time.perf_counter() - t0
        run_dir.mkdir(parents=True, exist_ok=True)
        write_evaluation(run_dir, result, method, run_cfg)
        rows.append(_row(method, seed, result, **extra))
        write_results(out_dir, rows, cfg, time.perf_counter() - start)
    return rows


# ---- tables and figure -------------------------------------------------------------------------
def _cell(values: list[float]) -> str:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}"


def table2_markdown(rows: list[dict], columns=COLUMNS, with_paper: bool = True) -> str:
    """A Markdown table laid out like the paper's Table 2, the paper's numbers beside ours."""
    lines = ["| Method | " + " | ".join(HEADERS) + " |", "|---" * (len(HEADERS) + 1) + "|"]
    for method in (*LOSSES, *REFERENCES):
        mine = [r for r in rows if r["loss"] == method]
        if with_paper and method in PAPER_TABLE:
            lines.append(
                f"| {METHOD_NAMES[method]}, paper | " + " | ".join(f"{v:.2f}" for v in PAPER_TABLE[method]) + " |"
            )
        if mine:
            cells = [_cell([r[c] for r in mine]) for c in columns]
            lines.append(f"| **{METHOD_NAMES[method]}, ours** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def results_markdown(rows: list[dict], cfg: Config, seconds: float) -> str:
    seeds = sorted({r["seed"] for r in rows})
    epochs = ", ".join(f"{METHOD_NAMES[m]} {cfg.epochs_for(m)}" for m in LOSSES)
    return "\n".join(
        [
            "# PiCIE with CE, Focal and IB-Focal: results",
            "",
            f"Data set: `{cfg.dataset}` ({cfg.res} px), K = {cfg.n_clusters}, seeds {seeds} "
            f"(mean ± sample std where there are several), epochs: {epochs}. Wall time {seconds / 60:.1f} min.",
            "Paper rows: COCO-Stuff-27 with an ImageNet-pretrained backbone; ours: the data set above.",
            "",
            "## Table 2 (Thing / Stuff by the subset protocol: the other group ignored, as the paper)",
            "",
            table2_markdown(rows),
            "",
            "## Thing / Stuff by the global protocol (the All matching, scores restricted to the group)",
            "",
            table2_markdown(rows, columns=("acc_all", "miou_all", *GLOBAL_COLUMNS), with_paper=False),
            "",
        ]
    )


def plot_results(rows: list[dict], path: Path) -> None:
    """Grouped bars of the six numbers per method (ours), the paper's values as black ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = [m for m in (*LOSSES, *REFERENCES) if any(r["loss"] == m for r in rows)]
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(COLUMNS))
    for i, method in enumerate(methods):
        values = np.array([[r[c] for c in COLUMNS] for r in rows if r["loss"] == method], dtype=float)
        ax.bar(x + i * width, np.nanmean(values, axis=0), width, label=METHOD_NAMES[method])
        if method in PAPER_TABLE:
            ax.scatter(
                x + i * width,
                PAPER_TABLE[method],
                marker="_",
                color="black",
                s=200,
                zorder=3,
                label="paper" if i == 0 else None,
            )
    ax.set_xticks(x + width * (len(methods) - 1) / 2, HEADERS)
    ax.set_ylabel("%")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Ours (bars) and the paper's Table 2 (black ticks)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def write_results(out_dir: Path, rows: list[dict], cfg: Config, seconds: float) -> None:
    write_json(out_dir / "results.json", rows)
    atomic_write_text(out_dir / "results.csv", csv_text(rows))
    atomic_write_text(out_dir / "results.md", results_markdown(rows, cfg, seconds))
    write_json(
        out_dir / "timings.json",
        {"wall_seconds": seconds, "per_method": {f"{r['loss']}-seed{r['seed']}": r["seconds"] for r in rows}},
    )
    plot_results(rows, out_dir / "results.png")
