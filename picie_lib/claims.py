"""The paper's Table 2 and its claims, checked on our numbers: the published rows, and for each claim
(Focal helps things, hurts stuff; IB-Focal beats PiCIE; things are over-segmented) the mean paired
difference from PiCIE (CE) over the seeds, its standard error and a verdict."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from picie_lib.config import METHOD_NAMES
from picie_lib.eval_seeds import mean_over_draws
from picie_lib.scores import read_metrics

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
# Not the paper's: what IB-Focal's own phase adds to the CE weights it started from (its switch's), same seeds.
IB_PHASE_CLAIM = "The IB phase improves on its own start (IB-Focal above its weights at the switch, All Acc and mIoU)"
IB_PHASE_PARTS = (("ib_focal", "acc_all", 1), ("ib_focal", "miou_all", 1))
AT_SWITCH = "ib_focal_at_switch"  # the results rows of the switch's weights
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


def evaluation_se(a_se: dict[int, float], b_se: dict[int, float]) -> float:
    """The evaluation's standard error of the mean paired difference ``a - b``. Each run's score carries the
    evaluation's noise on that run's fixed weights, of standard error ``se[seed]`` (one k-means draw's standard
    deviation over the square root of the draws its score averages, ``eval_spread``): a difference of two runs
    has variance ``se_a^2 + se_b^2``, the mean of n such differences that sum over n^2. NaN where no run
    measured its evaluation's spread."""
    pairs = [(a_se[s], b_se[s]) for s in sorted(set(a_se) & set(b_se))]
    pairs = [(a, b) for a, b in pairs if a is not None and b is not None and not (math.isnan(a) or math.isnan(b))]
    if not pairs:
        return math.nan
    return math.sqrt(sum(a * a + b * b for a, b in pairs)) / len(pairs)


def verdict(difference: float, se: float, n: int, direction: int, eval_se: float = math.nan) -> str:
    """ "within evaluation noise" when the mean paired difference is under two of the evaluation's standard
    errors (``evaluation_se``; the k-means alone could make it); else "yes" when it is at least two
    standard errors over the seeds in the claimed direction, "no" when two against, "within noise"
    otherwise; "one seed" with one seed. A claim holds only beyond both noises."""
    if n == 0 or math.isnan(difference):
        return "no data"
    if not math.isnan(eval_se) and abs(difference) < 2 * eval_se:
        return "within evaluation noise"
    if n < 2:
        return "one seed"
    signed = direction * difference
    if signed > 0 and signed >= 2 * se:
        return "yes"
    if signed < 0 and -signed >= 2 * se:
        return "no"
    return "within noise"


def combined_verdict(verdicts: list[str]) -> str:
    """A claim of several parts holds when all hold, fails when one fails."""
    for word in ("no", "no data", "within evaluation noise", "one seed"):
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


def _oversegmentation_parts(rows: list[dict], out_dir: Path) -> list[dict]:
    """The over-segmentation claim's parts: things - stuff in PiCIE's runs, per measure."""
    parts = []
    for kind_key, label in (
        ("effective_clusters", "effective clusters per class"),
        ("fragments_per_object", "pieces per object"),
    ):
        thing = _oversegmentation_by_seed(out_dir, rows, "thing", kind_key)
        stuff = _oversegmentation_by_seed(out_dir, rows, "stuff", kind_key)
        difference, se, n = paired_difference(thing, stuff)
        paper = {"paper_method": None, "paper_picie_h": None, "paper_plain_picie": None}
        paper |= {"paper_holds_vs_picie_h": "shown qualitatively (Figure 2)", "paper_holds_vs_plain_picie": ""}
        ours = {
            "ours_method": float(np.mean(list(thing.values()))) if thing else math.nan,
            "ours_ce": float(np.mean(list(stuff.values()))) if stuff else math.nan,
            "difference": difference,
            "se": se,
            "eval_se": math.nan,
            "n_seeds": n,
            "part_verdict": verdict(difference, se, n, 1),
        }
        claimed = {"claim": OVERSEGMENTATION_CLAIM, "metric": f"{label}, things - stuff (PiCIE)", "direction": "above"}
        parts.append(claimed | {"against": "things minus stuff"} | paper | ours)
    return parts


def paper_claims(rows: list[dict], out_dir: Path) -> list[dict]:
    """Each claim of the paper, part by part: the paper's numbers against its own PiCIE row (PiCIE + H)
    and against plain PiCIE where one is published, and ours: the mean paired difference from PiCIE
    (CE) over the seeds, its standard error, the number of seeds and the verdict (``verdict``); then the IB
    phase's own effect (IB-Focal against its switch's weights, where the rows hold them); the claim's verdict
    (``holds``) combines its parts."""
    header = dict(zip(COLUMNS, HEADERS, strict=True))
    parts = []
    for claim, checks in CLAIMS:
        for method, column, direction in checks:
            i = COLUMNS.index(column)
            claimed = {"claim": claim, "metric": header[column], "direction": "above" if direction > 0 else "below"}
            parts.append(
                claimed
                | {"against": "ce"}
                | _paper(method, i, direction)
                | _ours(rows, method, column, direction, "ce")
            )
    if any(r["loss"] == AT_SWITCH for r in rows):
        for method, column, direction in IB_PHASE_PARTS:
            paper = {"paper_method": None, "paper_picie_h": None, "paper_plain_picie": None}
            parts.append(
                {"claim": IB_PHASE_CLAIM, "metric": header[column], "direction": "above", "against": AT_SWITCH, **paper}
                | {"paper_holds_vs_picie_h": "not reported", "paper_holds_vs_plain_picie": "not reported"}
                | _ours(rows, method, column, direction, AT_SWITCH)
            )
    parts += _oversegmentation_parts(rows, out_dir)
    for part in parts:
        part["holds"] = combined_verdict([p["part_verdict"] for p in parts if p["claim"] == part["claim"]])
        for key, value in part.items():  # strict JSON: no NaN (one seed has no standard error)
            if isinstance(value, float) and math.isnan(value):
                part[key] = None
    return parts


def _paper(method: str, i: int, direction: int) -> dict:
    """The paper's side of a claim's part: its method's number in column ``i`` against its PiCIE + H row and
    plain PiCIE's (where published), and whether each difference lies in the claimed ``direction``."""
    theirs, their_ce, plain = PAPER_TABLE[method][i], PAPER_TABLE["ce"][i], PLAIN_PICIE[i]
    return {
        "paper_method": theirs,
        "paper_picie_h": their_ce,
        "paper_plain_picie": plain,
        "paper_holds_vs_picie_h": "yes" if direction * (theirs - their_ce) > 0 else "no",
        "paper_holds_vs_plain_picie": "not published"
        if plain is None
        else ("yes" if direction * (theirs - plain) > 0 else "no"),
    }


def _ours(rows: list[dict], method: str, column: str, direction: int, baseline: str) -> dict:
    """Our side of a claim's part: both means, the mean paired difference from ``baseline`` over the seeds, its
    standard error, the evaluation's (against the switch: paired by k-means draw, ``eval_seeds.paired_effect``)
    and the verdict."""
    mine, theirs = by_seed(rows, method, column), by_seed(rows, baseline, column)
    difference, se, n = paired_difference(mine, theirs)
    if baseline == AT_SWITCH:
        eval_se = _root_sum_of_squares(by_seed(rows, AT_SWITCH, f"paired_eval_se_{column}"))
    else:
        key = f"eval_se_{column}"
        eval_se = evaluation_se(by_seed(rows, method, key), by_seed(rows, baseline, key))
    return {
        "ours_method": float(np.mean(list(mine.values()))) if mine else math.nan,
        "ours_ce": float(np.mean(list(theirs.values()))) if theirs else math.nan,
        "difference": difference,
        "se": se,
        "eval_se": eval_se,
        "n_seeds": n,
        "part_verdict": verdict(difference, se, n, direction, eval_se),
    }


def _root_sum_of_squares(se: dict[int, float]) -> float:
    """The standard error of a mean over seeds of differences whose own standard errors are ``se`` (per seed)."""
    values = [v for v in se.values() if v is not None and not math.isnan(v)]
    return math.sqrt(sum(v * v for v in values)) / len(values) if values else math.nan


def _number(value, spec: str = ".2f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


VERDICT_WORDS = {"yes": "holds", "no": "fails"}  # a part's verdict as the tables print it; the rest as they are


def part_text(p: dict) -> str:
    """One part of a claim as its tables print it: both means, the paired difference ± its standard error over
    the seeds (and the evaluation's), and that part's own verdict."""
    versus = {"ce": "", AT_SWITCH: " at the switch"}.get(p.get("against"), "")
    text = (
        f"{p['metric']} {_number(p['ours_method'])} vs {_number(p['ours_ce'])}{versus}, "
        f"{_number(p['difference'], '+.2f')} ± {_number(p['se'])} ({p['n_seeds']})"
    )
    if p.get("eval_se") is not None:
        text += f", evaluation ± {_number(p['eval_se'])}"
    return f"{text}: {VERDICT_WORDS.get(p['part_verdict'], p['part_verdict'])}"


def claims_markdown(parts: list[dict]) -> str:
    """One line per claim: the paper's numbers (against its PiCIE + H row and against plain PiCIE), ours (each
    part's means, paired difference ± its standard errors and the part's verdict) and the claim's verdict."""
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
                f"{_number(p['difference'], '+.2f')} ± {_number(p['se'])} ({p['n_seeds']}): "
                + VERDICT_WORDS.get(p["part_verdict"], p["part_verdict"])
                for p in mine
            )
        elif claim == IB_PHASE_CLAIM:
            paper, plain = "not reported (not a claim of the paper)", ""
            ours = "; ".join(part_text(p) for p in mine)
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
            ours = "; ".join(part_text(p) for p in mine)
        lines.append(f"| {claim} | {paper} | {plain} | {ours} | {mine[0]['holds']} |")
    return "\n".join(lines) + "\n\n" + RULE_TEXT


RULE_TEXT = (
    "A part holds when the mean paired difference (same seeds; from PiCIE, or for the IB phase from its weights "
    "at the switch) is at least two standard errors in the claimed direction, fails when it is two standard errors "
    "against, and is within noise otherwise; with one seed it is not judged. Before that, a difference under two "
    "of the evaluation's standard errors (\u00b1 evaluation: what the k-means draws alone leave in the mean paired "
    "difference, sqrt(sum over seeds of se_method^2 + se_PiCIE^2) / seeds, each run's se its draws' std over "
    "sqrt(draws), `evaluate --eval-seeds`; against the switch, the draws' paired differences) is within evaluation "
    "noise: a part holds only beyond both. A claim of several parts (Acc and mIoU) holds when every part holds and "
    "fails when one fails; otherwise it takes the first of its parts' no data, within evaluation noise, one seed, "
    "within noise."
)


def _std(values: list[float]) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def noise_markdown(rows: list[dict], columns: tuple[str, ...] = ("acc_all", "miou_all")) -> str:
    """Per method, the noises of its scores side by side: the spread over training seeds (sample std of the
    seeds' scores), and the evaluation's own on fixed weights: one k-means draw's sample std over the
    ``eval_seeds`` draws, and the standard error left in the score, which averages them (both averaged over
    the training seeds)."""
    header = dict(zip(COLUMNS, HEADERS, strict=True))
    lines = [
        "| Method | "
        + " | ".join(
            f"{header[c]}: seeds' std | {header[c]}: one k-means draw's std | {header[c]}: the score's evaluation se"
            for c in columns
        )
        + " | k-means draws per score |",
        "|---" * (3 * len(columns) + 2) + "|",
    ]
    for method in dict.fromkeys(r["loss"] for r in rows):
        mine = [r for r in rows if r["loss"] == method]
        cells = []
        for c in columns:
            cells += [_number(_std([r[c] for r in mine]))]
            cells += [_number(mean_over_draws([r.get(f"eval_{kind}_{c}") for r in mine])) for kind in ("std", "se")]
        n_eval = min(r.get("eval_seeds", 1) for r in mine)
        lines.append(f"| {METHOD_NAMES[method]} | " + " | ".join(cells) + f" | {n_eval} |")
    lines += [
        "",
        "A score is the mean of its k-means draws, so its evaluation noise is one draw's std over the square root "
        "of their number. A dash: one seed (no spread), or one k-means draw (`-p eval_seeds=5` measures it).",
    ]
    return "\n".join(lines)
