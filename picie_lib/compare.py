"""The paper's comparison (its Table 2): PiCIE (CE), Focal and IB-Focal, trained and evaluated
side by side, with reference points that calibrate the data set.

Rows of ``results.json`` (one per method and seed): ``loss`` is ``ce``, ``focal``, ``ib_focal``,
or a reference: ``untrained`` (k-means on the network before PiCIE's training, random or
pretrained: the floor), ``rgb_kmeans`` (k-means on raw RGB pixels) and ``linear_probe`` (a
supervised linear probe on the CE model's features, the ceiling; only when ``probe_epochs > 0``).
Thing/Stuff columns follow the subset protocol, as the paper's table; the ``global_*`` columns give
the global protocol.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from picie_lib import distributed, readings
from picie_lib.checkpoints import checkpoint_record, evaluation_asked, load_checkpoint
from picie_lib.claims import (
    AT_SWITCH,
    CODE_COLUMNS,
    COLUMNS,
    GLOBAL_COLUMNS,
    HEADERS,
    PAPER_ROW_NAMES,
    PAPER_TABLE,
    PLAIN_PICIE,
    by_seed,
    claims_markdown,
    noise_markdown,
    paper_claims,
)
from picie_lib.config import LOSSES, METHOD_NAMES, RUNTIME_KEYS, Config, differences, load_config, save_config
from picie_lib.data import build_dataset
from picie_lib.distributed import resolve_device
from picie_lib.eval_seeds import score_standard_error
from picie_lib.evaluate import evaluate_model, evaluate_rgb
from picie_lib.ib_phase import at_switch_row, ib_phase_markdown, moved_ratio
from picie_lib.picie import build_model
from picie_lib.plots import METHOD_COLOURS, save_figure
from picie_lib.probe import linear_probe
from picie_lib.progress import progress
from picie_lib.run_folder import exclusive, new_run_dir, record_in_manifest
from picie_lib.runs import atomic_write_text, csv_text, read_json, record_session, weights_digest, write_json
from picie_lib.scores import evaluate_run, read_metrics, scored_checkpoint, stored_scores, write_evaluation
from picie_lib.train import check_before_writing, train

REFERENCES = ("rgb_kmeans", "untrained", "linear_probe")
IB_PHASE_TITLE = "## Method 2's own phase: IB-Focal against its weights at the switch"
TABLE_ORDER = (*LOSSES, AT_SWITCH, *REFERENCES)  # the rows of every table and figure, in this order


def method_steps(cfg: Config) -> list[tuple[int, str]]:
    """(seed, method) in the order a comparison computes them."""
    methods = ("rgb_kmeans", "untrained", *LOSSES) + (("linear_probe",) if cfg.probe_epochs > 0 else ())
    return [(seed, m) for seed in cfg.seeds for m in methods]


def _weights_of(run_dir: Path) -> str | None:
    """The SHA-256 of the weights in ``run_dir/checkpoint.pt``, None where there is none."""
    path = Path(run_dir) / "checkpoint.pt"
    return weights_digest(load_checkpoint(path)["model"]) if path.is_file() else None


def resumable(out_dir: Path, cfg: Config) -> Path:
    """``out_dir`` when it holds a run of ``cfg`` (up to the parameters that do not change results) to
    continue; otherwise an error that says why."""
    saved = Path(out_dir) / "config.json"
    if not saved.is_file():
        raise FileNotFoundError(f"{out_dir}: nothing to resume there (no config.json); start it without --resume")
    if any((Path(out_dir) / name).exists() for name in ("checkpoint.pt", "log.jsonl")):
        raise ValueError(
            f"{out_dir} holds one training run (`train --out`), not a comparison's or the notebooks' runs; continue it "
            "with `train --resume`, or choose another --out"
        )
    diff = differences(load_config(saved).to_dict(), cfg, RUNTIME_KEYS)
    if diff:
        raise ValueError(f"{out_dir} holds a run of another configuration ({'; '.join(diff)}); cannot resume it")
    return Path(out_dir)


def train_missing(cfg: Config, out_dir: Path) -> None:
    """07_compare's start when run alone: each trained folder the comparison needs is first checked to hold
    a run of ``cfg`` (a folder of other training parameters is refused, naming them, before anything is
    written: a changed parameter is never scored under the old weights), then the missing runs are trained."""
    steps = [(seed, loss, Path(out_dir) / f"{loss}-seed{seed}") for seed in cfg.seeds for loss in LOSSES]
    for seed, loss, folder in steps:
        if (folder / "config.json").is_file():
            evaluation_asked(folder, load_config(folder / "config.json"), cfg.replace(seed=seed, loss=loss))
    for seed, loss, folder in steps:
        if not (folder / "summary.json").is_file():
            print(f"training {loss}, seed {seed} (missing in {out_dir})")
            train(cfg.replace(loss=loss, seed=seed), folder, resume=True)


def result_row(method: str, seed: int, cfg: Config, out_dir: Path, train_set=None, val_set=None) -> dict:
    """The results row of one method and seed, from ``out_dir/{method}-seed{seed}/metrics.json``.

    A missing evaluation is computed and written there first: a trained method's run must exist
    (``train`` or the training notebook wrote it); a reference point is computed here.
    """
    run_dir = Path(out_dir) / f"{method}-seed{seed}"
    run_cfg = cfg.replace(seed=seed, loss=method if method in LOSSES else cfg.loss)
    scored = {"ce": None, "focal": None, "ib_focal": None, "linear_probe": Path(out_dir) / f"ce-seed{seed}"}
    weights = _weights_of(scored[method] or run_dir) if method in scored else None
    stored = stored_scores(run_dir / "metrics.json", run_cfg, weights, RUNTIME_KEYS | {"loss"})  # folder: method
    if stored is None or (method in scored and weights is None):
        t0 = time.perf_counter()
        if method in LOSSES:
            if not (run_dir / "checkpoint.pt").is_file():
                raise FileNotFoundError(f"{run_dir}: no trained run of {method!r} for seed {seed}; train it first")
            evaluation = evaluation_asked(run_dir, load_config(run_dir / "config.json"), run_cfg)
            evaluate_run(run_dir, train_set, val_set, evaluation=evaluation)
        else:
            if method == "rgb_kmeans":
                result = evaluate_rgb(run_cfg, train_set, val_set)
            elif method == "untrained":
                model = build_model(run_cfg, resolve_device(run_cfg.device))
                result = evaluate_model(model, run_cfg, train_set, val_set)
            elif method == "linear_probe":
                ce_cfg = run_cfg.replace(loss="ce")
                _, ckpt = scored_checkpoint(Path(out_dir) / f"ce-seed{seed}")
                model = build_model(ce_cfg, resolve_device(ce_cfg.device))
                model.load_state_dict(ckpt["model"])
                result = linear_probe(model, ce_cfg, train_set, val_set)
                result["checkpoint"] = checkpoint_record(ckpt)  # the CE weights the probe read
            else:
                raise ValueError(f"method={method!r}: expected one of {LOSSES + REFERENCES}")
            result["seconds"] = time.perf_counter() - t0
            write_evaluation(run_dir, result, method, run_cfg)
    metrics = read_metrics(run_dir / "metrics.json")
    row = {
        "loss": method,
        "seed": seed,
        **{k: metrics["scores"].get(k) for k in COLUMNS + GLOBAL_COLUMNS + CODE_COLUMNS},
    }
    spread = metrics.get("eval_spread", {})  # the evaluation's noise on these weights (evaluate --eval-seeds)
    averaged = "se" in spread.get("acc_all", {})  # a metrics.json from before scores averaged the draws: one draw
    row["eval_seeds"] = len(spread["seeds"]) if averaged else 1  # k-means draws per score
    row.update({f"eval_std_{c}": spread.get(c, {}).get("std") for c in COLUMNS})  # one k-means draw's
    row.update({f"eval_se_{c}": score_standard_error(spread, c) for c in COLUMNS})  # the score's (a mean of draws)
    row["seconds"] = metrics.get("seconds")
    if (run_dir / "summary.json").is_file():  # a trained method: its epochs and the training time
        summary = read_json(run_dir / "summary.json")
        row["seconds"] = (row["seconds"] or 0.0) + sum(summary["seconds_per_pass"].values())
        row.update(epochs=summary["epochs"], switch_epoch=summary["switch_epoch"])
        row["weights_moved_after_switch"] = summary.get("weights_moved_after_switch")
        row["moved_ratio"] = moved_ratio(summary)  # an IB epoch's move against a CE epoch's
    return row


def result_rows(method: str, seed: int, cfg: Config, out_dir: Path, train_set=None, val_set=None) -> list[dict]:
    """``result_row``, and for IB-Focal the row of its weights at the switch (``ib_phase.at_switch_row``)."""
    rows = [result_row(method, seed, cfg, out_dir, train_set, val_set)]
    if method == "ib_focal":
        rows += [r for r in [at_switch_row(Path(out_dir) / f"{method}-seed{seed}", seed)] if r is not None]
    return rows


def compare(cfg: Config, out_dir: Path, overwrite: bool = False, resume: bool = False) -> list[dict]:
    """Train and evaluate the three methods for every seed in ``cfg.seeds``, plus the references.

    Writes ``results.csv``, ``results.json``, ``results.md`` and ``results.png`` in ``out_dir``
    (rewritten after every method, so an interrupted comparison keeps what it finished), and one
    folder per method and seed holding the run and its evaluation. ``resume`` continues a comparison
    of the same configuration: finished runs and their scores are kept, unfinished runs resume.
    """
    if resume:
        resumable(out_dir, cfg)  # named before the folder is created or locked
    check_before_writing(cfg, LOSSES)
    with exclusive(out_dir) if distributed.is_main() else contextlib.nullcontext():  # rank 0 writes
        return _compare(cfg, Path(out_dir), overwrite, resume)


def _compare(cfg: Config, out_dir: Path, overwrite: bool, resume: bool) -> list[dict]:
    """Under torchrun every process trains and evaluates together (``train``, ``evaluate``); rank 0
    writes the folder's files and the results."""
    if distributed.is_main():
        out_dir = resumable(out_dir, cfg) if resume else new_run_dir(out_dir, overwrite=overwrite)
        save_config(cfg, out_dir / "config.json")
        record_session(out_dir, **distributed.session_facts())
        for seed, method in method_steps(cfg):  # the training folders this comparison makes are its own
            if method in LOSSES:
                record_in_manifest(out_dir, f"{method}-seed{seed}")
    train_set, val_set = build_dataset(cfg, "train", mode="eval"), build_dataset(cfg, "val", mode="eval")
    rows: list[dict] = []
    start = time.perf_counter()
    for seed, method in progress(method_steps(cfg), "compare", leave=True):
        if method in LOSSES:
            train(cfg.replace(seed=seed, loss=method), out_dir / f"{method}-seed{seed}", resume, overwrite)
        rows += result_rows(method, seed, cfg, out_dir, train_set, val_set)
        if distributed.is_main():
            write_results(out_dir, rows, cfg, time.perf_counter() - start)
    return rows


def collect(cfg: Config, out_dir: Path, seconds: float | None = None) -> list[dict]:
    """The comparison's rows from the runs under ``out_dir`` (the notebooks' path): evaluations
    missing there are computed (references, trained runs not yet evaluated); writes the results files."""
    train_set, val_set = build_dataset(cfg, "train", mode="eval"), build_dataset(cfg, "val", mode="eval")
    rows = [
        row
        for seed, method in progress(method_steps(cfg), "results", leave=True)
        for row in result_rows(method, seed, cfg, out_dir, train_set, val_set)
    ]
    write_results(Path(out_dir), rows, cfg, seconds if seconds is not None else sum(r["seconds"] or 0 for r in rows))
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
    """A Markdown table laid out like the paper's Table 2, the paper's numbers beside ours (and plain
    PiCIE's published numbers, where a source gives them; an empty cell where none does)."""
    lines = ["| Method | " + " | ".join(HEADERS) + " |", "|---" * (len(HEADERS) + 1) + "|"]
    for method in TABLE_ORDER:
        mine = [r for r in rows if r["loss"] == method]
        if with_paper and method in PAPER_TABLE:
            lines.append(f"| {PAPER_ROW_NAMES[method]} | " + " | ".join(f"{v:.2f}" for v in PAPER_TABLE[method]) + " |")
            if method == "ce":
                cells = ["" if v is None else f"{v:.2f}" for v in PLAIN_PICIE]
                lines.append("| PiCIE without +H (Cho et al. 2021) | " + " | ".join(cells) + " |")
        if mine:
            cells = [_cell([r[c] for r in mine]) for c in columns]
            lines.append(f"| **{METHOD_NAMES[method]}, ours** | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def differences_markdown(rows: list[dict]) -> str:
    """Each method's paired difference from PiCIE (CE) over the seeds both ran: mean ± sample std."""
    lines = ["| Method - PiCIE (CE) | " + " | ".join(HEADERS) + " | seeds |", "|---" * (len(HEADERS) + 2) + "|"]
    for method in LOSSES[1:]:
        cells, n = [], 0
        for c in COLUMNS:
            a, b = by_seed(rows, method, c), by_seed(rows, "ce", c)
            diffs = [a[s] - b[s] for s in sorted(set(a) & set(b))]
            n = len(diffs)
            if not diffs:
                cells.append("-")
            elif n == 1:
                cells.append(f"{diffs[0]:+.2f}")
            else:
                cells.append(f"{np.mean(diffs):+.2f} ± {np.std(diffs, ddof=1):.2f}")
        lines.append(f"| {METHOD_NAMES[method]} | " + " | ".join(cells) + f" | {n} |")
    return "\n".join(lines)


def results_markdown(rows: list[dict], cfg: Config, seconds: float, out_dir: Path) -> str:
    seeds = sorted({r["seed"] for r in rows})
    epochs = ", ".join(f"{METHOD_NAMES[m]} {cfg.epochs_for(m)}" for m in LOSSES)
    ib_phase = ib_phase_markdown(rows, out_dir)
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
            "## The evaluation's noise beside the seeds' spread",
            "",
            noise_markdown(rows),
            "",
            "## Thing / Stuff by the global protocol (the All matching, scores restricted to the group)",
            "",
            table2_markdown(rows, columns=("acc_all", "miou_all", *GLOBAL_COLUMNS), with_paper=False),
            "",
            "## Thing / Stuff as PiCIE's code prints it (a reproduction, not a protocol)",
            "",
            "PiCIE's `commons.py` moves each class's row to its matched cluster's index and slices the first 12",
            "*cluster indices* against the rest, so a class matched to a cluster on the other side changes group;",
            "the paper's method rows were most likely computed this way (`protocols.png` compares the three).",
            "",
            table2_markdown(rows, columns=("acc_all", "miou_all", *CODE_COLUMNS), with_paper=False),
            "",
            protocol_spread(rows) if any(r["loss"] == "ce" for r in rows) else "",
            "",
            "## Each method against PiCIE (CE), seed by seed",
            "",
            differences_markdown(rows),
            "",
            *([IB_PHASE_TITLE, "", ib_phase, ""] if ib_phase else []),
        ]
    )


def plot_results(rows: list[dict]):
    """Grouped bars of the six numbers per method (ours: mean over seeds, one sample std where there are
    several), the paper's values as black ticks on their method's bar; the key under the axes."""
    methods = [m for m in TABLE_ORDER if any(r["loss"] == m for r in rows)]
    fig, ax = plt.subplots(figsize=(11, 4))
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(COLUMNS))
    n_seeds = len({r["seed"] for r in rows})
    for i, method in enumerate(methods):
        values = np.array([[r[c] for c in COLUMNS] for r in rows if r["loss"] == method], dtype=float)
        spread = np.nanstd(values, axis=0, ddof=1) if len(values) > 1 else None
        ax.bar(
            x + i * width,
            np.nanmean(values, axis=0),
            width,
            yerr=spread,
            capsize=2,
            label=METHOD_NAMES[method],
            color=METHOD_COLOURS[method],
        )
        if method in PAPER_TABLE:
            ax.scatter(
                x + i * width,
                PAPER_TABLE[method],
                marker="_",
                color="black",
                s=200,
                zorder=3,
                label="the paper's value (COCO-Stuff-27)" if i == 0 else None,
            )
    ax.set_xticks(x + width * (len(methods) - 1) / 2, HEADERS)
    ax.set_ylabel("%")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
    spread = f"mean of {n_seeds} seeds ± one sample std" if n_seeds > 1 else "one seed"
    ax.set_title(f"Ours (bars, {spread}) and the paper's Table 2 (black ticks)")
    fig.tight_layout()
    return fig


PROTOCOLS = {  # name: the four Thing / Stuff columns by that protocol
    "subset (the paper's tables)": ("acc_thing", "miou_thing", "acc_stuff", "miou_stuff"),
    "global (the All matching)": GLOBAL_COLUMNS,
    "as PiCIE's code prints it": CODE_COLUMNS,
}


def plot_protocols(rows: list[dict]):
    """Thing / Stuff Acc and mIoU of each trained method by the three protocols, on the same predictions
    (mean over seeds; bars of one sample std where there are several)."""
    methods = [m for m in LOSSES if any(r["loss"] == m for r in rows)]
    fig, axes = plt.subplots(
        1, max(1, len(methods)), figsize=(4.2 * max(1, len(methods)), 3.6), sharey=True, squeeze=False
    )
    x = np.arange(4)
    width = 0.8 / len(PROTOCOLS)
    for ax, method in zip(axes[0], methods, strict=False):
        for i, (name, columns) in enumerate(PROTOCOLS.items()):
            values = np.array(
                [[math.nan if r.get(c) is None else r[c] for c in columns] for r in rows if r["loss"] == method]
            )
            spread = np.nanstd(values, axis=0, ddof=1) if len(values) > 1 else None
            ax.bar(x + i * width, np.nanmean(values, axis=0), width, yerr=spread, capsize=2, label=name)
        ax.set_xticks(x + width, ["Thing Acc", "Thing mIoU", "Stuff Acc", "Stuff mIoU"], fontsize=8)
        ax.set_title(METHOD_NAMES[method], fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel("%")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle("The same predictions, three ways to score Thing and Stuff", fontsize=11)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def protocol_spread(rows: list[dict], method: str = "ce") -> str:
    """One sentence: how far the three protocols put ``method``'s Thing and Stuff Acc apart."""
    parts = []
    for group in ("thing", "stuff"):
        values = {}
        for name, columns in PROTOCOLS.items():
            value = _mean_of(rows, method, columns[0] if group == "thing" else columns[2])
            if not math.isnan(value):
                values[name.split(" (")[0]] = value
        if values:
            listed = ", ".join(f"{v:.1f} {name}" for name, v in values.items())
            spread = max(values.values()) - min(values.values())
            parts.append(f"{group.title()} Acc reads {listed} ({spread:.1f} points apart)")
    return f"On the same predictions of {METHOD_NAMES[method]}: " + "; ".join(parts) + "."


def _mean_of(rows: list[dict], method: str, column: str) -> float:
    values = [r[column] for r in rows if r["loss"] == method and r.get(column) is not None]
    return float(np.nanmean(values)) if values else math.nan


def write_results(out_dir: Path, rows: list[dict], cfg: Config, seconds: float) -> None:
    """results.{json,csv,md,png}, timings.json and, once all three methods have rows, claims.{json,csv}."""
    text = results_markdown(rows, cfg, seconds, out_dir)
    if all(any(r["loss"] == m for r in rows) for m in LOSSES):
        claims = paper_claims(rows, out_dir)
        write_json(out_dir / "claims.json", claims)
        atomic_write_text(out_dir / "claims.csv", csv_text(claims))
        text += "\n## The paper's claims, on our numbers\n\n" + claims_markdown(claims) + "\n"
    write_json(out_dir / "results.json", rows)
    atomic_write_text(out_dir / "results.csv", csv_text(rows))
    atomic_write_text(out_dir / "results.md", text)
    per_method = {f"{r['loss']}-seed{r['seed']}": r["seconds"] for r in rows if r["seconds"] is not None}
    write_json(out_dir / "timings.json", {"wall_seconds": seconds, "per_method": per_method})
    fig = plot_results(rows)
    save_figure(fig, out_dir / "results.png", dpi=120, reading=readings.results(rows))
    plt.close(fig)
    if any(r["loss"] in LOSSES for r in rows):
        fig = plot_protocols(rows)
        reading = protocol_spread(rows) if any(r["loss"] == "ce" for r in rows) else None
        save_figure(fig, out_dir / "protocols.png", dpi=120, reading=reading)
        plt.close(fig)
