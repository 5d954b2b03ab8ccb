"""The Takeaways that close each notebook, with the numbers of the run, and the conclusion of a comparison
(``07_compare`` and ``report.md``). Markdown bullets; the sentences say what the numbers mean."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from picie_lib import readings
from picie_lib.claims import VERDICT_WORDS
from picie_lib.config import LOSS_NAMES, LOSSES, METHOD_NAMES

VERDICTS = {
    "yes": "holds",
    "no": "fails",
    "within noise": "within noise",
    "within evaluation noise": "within the evaluation's noise (its k-means draws alone move the scores as much)",
    "one seed": "not judged (one seed)",
    "no data": "not judged (no data)",
}


AGAINST = {  # what a claim's parts are differences of
    "ce": "difference from PiCIE",
    "ib_focal_at_switch": "difference from IB-Focal's weights at the switch",
    "things minus stuff": "things minus stuff in PiCIE's runs",
}


def bullets(lines: Sequence[str]) -> str:
    return "\n".join(f"- {line}" for line in lines)


def setup(report: Sequence[dict], changed: dict, source: str) -> str:
    """00's Takeaways; ``source`` names where the parameters came from (``notebook.parameters_source``)."""
    found = {r["item"]: r["found"] for r in report}
    missing = [r["item"] for r in report if r["status"] == "missing"]
    return bullets(
        [
            f"This machine runs torch {found['torch']} on {found['device / k-means']} (device / k-means backend).",
            f"The {source} changes {len(changed)} of the paper's parameters"
            + (f" ({', '.join(sorted(changed)[:6])}{', ...' if len(changed) > 6 else ''})." if changed else "."),
            "Nothing this preset needs is missing."
            if not missing
            else f"Missing for this preset: {', '.join(missing)}; the other notebooks will fail until it is fixed.",
        ]
    )


def data(counts: np.ndarray, names: Sequence[str], things: Sequence[int], stuff_share: np.ndarray) -> str:
    counts = np.asarray(counts, dtype=float)
    if counts.sum() == 0:
        return bullets(["No labelled pixel in the scanned images: nothing to say about the classes."])
    share = 100 * counts / counts.sum()
    present = np.flatnonzero(counts)
    order = present[np.argsort(-counts[present])]
    labelled = stuff_share[np.isfinite(stuff_share)]
    top3 = share[order[:3]].sum()
    return bullets(
        [
            f"Things are {share[list(things)].sum():.1f}% of the labelled pixels; the three largest classes "
            f"({', '.join(names[c] for c in order[:3])}) hold {top3:.0f}%.",
            f"The largest class has {counts[order[0]] / counts[order[-1]]:.0f} times the pixels of the smallest "
            "present. PiCIE's CE weights each cluster by its share of the pixels (`balance: picie`): where clusters "
            "follow classes, that favours the head of this tail.",
            f"{100 * np.mean(labelled >= 0.75):.0f}% of the scanned images have at least 75% stuff pixels "
            "(PiCIE's curation rule)."
            if len(labelled)
            else "No scanned image has labels.",
        ]
    )


def views(agreement: dict[str, dict[str, float]], crops) -> str:
    sides = 100 * np.asarray(crops, dtype=float)[:, 2]
    lines = [f"View 1 keeps {sides.min():.0f}-{sides.max():.0f}% of the image's side in these images."]
    for name, a in agreement.items():
        lines.append(
            f"{name[0].upper() + name[1:]}: the same pixel in both views agrees at cosine {a['same']:.2f}, a mirrored "
            f"one at {a['mirrored']:.2f} (gap {a['same'] - a['mirrored']:.2f})."
        )
    if len(agreement) > 1:
        (before, *_, after) = agreement.values()
        gaps = before["same"] - before["mirrored"], after["same"] - after["mirrored"]
        lines.append(
            f"Training widens the gap from {gaps[0]:.2f} to {gaps[1]:.2f}: the features follow the pixel through "
            "the crop and flip."
            if gaps[1] > gaps[0]
            else f"Training did not widen the gap ({gaps[0]:.2f} before, {gaps[1]:.2f} after): this run's features "
            "do not follow the pixel better than the untrained network's."
        )
    return bullets(lines)


def clustering(refs: Sequence[dict]) -> str:
    by = {r["loss"]: r for r in refs}
    rgb, floor = by.get("rgb_kmeans"), by.get("untrained")
    lines = [
        "The Hungarian matching pairs clusters and classes one to one, the pairing that puts the most pixels "
        "on the diagonal over all classes at once; a majority vote would name each cluster by the class it "
        "covers most, and could give two clusters one class."
    ]
    if rgb and floor:
        lines.append(
            f"k-means on RGB scores {rgb['acc_all']:.1f} All Acc, on the network before training "
            f"{floor['acc_all']:.1f}: a trained PiCIE must beat {max(rgb['acc_all'], floor['acc_all']):.1f} "
            "to have learned anything."
        )
        lines.append(
            f"Thing mIoU: RGB {rgb['miou_thing']:.1f}, the network {floor['miou_thing']:.1f}; Stuff mIoU: RGB "
            f"{rgb['miou_stuff']:.1f}, the network {floor['miou_stuff']:.1f}."
        )
    return bullets(lines)


def losses(cfg) -> str:
    p, factor = readings.focal_reach(cfg, cfg.temperature)
    low, high = readings.ib_focal_over_ce(cfg)
    if factor >= 0.1:
        reach = f"so Focal's factor stays above {factor:.2f}: no pixel fades much, and Focal is close to a rescaled CE."
    else:
        reach = f"where Focal's factor falls to {factor:.2g}: confident pixels fade, as the paper intends."
    if low > 1:
        scale = (
            f"its values are {readings.times(low, high)} CE's. Under SGD the IB steps would grow as much; Adam's step "
            "does not grow with the loss (the last figure)"
        )
        if cfg.ib_lr_factor < 1:
            factor = cfg.ib_lr_factor
            scale += f", so the rate's drop (x{factor:g}) makes every IB step {1 / factor:g} times smaller"
        scale += "."
    elif high < 1:
        scale = f"its values are {readings.times(low, high)} CE's: below CE everywhere plotted."
    else:
        scale = f"its values range from {readings.times(low, high)} CE's, crossing it."
    return bullets(
        [
            f"Focal multiplies CE by (1 - p_t)^{cfg.gamma:g}: a pixel at p_t = 0.9 counts {0.1**cfg.gamma:.2g} as "
            "much as under CE.",
            f"With cosine logits at T = {cfg.temperature:g} a pixel on its centroid, the others orthogonal, reaches "
            f"p_t = {readings.probability(p)}, {reach}",
            f"IB-Focal divides by 2(1 - p_t) ||f||_1 and multiplies by alpha = {cfg.ib_alpha:g}: {scale}",
        ]
    )


def training(log: Sequence[dict], summary: dict) -> str:
    kept = [r for r in log if not r.get("discarded")]
    if not kept:
        return bullets(["No epoch finished yet."])
    seconds = summary.get("seconds_per_pass", {})
    lines = [
        f"{len(kept)} epochs kept ({LOSS_NAMES[kept[-1]['phase']]} at the end), "
        f"{sum(seconds.values()) / 60:.1f} min of passes: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
        + "."
    ]
    for phase in dict.fromkeys(r["phase"] for r in kept):
        points = [r["loss"] for r in kept if r["phase"] == phase]
        lines.append(f"{LOSS_NAMES[phase]} loss: {points[0]:.3g} -> {points[-1]:.3g} over {len(points)} epochs.")
    switch, epochs = summary.get("switch_epoch"), summary.get("epochs", len(kept))
    if switch is not None and switch > epochs:
        lines.append("IB-Focal never ran: the switch fell after the last epoch.")
    elif switch is not None and summary.get("ce_min_epoch") is not None:  # switch: min_loss
        # a CE epoch that rose above the minimum is discarded (picie.Schedule); none means the loss still fell
        # when the cap, half the epochs, forced the switch
        rose = any(r.get("discarded") for r in log)
        lines.append(
            f"IB-Focal took over at epoch {switch}, after the CE minimum at epoch {switch - 1}."
            if rose
            else f"IB-Focal took over at epoch {switch}, forced by the cap (half the epochs): the CE loss was still "
            f"falling at epoch {switch - 1}."
        )
    elif switch is not None:
        lines.append(f"IB-Focal took over at epoch {switch}, after {switch - 1} CE epochs (a fixed switch).")
    moved = readings.phase_movement(kept).strip()
    if moved:
        lines.append(moved.replace(" (relative L2, right panel)", " (relative L2)"))
    empty = max(max(r["empty_clusters"]) for r in kept)
    lines.append(
        f"At most {empty} empty cluster{'s' if empty > 1 else ''} in an epoch's k-means."
        if empty
        else "No epoch's k-means left a cluster empty."
    )
    return bullets(lines)


def evaluation(result: dict, method: str) -> str:
    s = result["scores"]
    scored = [r for r in result["per_class"] if r["pixels"] > 0 and np.isfinite(r["iou_all"])]
    if not scored:
        return bullets([f"{method}: no labelled pixel in the validation split, nothing was scored."])
    best, worst = max(scored, key=lambda r: r["iou_all"]), min(scored, key=lambda r: r["iou_all"])
    return bullets(
        [
            f"{method}: All Acc {s['acc_all']:.1f}, mIoU {s['miou_all']:.1f}; Thing Acc {s['acc_thing']:.1f} "
            f"(subset) / {s['global_acc_thing']:.1f} (global); Stuff Acc {s['acc_stuff']:.1f} / "
            f"{s['global_acc_stuff']:.1f}.",
            f"Best class {best['class']} (IoU {best['iou_all']:.0f}), worst {worst['class']} ({worst['iou_all']:.0f}).",
            f"Over-segmentation: things spread over {result['oversegmentation']['thing']['effective_clusters']:.2f} "
            f"effective clusters, stuff {result['oversegmentation']['stuff']['effective_clusters']:.2f}.",
        ]
    )


def conclusion(rows: Sequence[dict], claims: Sequence[dict]) -> str:
    """Which of the paper's claims hold on this run, by how much, with the seed spread."""
    seeds = sorted({r["seed"] for r in rows})

    def spread(method: str, column: str) -> str:
        values = [r[column] for r in rows if r["loss"] == method and r.get(column) is not None]
        if not values:
            return "-"
        if len(values) == 1:
            return f"{values[0]:.1f}"
        return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"

    lines = [
        "All Acc / mIoU"
        + (f" (mean ± sample std over seeds {seeds})" if len(seeds) > 1 else f" (seed {seeds[0]})")
        + ": "
        + "; ".join(
            f"{METHOD_NAMES[m]} {spread(m, 'acc_all')} / {spread(m, 'miou_all')}"
            for m in (*LOSSES, "untrained")
            if any(r["loss"] == m for r in rows)
        )
        + "."
    ]
    for claim in dict.fromkeys(c["claim"] for c in claims):
        parts = [c for c in claims if c["claim"] == claim]
        numbers = "; ".join(
            f"{p['metric'].split(',')[0]} "
            + ("-" if p.get("difference") is None else f"{p['difference']:+.2f}")
            + (f" ± {p['se']:.2f} (SE)" if p.get("se") is not None else "")
            + (f", evaluation ± {p['eval_se']:.2f}" if p.get("eval_se") is not None else "")
            + f": {VERDICT_WORDS.get(p['part_verdict'], p['part_verdict'])}"
            for p in parts
        )
        verdict = VERDICTS.get(parts[0]["holds"], parts[0]["holds"])
        against = AGAINST.get(parts[0].get("against"), "difference from PiCIE")
        rule = ", every part must hold" if len(parts) > 1 else ""
        lines.append(f"**{claim}**: {verdict}{rule} ({against}: {numbers}).")
    if len(seeds) == 1:
        lines.append(
            "One seed judges nothing: rerun with `-p seeds=[0,1,2]` to see which claims survive the seed spread."
        )
    return bullets(lines)
