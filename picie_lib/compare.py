"""The paper's comparison (its Table 2): PiCIE (CE), Focal and IB-Focal, trained and evaluated
side by side, with reference points that calibrate the data set.

Rows of ``results.json`` (one per method and seed): ``loss`` is ``ce``, ``focal``, ``ib_focal``,
or a reference: ``untrained`` (k-means on the untrained network, the floor), ``rgb_kmeans``
(k-means on raw RGB pixels) and ``linear_probe`` (a supervised linear probe on the CE model's
features, the ceiling; only when ``probe_epochs > 0``). Thing/Stuff columns follow the subset
protocol, as the paper's table; the ``global_*`` columns give the global protocol.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from picie_lib.config import LOSSES, RUNTIME_KEYS, Config, differences, save_config
from picie_lib.data import build_dataset
from picie_lib.evaluate import (
    evaluate_model,
    evaluate_rgb,
    evaluate_run,
    linear_probe,
    load_trained_model,
    write_evaluation,
)
from picie_lib.plots import save_figure
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


def method_steps(cfg: Config) -> list[tuple[int, str]]:
    """(seed, method) in the order a comparison computes them."""
    methods = ("rgb_kmeans", "untrained", *LOSSES) + (("linear_probe",) if cfg.probe_epochs > 0 else ())
    return [(seed, m) for seed in cfg.seeds for m in methods]


def _evaluated_with(metrics: Path, cfg: Config) -> bool:
    """Whether ``metrics`` exists and was computed with ``cfg`` (up to the parameters that do not
    change results): an evaluation of another configuration is recomputed, never reused."""
    if not metrics.is_file():
        return False
    saved = json.loads(metrics.read_text()).get("config", {})
    return not differences(saved, cfg, RUNTIME_KEYS | {"loss"})  # the folder's name says the method


def result_row(method: str, seed: int, cfg: Config, out_dir: Path, train_set=None, val_set=None) -> dict:
    """The results row of one method and seed, from ``out_dir/{method}-seed{seed}/metrics.json``.

    A missing evaluation is computed and written there first: a trained method's run must exist
    (``train`` or the training notebook wrote it); a reference point is computed here.
    """
    run_dir = Path(out_dir) / f"{method}-seed{seed}"
    run_cfg = cfg.replace(seed=seed, loss=method if method in LOSSES else cfg.loss)
    if not _evaluated_with(run_dir / "metrics.json", run_cfg):
        t0 = time.perf_counter()
        if method in LOSSES:
            if not (run_dir / "checkpoint.pt").is_file():
                raise FileNotFoundError(f"{run_dir}: no trained run of {method!r} for seed {seed}; train it first")
            evaluate_run(run_dir, train_set, val_set)
        else:
            if method == "rgb_kmeans":
                result = evaluate_rgb(run_cfg, train_set, val_set)
            elif method == "untrained":
                model = build_model(run_cfg, resolve_device(run_cfg.device))
                result = evaluate_model(model, run_cfg, train_set, val_set)
            elif method == "linear_probe":
                ce_cfg = run_cfg.replace(loss="ce")
                model = load_trained_model(Path(out_dir) / f"ce-seed{seed}", ce_cfg)
                result = linear_probe(model, ce_cfg, train_set, val_set)
            else:
                raise ValueError(f"method={method!r}: expected one of {LOSSES + REFERENCES}")
            result["seconds"] = time.perf_counter() - t0
            write_evaluation(run_dir, result, method, run_cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    row = {"loss": method, "seed": seed, **{k: metrics["scores"][k] for k in COLUMNS + GLOBAL_COLUMNS}}
    row["seconds"] = metrics.get("seconds")
    if (run_dir / "summary.json").is_file():  # a trained method: its epochs and the training time
        summary = json.loads((run_dir / "summary.json").read_text())
        row["seconds"] = (row["seconds"] or 0.0) + sum(summary["seconds_per_pass"].values())
        row.update(epochs=summary["epochs"], switch_epoch=summary["switch_epoch"])
    return row


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
    for seed, method in progress(method_steps(cfg), "compare", leave=True):
        if method in LOSSES:
            train(cfg.replace(seed=seed, loss=method), out_dir / f"{method}-seed{seed}", overwrite=overwrite)
        rows.append(result_row(method, seed, cfg, out_dir, train_set, val_set))
        write_results(out_dir, rows, cfg, time.perf_counter() - start)
    return rows


def collect(cfg: Config, out_dir: Path, seconds: float | None = None) -> list[dict]:
    """The comparison's rows from the runs under ``out_dir`` (the notebooks' path): evaluations
    missing there are computed (references, trained runs not yet evaluated); writes the results files."""
    train_set, val_set = build_dataset(cfg, "train", mode="eval"), build_dataset(cfg, "val", mode="eval")
    rows = [
        result_row(method, seed, cfg, out_dir, train_set, val_set)
        for seed, method in progress(method_steps(cfg), "results", leave=True)
    ]
    write_results(Path(out_dir), rows, cfg, seconds if seconds is not None else sum(r["seconds"] or 0 for r in rows))
    return rows


# ---- the paper's claims, checked on our numbers ------------------------------------------------
def _mean(rows: list[dict], method: str, column: str) -> float:
    values = [r[column] for r in rows if r["loss"] == method and r[column] is not None]
    return float(np.nanmean(values)) if values else math.nan


def _oversegmentation(out_dir: Path, rows: list[dict], method: str, kind: str, key: str) -> float:
    values = []
    for r in rows:
        path = Path(out_dir) / f"{method}-seed{r['seed']}" / "metrics.json"
        if r["loss"] == method and path.is_file():
            values.append(json.loads(path.read_text())["oversegmentation"][kind][key])
    return float(np.nanmean(values)) if values else math.nan


def paper_claims(rows: list[dict], out_dir: Path) -> list[dict]:
    """Each claim of the paper, its numbers, ours, and whether ours agree ("yes"/"no")."""
    paper = {k: dict(zip(COLUMNS, PAPER_TABLE[k], strict=True)) for k in LOSSES}
    ours = {k: {c: _mean(rows, k, c) for c in COLUMNS} for k in LOSSES}
    header = dict(zip(COLUMNS, HEADERS, strict=True))

    def row(claim: str, checks: list[tuple[str, str, bool]]) -> dict:
        """``checks``: (method, column, whether the method should score above CE)."""

        def text(table: dict) -> str:
            return "; ".join(f"{header[c]} {table[k][c]:.2f} vs {table['ce'][c]:.2f}" for k, c, _ in checks)

        holds = all((ours[k][c] > ours["ce"][c]) == above for k, c, above in checks)
        return {"claim": claim, "paper": text(paper), "ours": text(ours), "holds": "yes" if holds else "no"}

    claims = [
        row(
            "Focal helps things (Thing Acc and mIoU above PiCIE's)",
            [("focal", "acc_thing", True), ("focal", "miou_thing", True)],
        ),
        row("Focal hurts stuff (Stuff Acc below PiCIE's)", [("focal", "acc_stuff", False)]),
        row(
            "IB-Focal beats PiCIE on All Acc and mIoU", [("ib_focal", "acc_all", True), ("ib_focal", "miou_all", True)]
        ),
    ]
    thing = {
        k: _oversegmentation(out_dir, rows, "ce", "thing", k) for k in ("effective_clusters", "fragments_per_object")
    }
    stuff = {
        k: _oversegmentation(out_dir, rows, "ce", "stuff", k) for k in ("effective_clusters", "fragments_per_object")
    }
    claims.append(
        {
            "claim": "Things are over-segmented (PiCIE spreads a thing over more clusters and pieces than stuff)",
            "paper": "shown qualitatively (Figure 2)",
            "ours": f"effective clusters per class: things {thing['effective_clusters']:.2f}, stuff "
            f"{stuff['effective_clusters']:.2f}; pieces per object: things {thing['fragments_per_object']:.2f}, "
            f"stuff {stuff['fragments_per_object']:.2f}",
            "holds": "yes"
            if thing["effective_clusters"] > stuff["effective_clusters"]
            and thing["fragments_per_object"] > stuff["fragments_per_object"]
            else "no",
        }
    )
    return claims


def claims_markdown(claims: list[dict]) -> str:
    lines = ["| Claim | Paper | Ours | Holds here |", "|---|---|---|---|"]
    lines += [f"| {c['claim']} | {c['paper']} | {c['ours']} | {c['holds']} |" for c in claims]
    return "\n".join(lines)


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
            f"(mean ± sample std where there are several), epochs: {epochs}.",
            f"Training and evaluation: {seconds / 60:.1f} min.",
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


def plot_results(rows: list[dict]):
    """Grouped bars of the six numbers per method (ours), the paper's values as black ticks."""
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
    return fig


def write_results(out_dir: Path, rows: list[dict], cfg: Config, seconds: float) -> None:
    """results.{json,csv,md,png}, timings.json and, once all three methods have rows, claims.{json,csv}."""
    text = results_markdown(rows, cfg, seconds)
    if all(any(r["loss"] == m for r in rows) for m in LOSSES):
        claims = paper_claims(rows, out_dir)
        write_json(out_dir / "claims.json", claims)
        atomic_write_text(out_dir / "claims.csv", csv_text(claims))
        text += "\n## The paper's claims, on our numbers\n\n" + claims_markdown(claims) + "\n"
    write_json(out_dir / "results.json", rows)
    atomic_write_text(out_dir / "results.csv", csv_text(rows))
    atomic_write_text(out_dir / "results.md", text)
    write_json(
        out_dir / "timings.json",
        {"wall_seconds": seconds, "per_method": {f"{r['loss']}-seed{r['seed']}": r["seconds"] for r in rows}},
    )
    fig = plot_results(rows)
    save_figure(fig, out_dir / "results.png", dpi=120)
    plt.close(fig)
