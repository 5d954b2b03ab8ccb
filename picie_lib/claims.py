"""The paper's Table 2 and its claims, checked on our numbers: the published rows, and for each claim
(Focal helps things, hurts stuff; IB-Focal beats PiCIE; things are over-segmented) the mean paired
difference from PiCIE (CE) over the seeds, its standard error and a verdict."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from picie_lib.evaluate import read_metrics

COLUMNS = ("acc_all", "miou_all", "acc_thing", "miou_thing", "acc_stuff", "miou_stuff")
GLOBAL_COLUMNS = ("global_acc_thing", "global_miou_thing", "global_acc_stuff", "global_miou_stuff")
CODE_COLUMNS = ("code_acc_thing", "code_miou_thing", "code_acc_stuff", "code_miou_stuff")
HEADERS = ("Acc All", "mIoU All", "Acc Thing", "mIoU Thing", "Acc Stuff", "mIoU Stuff")

# The paper's Table 2 (COCO-Stuff-27, ImageNet-pretrained ResNet-18, batch 256, 320 px). Its "PiCIE"
# row holds the numbers of PiCIE + H (PiCIE with an auxiliary over-clustering head) in Cho et al. (2021).
PAPER_TABLE = {
    "ce": (49.99, 14.36, 69.39, 23.83, 74.56, 17.32),
    "focal": (46.21, 16.34, 77.17, 33.68, 61.27, 22.68),
    "ib_focal": (51.37, 15.57, 74.73, 29.01, 69.33, 20.99),
}
# Plain PiCIE (no +H) in Cho et al. (2021), COCO-Stuff-27 All; no cited source gives its Thing / Stuff.
PLAIN_PICIE = (48.09, 13.84, None, None, None, None)
PAPER_ROW_NAMES = {
    "ce": "PiCIE, the paper's row (= PiCIE + H, Cho et al. 2021)",
    "focal": "Method 1: Focal, the paper",
    "ib_focal": "Method 2: IB-Focal, the paper",
}


# ---- the claims ----------------------------------------------------------------------------------------
# (claim, parts): a part is (method, column, +1 if the method should score above PiCIE's, -1 below)
CLAIMS = (
    ("Focal helps things (Thing Acc and mIoU above PiCIE's)", (("focal", "acc_thing", 1), ("focal", "miou_thing", 1))),
    ("Focal hurts stuff (Stuff Acc below PiCIE's)", (("focal", "acc_stuff", -1),)),
    ("IB-Focal beats PiCIE on All Acc and mIoU", (("ib_focal", "acc_all", 1), ("ib_focal", "miou_all", 1))),
)
OVERSEGMENTATION_CLAIM = "Things are over-segmented (PiCIE spreads a thing over more clusters and pieces than stuff)"


def by_seed(rows: list[dict], method: str, column: str) -> dict[int, float]:
    return {r["seed"]: r[column] for r in rows if r["loss"] == method and r.get(column) is not None}


def paired_difference(a: dict[int, float], b: dict[int, float]) -> tuple[float, float, int]:
    """Mean of ``a[s] - b[s]`` over the seeds both have, its standard error (sample std / sqrt(n); NaN
    for one seed) and n."""
    diffs = np.array([a[s] - b[s] for s in sorted(set(a) & set(b))], dtype=float)
    n = len(diffs)
    if n == 0:
        return math.nan, math.nan, 0
    se = float(np.std(diffs, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return float(diffs.mean()), se, n


def verdict(difference: float, se: float, n: int, direction: int) -> str:
    """ "yes" when the mean paired difference is at least two standard errors in the claimed direction,
    "no" when it is two standard errors against, "within noise" otherwise; "one seed" with one seed."""
    if n < 2 or math.isnan(difference):
        return "one seed" if n == 1 else "no data"
    signed = direction * difference
    if signed > 0 and signed >= 2 * se:
        return "yes"
    if signed < 0 and -signed >= 2 * se:
        return "no"
    return "within noise"


def combined_verdict(verdicts: list[str]) -> str:
    """A claim of several parts holds when all hold, fails when one fails."""
    for word in ("no", "no data", "one seed"):
        if word in verdicts:
            return word
    return "yes" if all(v == "yes" for v in verdicts) else "within noise"


def _oversegmentation_by_seed(out_dir: Path, rows: list[dict], kind: str, key: str) -> dict[int, float]:
    values = {}
    for r in rows:
        path = Path(out_dir) / f"ce-seed{r['seed']}" / "metrics.json"
        if r["loss"] == "ce" and path.is_file():
            values[r["seed"]] = read_metrics(path)["oversegmentation"][kind][key]
    return values


def paper_claims(rows: list[dict], out_dir: Path) -> list[dict]:
    """Each claim of the paper, part by part: the paper's numbers against its own PiCIE row (PiCIE + H)
    and against plain PiCIE where one is published, and ours: the mean paired difference from PiCIE
    (CE) over the seeds, its standard error, the number of seeds and the verdict (``verdict``); the
    claim's verdict (``holds``) combines its parts."""
    header = dict(zip(COLUMNS, HEADERS, strict=True))
    parts = []
    for claim, checks in CLAIMS:
        for method, column, direction in checks:
            i = COLUMNS.index(column)
            mine, ce = by_seed(rows, method, column), by_seed(rows, "ce", column)
            difference, se, n = paired_difference(mine, ce)
            plain, theirs, their_ce = PLAIN_PICIE[i], PAPER_TABLE[method][i], PAPER_TABLE["ce"][i]
            parts.append(
                {
                    "claim": claim,
                    "metric": header[column],
                    "direction": "above" if direction > 0 else "below",
                    "paper_method": theirs,
                    "paper_picie_h": their_ce,
                    "paper_plain_picie": plain,
                    "paper_holds_vs_picie_h": "yes" if direction * (theirs - their_ce) > 0 else "no",
                    "paper_holds_vs_plain_picie": "not published" if plain is None
                    else ("yes" if direction * (theirs - plain) > 0 else "no"),
                    "ours_method": float(np.mean(list(mine.values()))) if mine else math.nan,
                    "ours_ce": float(np.mean(list(ce.values()))) if ce else math.nan,
                    "difference": difference,
                    "se": se,
                    "n_seeds": n,
                    "part_verdict": verdict(difference, se, n, direction),
                }
            )  # fmt: skip
    for kind_key, label in (
        ("effective_clusters", "effective clusters per class"),
        ("fragments_per_object", "pieces per object"),
    ):
        thing = _oversegmentation_by_seed(out_dir, rows, "thing", kind_key)
        stuff = _oversegmentation_by_seed(out_dir, rows, "stuff", kind_key)
        difference, se, n = paired_difference(thing, stuff)
        parts.append(
            {
                "claim": OVERSEGMENTATION_CLAIM,
                "metric": f"{label}, things - stuff (PiCIE)",
                "direction": "above",
                "paper_method": None, "paper_picie_h": None, "paper_plain_picie": None,
                "paper_holds_vs_picie_h": "shown qualitatively (Figure 2)", "paper_holds_vs_plain_picie": "",
                "ours_method": float(np.mean(list(thing.values()))) if thing else math.nan,
                "ours_ce": float(np.mean(list(stuff.values()))) if stuff else math.nan,
                "difference": difference, "se": se, "n_seeds": n,
                "part_verdict": verdict(difference, se, n, 1),
            }
        )  # fmt: skip
    for part in parts:
        part["holds"] = combined_verdict([p["part_verdict"] for p in parts if p["claim"] == part["claim"]])
        for key, value in part.items():  # strict JSON: no NaN (one seed has no standard error)
            if isinstance(value, float) and math.isnan(value):
                part[key] = None
    return parts


def _number(value, spec: str = ".2f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def claims_markdown(parts: list[dict]) -> str:
    """One line per claim: the paper's numbers (against its PiCIE + H row and against plain PiCIE), ours
    (method vs PiCIE, and the paired difference ± its standard error over n seeds) and the verdict."""
    lines = [
        "| Claim | Paper, vs its PiCIE row (PiCIE + H) | Paper, vs plain PiCIE | Ours: mean, difference ± SE (seeds) "
        "| Holds here |",
        "|---|---|---|---|---|",
    ]
    for claim in dict.fromkeys(p["claim"] for p in parts):
        mine = [p for p in parts if p["claim"] == claim]
        if claim == OVERSEGMENTATION_CLAIM:
            paper, plain = "shown qualitatively (Figure 2)", ""
            ours = "; ".join(
                f"{p['metric'].split(',')[0]}: things {_number(p['ours_method'])}, stuff {_number(p['ours_ce'])}, "
                f"{_number(p['difference'], '+.2f')} ± {_number(p['se'])} ({p['n_seeds']})"
                for p in mine
            )
        else:
            paper = "; ".join(
                f"{p['metric']} {_number(p['paper_method'])} vs {_number(p['paper_picie_h'])}" for p in mine
            )
            plain = "; ".join(
                f"{p['metric']} {_number(p['paper_method'])} vs {_number(p['paper_plain_picie'])}"
                if p["paper_plain_picie"] is not None
                else f"{p['metric']}: not published"
                for p in mine
            )
            ours = "; ".join(
                f"{p['metric']} {_number(p['ours_method'])} vs {_number(p['ours_ce'])}, "
                f"{_number(p['difference'], '+.2f')} ± {_number(p['se'])} ({p['n_seeds']})"
                for p in mine
            )
        lines.append(f"| {claim} | {paper} | {plain} | {ours} | {mine[0]['holds']} |")
    return "\n".join(lines) + (
        "\n\nA claim holds when the mean paired difference from PiCIE (same seeds) is at least two standard "
        "errors in the claimed direction, fails when it is two standard errors against, and is within noise "
        "otherwise; with one seed it is not judged."
    )
