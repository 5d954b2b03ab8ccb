"""Method 2's own phase, in the report: IB-Focal's final weights against the weights its phase started from (CE
stopped at the switch, ``switch.pt``), scored under the same k-means draws. Its rows, its table per seed and per
class, and the sentence that says whether the phase moved the weights and the scores beyond the noise.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from picie_lib.claims import AT_SWITCH, COLUMNS, HEADERS, VERDICT_WORDS, by_seed, paired_difference, verdict
from picie_lib.config import LOSS_NAMES
from picie_lib.eval_seeds import combine_class_effects, score_standard_error
from picie_lib.runs import read_json
from picie_lib.scores import current_evaluation, read_metrics


def at_switch_row(run_dir: Path, seed: int) -> dict | None:
    """The results row of an IB-Focal run's switch weights (``loss: ib_focal_at_switch``) from its metrics.json,
    with the evaluation's standard error of each score and of the IB phase's effect on it (``paired_eval_se_*``:
    paired by k-means draw); None where the run was scored without them."""
    metrics = read_metrics(Path(run_dir) / "metrics.json")
    if "at_switch" not in metrics:
        return None
    at, effect = metrics["at_switch"], metrics["ib_phase_effect"]["scores"]
    row = {"loss": AT_SWITCH, "seed": seed, **at["scores"], "switch_weights_epoch": at["checkpoint"]["epoch"]}
    row["seconds"] = None  # scored within the IB-Focal run's evaluation, whose row counts the time
    row["eval_seeds"] = len(at["eval_spread"]["seeds"])
    row.update({f"eval_std_{c}": at["eval_spread"][c]["std"] for c in COLUMNS})
    row.update({f"eval_se_{c}": score_standard_error(at["eval_spread"], c) for c in COLUMNS})
    row.update({f"paired_eval_se_{c}": effect[c]["se"] for c in COLUMNS})
    return row


def moved_ratio(summary: dict) -> float | None:
    """How far an IB-Focal epoch moved the weights against a CE epoch of the same run (``summary.json``)."""
    moved = summary.get("weights_moved_per_epoch", {})
    return moved["ib_focal"] / moved["ce"] if {"ce", "ib_focal"} <= set(moved) and moved["ce"] > 0 else None


def _number(value: float, spec: str = ".2f") -> str:
    return "-" if value is None or math.isnan(value) else format(value, spec)


def effect_table(rows: list[dict]) -> str:
    """Per seed and over the seeds: IB-Focal's six numbers at the switch and at the end, and their difference (the
    IB phase's own effect) ± the evaluation's standard error (paired by draw); over seeds ± the seeds' too."""
    seeds = sorted(set(by_seed(rows, AT_SWITCH, "acc_all")) & set(by_seed(rows, "ib_focal", "acc_all")))
    lines = ["| Seed | " + " | ".join(HEADERS) + " |", "|---" * (len(HEADERS) + 1) + "|"]
    for seed in seeds:
        start = next(r for r in rows if r["loss"] == AT_SWITCH and r["seed"] == seed)
        final = next(r for r in rows if r["loss"] == "ib_focal" and r["seed"] == seed)
        cells = [
            f"{start[c]:.2f} → {final[c]:.2f} ({final[c] - start[c]:+.2f} ± {_number(start[f'paired_eval_se_{c}'])})"
            for c in COLUMNS
        ]
        lines.append(f"| {seed} | " + " | ".join(cells) + " |")
    if len(seeds) > 1:
        lines.append("| mean | " + " | ".join(_mean_cell(rows, c) for c in COLUMNS) + " |")
    return "\n".join(lines)


def ib_effect(rows: list[dict], column: str) -> dict:
    """The IB phase's effect on ``column`` over the seeds: the mean paired difference (final minus at-switch), its
    standard error over the seeds, the evaluation's (the seeds' paired-draw errors combined) and the verdict of
    ``claims.verdict`` for "above"."""
    difference, se, n = paired_difference(by_seed(rows, "ib_focal", column), by_seed(rows, AT_SWITCH, column))
    eval_se = _combined([v for v in by_seed(rows, AT_SWITCH, f"paired_eval_se_{column}").values()])
    return {
        "difference": difference,
        "se": se,
        "eval_se": eval_se,
        "n": n,
        "verdict": verdict(difference, se, n, 1, eval_se),
    }


def _combined(errors: list[float | None]) -> float:
    """The standard error of a mean of independent differences whose standard errors are ``errors``."""
    values = [e for e in errors if e is not None and not math.isnan(e)]
    return math.sqrt(sum(e * e for e in values)) / len(values) if values else math.nan


def _mean_cell(rows: list[dict], column: str) -> str:
    start = np.mean(list(by_seed(rows, AT_SWITCH, column).values()))
    final = np.mean(list(by_seed(rows, "ib_focal", column).values()))
    e = ib_effect(rows, column)
    noises = f"{_number(e['difference'], '+.2f')} ± {_number(e['se'])}, ± {_number(e['eval_se'])}"
    return f"{start:.2f} → {final:.2f} ({noises}): {VERDICT_WORDS.get(e['verdict'], e['verdict'])}"


def class_effects(out_dir: Path, seeds: list[int], key: str = "iou_all") -> list[dict]:
    """Per class: the IB phase's effect on its IoU (final minus at-switch), mean over the seeds, with the seeds'
    standard error and the evaluation's (the draws' paired differences), from each run's metrics.json."""
    runs = [read_metrics(Path(out_dir) / f"ib_focal-seed{s}" / "metrics.json") for s in seeds]
    runs = [m for m in runs if "ib_phase_effect" in m]
    if not runs:
        return []
    per_seed = [[effect[key] for effect in m["ib_phase_effect"]["per_class"]] for m in runs]
    return combine_class_effects(runs[0]["per_class"], per_seed)


SLOW = 0.1  # an IB epoch moving the weights less than this share of a CE epoch's move: the phase barely trains


def ib_phase_sentence(rows: list[dict], classes: list[dict]) -> str:
    """How far IB-Focal's phase moved the weights (an IB epoch against a CE epoch of the same run), whether its
    own effect on All Acc and mIoU lies beyond both noises, and which classes' IoU it changed beyond them."""
    ratios = [r["moved_ratio"] for r in rows if r["loss"] == "ib_focal" and r.get("moved_ratio") is not None]
    text = []
    if ratios:
        ratio = float(np.mean(ratios))
        moved = f"an IB epoch moved the weights {ratio:.2f} times as far as a CE epoch of the same run"
        text.append(f"IB-Focal's phase barely trained: {moved}" if ratio < SLOW else moved)
    effects = {c: ib_effect(rows, c) for c in ("acc_all", "miou_all")}
    parts = [
        f"{name} {_number(e['difference'], '+.2f')} ± {_number(e['se'])} (seeds), ± {_number(e['eval_se'])} "
        f"(evaluation): {VERDICT_WORDS.get(e['verdict'], e['verdict'])}"
        for name, e in zip(("All Acc", "mIoU"), effects.values(), strict=True)
    ]
    text.append("the IB phase's own effect (final minus the switch's weights): " + "; ".join(parts))
    moved = [c for c in classes if c["beyond_noise"]]
    if classes and not moved:
        text.append("no class's IoU changed beyond the noise")
    elif moved:
        ranked = sorted(moved, key=lambda c: -abs(c["difference"]))
        named = ", ".join(f"{c['class']} {c['difference']:+.1f}" for c in ranked[:3])
        more = f" and {len(ranked) - 3} more (the table)" if len(ranked) > 3 else ""
        text.append(f"the IoU of {named}{more} changed beyond the noise")
    sentence = "; ".join(text)
    return sentence[0].upper() + sentence[1:] + "."


def class_markdown(classes: list[dict]) -> str:
    """The IB phase's effect per class, largest first: IoU change ± SE (seeds), ± the evaluation's."""
    lines = ["| Class | Kind | IoU change ± SE (seeds), ± evaluation | Beyond both noises |", "|---|---|---|---|"]
    for c in sorted(classes, key=lambda c: -abs(c["difference"])):
        cell = f"{c['difference']:+.2f} ± {_number(c['se'])}, ± {_number(c['eval_se'])}"
        lines.append(f"| {c['class']} | {c['kind']} | {cell} | {'yes' if c['beyond_noise'] else 'no'} |")
    return "\n".join(lines)


def ib_phase_markdown(rows: list[dict], out_dir: Path) -> str:
    """results.md's section on method 2's own phase: the sentence, the table per seed, the table per class."""
    if not any(r["loss"] == AT_SWITCH for r in rows):
        return ""
    seeds = sorted({r["seed"] for r in rows if r["loss"] == AT_SWITCH})
    classes = class_effects(out_dir, seeds)
    return "\n".join(
        [
            ib_phase_sentence(rows, classes),
            "",
            "Each score at the switch → at the end (the IB phase's effect ± the evaluation's standard error, paired by "
            "k-means draw); the mean row adds the standard error over the seeds and the verdict of the claims' rule.",
            "",
            effect_table(rows),
            "",
            "Per class (IoU, All matching), mean over the seeds:",
            "",
            class_markdown(classes),
        ]
    )


def phase_table(run_dir: Path, beside: Path | None = None) -> list[dict]:
    """05's comparison of a run with the run ``beside`` it (the folder's own run of the same loss and seed, when it
    is another folder and finished): per run, how far an epoch of each phase moved the weights, and for IB-Focal
    the scores at the switch and at the end and the phase's effect. When both are compared, each is scored first
    if it is not yet (``scores.current_evaluation``: the evaluation 06 would run)."""
    runs = {"this run": Path(run_dir)}
    if beside is not None and Path(beside).resolve() != Path(run_dir).resolve():
        if (Path(beside) / "summary.json").is_file():
            runs[f"{Path(beside).name} (beside it)"] = Path(beside)
    rows = []
    for name, folder in runs.items():
        summary = read_json(folder / "summary.json")
        row = {"run": name, "folder": str(folder)}
        for phase, moved in summary.get("weights_moved_per_epoch", {}).items():
            row[f"weights moved per {LOSS_NAMES[phase]} epoch (%)"] = round(100 * moved, 3)
        ratio = moved_ratio(summary)
        if ratio is not None:
            row["IB epoch / CE epoch"] = round(ratio, 3)
        if len(runs) > 1:
            metrics = current_evaluation(folder)
            if "at_switch" in metrics:
                row["All Acc at the switch"] = round(metrics["at_switch"]["scores"]["acc_all"], 2)
            row["All Acc"], row["mIoU"] = (round(metrics["scores"][k], 2) for k in ("acc_all", "miou_all"))
            if "ib_phase_effect" in metrics:
                effect = metrics["ib_phase_effect"]["scores"]["acc_all"]
                noise = (
                    "one k-means draw"
                    if effect["se"] is None or math.isnan(effect["se"])
                    else f"± {effect['se']:.2f}, evaluation"
                )
                row["the IB phase's effect on All Acc"] = f"{effect['difference']:+.2f} ({noise})"
        rows.append(row)
    return rows
