"""What to look for in each figure, computed from the run that drew it.

Every function returns one or two sentences with this run's numbers; the notebooks print them under
their figures (``plots.publish``) and ``report.md`` repeats them (``plots.save_figure(reading=...)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from picie_lib.config import LOSS_NAMES, LOSSES, METHOD_NAMES, Config
from picie_lib.eval_seeds import CLASS_THRESHOLD
from picie_lib.losses import cosine_logit_max_probability, cross_entropy, ib_focal_loss, reachable_l1_norms
from picie_lib.metrics import boundary_errors
from picie_lib.model import FEATURE_DIM


def _listed(items: Sequence[str]) -> str:
    items = list(items)
    if not items:
        return "none"
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _ends(ranked: Sequence, count: int = 3) -> tuple[list, list]:
    """The first ``count`` of a ranking and, from the rest, its last ``count`` (last first): never the same
    item at both ends."""
    ranked = list(ranked)
    return ranked[:count], ranked[count:][::-1][:count]


def class_frequency(counts: Sequence[float], names: Sequence[str], things: Sequence[int]) -> str:
    counts = np.asarray(counts, dtype=float)
    if counts.sum() == 0:
        return "No labelled pixel in the scanned images: nothing to compare."
    share = 100 * counts / counts.sum()
    present = np.flatnonzero(counts)
    top, rare = present[np.argmax(counts[present])], present[np.argmin(counts[present])]
    absent = len(counts) - len(present)
    text = (
        f"The most frequent class, {names[top]}, holds {share[top]:.1f}% of the labelled pixels; the rarest "
        f"present, {names[rare]}, {share[rare]:.2g}%: {counts[top] / counts[rare]:.0f} to 1. Things hold "
        f"{share[list(things)].sum():.1f}% of the pixels"
    )
    return text + (f"; {absent} class(es) never appear in the scanned images." if absent else ".")


def samples(labels: Sequence[np.ndarray], names: Sequence[str], things: Sequence[int]) -> str:
    labels = [np.asarray(label) for label in labels]
    labelled = sum(int((label >= 0).sum()) for label in labels)
    thing_pixels = sum(int(np.isin(label, list(things)).sum()) for label in labels)
    per_image = [len({int(c) for c in np.unique(label) if c >= 0}) for label in labels]
    return (
        f"In these {len(labels)} images stuff holds {100 * (1 - thing_pixels / max(labelled, 1)):.0f}% of the "
        f"labelled pixels and things {100 * thing_pixels / max(labelled, 1):.0f}%; each image holds "
        f"{min(per_image)} to {max(per_image)} classes. Black pixels are unlabelled: no metric counts them."
    )


def views(crops, flips) -> str:
    sides = 100 * np.asarray(crops, dtype=float)[:, 2]
    flipped = int(np.asarray(flips).sum())
    return (
        f"View 1 keeps {sides.min():.0f}-{sides.max():.0f}% of the image's side (mean {sides.mean():.0f}%); "
        f"{flipped} of {len(sides)} crops are flipped (dashed square). The colours of the two views differ: the "
        "network must give a pixel the same class in both (invariance) at the same place (equivariance)."
    )


def equivariance(agreements: dict[str, dict[str, float]]) -> str:
    """``agreements``: network name -> ``picie.view_agreement``."""
    parts = [
        f"{name}: mean cosine {a['same']:.2f} at the same pixel against {a['mirrored']:.2f} at the mirrored "
        f"position (gap {a['same'] - a['mirrored']:.2f})"
        for name, a in agreements.items()
    ]
    text = "; ".join(parts) + ". "
    text = text[0].upper() + text[1:]
    if len(agreements) == 1:
        return text + (
            "This is the network before PiCIE's training (no `run_dir`): a large part of the same-pixel "
            "agreement is the network's, before any training; pass a run's folder as `run_dir` to see a "
            "trained one beside it."
        )
    (before, *_, after) = agreements.values()
    if after["same"] - after["mirrored"] > before["same"] - before["mirrored"]:
        return text + (
            "The gap is the test, not the same-pixel value: after training the two views agree where they show the "
            "same pixel and much less elsewhere, and their maps show the same layout in the same colours."
        )
    return text + (
        "The gap is the test, not the same-pixel value, and training did not widen it: the trained features do not "
        "follow the pixel through the crop and flip better than the untrained ones (a run that did not learn?)."
    )


def reference_points(rows: Sequence[dict]) -> str:
    named = [f"{METHOD_NAMES[r['loss']]} {r['acc_all']:.1f} All Acc / {r['miou_all']:.1f} mIoU" for r in rows]
    return (
        f"{_listed(named)}. Look at which regions each clustering keeps together: RGB k-means follows colour "
        "and shading, the network's features follow texture and layout."
    )


def confusion(confusion: np.ndarray, names: Sequence[str], assignment: Sequence[int], method: str) -> str:
    confusion = np.asarray(confusion, dtype=float)
    totals = confusion.sum(1)
    seen = np.flatnonzero(totals)
    matched = np.array([confusion[c, k] / max(totals[c], 1) if k >= 0 else 0.0 for c, k in enumerate(assignment)])
    order = seen[np.argsort(-matched[seen])]
    top, bottom = _ends(order)
    best = [f"{names[c]} ({100 * matched[c]:.0f}%)" for c in top]
    owner = {k: names[c] for c, k in enumerate(assignment) if k >= 0}
    worst = [_where_it_went(confusion[c], names[c], matched[c], assignment[c], owner) for c in bottom]
    unmatched = confusion.shape[1] - sum(1 for k in assignment if k >= 0)
    text = (
        f"{method}: the brightest diagonal cells, the share of a class's pixels in its own cluster, are "
        f"{_listed(best)}" + (f"; the least in their own cluster are {_listed(worst)}" if worst else "")
    )
    return text + (f"; {unmatched} cluster(s) are matched to no class (right-hand columns)." if unmatched else ".")


def _where_it_went(row: np.ndarray, name: str, own: float, cluster: int, owner: dict[int, str]) -> str:
    """One class's row of the confusion: merged (most of its pixels in one other cluster) or scattered."""
    others = row.copy()
    if cluster >= 0:
        others[cluster] = 0
    k = int(others.argmax())
    share = others[k] / max(row.sum(), 1)
    if share >= 0.5:
        into = f"{owner[k]}'s cluster" if k in owner else "an unmatched cluster"
        return f"{name} ({100 * own:.0f}%; merged: {100 * share:.0f}% in {into})"
    return f"{name} ({100 * own:.0f}%; scattered: no other cluster holds more than {100 * share:.0f}%)"


def matching(vote_acc: float, hungarian_acc: float, voted_classes: int, present: int) -> str:
    """Majority vote against the Hungarian matching on one confusion: where the vote's extra accuracy comes from."""
    if vote_acc - hungarian_acc < 0.05:
        return (
            f"Majority vote and the Hungarian matching score the same here ({hungarian_acc:.1f}% All Acc): giving "
            "clusters to a class that already has one gains nothing on this confusion."
        )
    text = f"Majority vote scores {vote_acc:.1f}% against the Hungarian matching's {hungarian_acc:.1f}%"
    if voted_classes < present:
        return text + (
            f", but names only {voted_classes} of the {present} classes present: its extra "
            f"{vote_acc - hungarian_acc:.1f} points come from clusters given to a class that already has one."
        )
    return text + ": every class gets a cluster, and the extra clusters go to classes that already have one."


def loss_curves(log: Sequence[dict]) -> str:
    kept = [r for r in log if not r.get("discarded")]
    if not kept:
        return "No epoch finished yet."
    phases = list(dict.fromkeys(r["phase"] for r in kept))
    parts = []
    for phase in phases:
        points = [r for r in kept if r["phase"] == phase]
        best = min(points, key=lambda r: r["loss"])
        parts.append(
            f"{LOSS_NAMES[phase]} goes from {points[0]['loss']:.3g} (epoch {points[0]['epoch']}) to "
            f"{points[-1]['loss']:.3g} (epoch {points[-1]['epoch']}), lowest {best['loss']:.3g} "
            f"at epoch {best['epoch']}"
        )
    text = "; ".join(parts) + ". "
    if len(phases) > 1:
        switch = min(r["epoch"] for r in kept if r["phase"] == phases[1])
        text += (
            f"The switch comes after epoch {switch - 1}"
            + (
                ", the CE minimum (the epoch past it was discarded and the run went back to it)"
                if any(r.get("discarded") for r in log)
                else ""
            )
            + f"; {LOSS_NAMES[phases[1]]} is on its own axis, its scale is not CE's. "
        )
    k0, k1 = np.mean(kept[0]["kmeans_loss"]), np.mean(kept[-1]["kmeans_loss"])
    text += f"The k-means distance goes from {k0:.3f} to {k1:.3f}: " + (
        "the features gather around their centroids." if k1 < k0 else "the clusters are not tightening."
    )
    return text + phase_movement(kept)


def phase_movement(kept: Sequence[dict]) -> str:
    """How far an epoch of each phase moved the weights (relative L2, ``weights_moved``) and, with two phases,
    the second's against the first's: a phase whose epochs move the weights a tenth as far barely trains."""
    moved = {p: [r["weights_moved"] for r in kept if r["phase"] == p and "weights_moved" in r] for p in LOSS_NAMES}
    moved = {p: float(np.mean(v)) for p, v in moved.items() if v}
    if not moved:
        return ""
    text = " An epoch moved the weights by " + ", ".join(f"{100 * v:.2g} % ({LOSS_NAMES[p]})" for p, v in moved.items())
    if len(moved) > 1:
        (first, a), (second, b) = list(moved.items())[:2]
        ratio = b / a if a > 0 else math.nan
        text += f": {LOSS_NAMES[second]} epochs {ratio:.2g} times as far as {LOSS_NAMES[first]} ones"
        if ratio < 0.1:
            text += f", so the {LOSS_NAMES[second]} phase barely trains"
    return text + " (relative L2, right panel)."


def _scored(per_class: Sequence[dict], key: str) -> list[dict]:
    """The classes with pixels in the evaluation and a finite ``key``, highest first."""
    rows = [r for r in per_class if r["pixels"] > 0 and np.isfinite(r[key])]
    return sorted(rows, key=lambda r: -r[key])


def per_class_iou(per_class: Sequence[dict], method: str, key: str = "iou_all") -> str:
    scored = _scored(per_class, key)
    top, bottom = _ends(scored)
    best = [f"{r['class']} ({r[key]:.0f})" for r in top]
    worst = [f"{r['class']} ({r[key]:.0f})" for r in bottom]
    means = {kind: np.mean([r[key] for r in scored if r["kind"] == kind] or [np.nan]) for kind in ("thing", "stuff")}
    zero = sum(1 for r in scored if r[key] == 0)
    return (
        f"{method}: highest IoU {_listed(best)}" + (f"; lowest {_listed(worst)}" if worst else "") + ". "
        f"Things average {means['thing']:.1f}, stuff {means['stuff']:.1f}"
        + (f"; {zero} class(es) at 0 (no cluster of their own)." if zero else ".")
    )


def oversegmentation(per_class: Sequence[dict], method: str) -> str:
    scored = _scored(per_class, "effective_clusters")
    most = [f"{r['class']} ({r['effective_clusters']:.1f})" for r in scored[:3]]
    means = {
        kind: np.mean([r["effective_clusters"] for r in scored if r["kind"] == kind] or [np.nan])
        for kind in ("thing", "stuff")
    }
    return (
        f"{method}: a class held by one cluster scores 1. Spread the most: {_listed(most)}. Mean effective "
        f"clusters: things {means['thing']:.2f}, stuff {means['stuff']:.2f}."
    )


def examples(shown: dict) -> str:
    """``shown``: ``plots.predict_examples``. The rings of other clusters along edges, measured."""
    parts = []
    for name, predicted in shown["predicted"].items():
        e = boundary_errors(predicted, shown["labels"])
        parts.append(f"{name} gets {e['boundary_error']:.0f}% of them wrong and {e['interior_error']:.0f}% elsewhere")
    share = e["boundary_share"]  # the labels' boundaries: the same for every predictor
    return (
        f"Within a pixel of a class boundary lie {share:.0f}% of these labelled pixels: {'; '.join(parts)}. "
        "The thin rings of other clusters around objects are these boundary errors: features at an edge mix "
        "both sides at the network's stride of 4, so the upsampled logits hesitate there."
    )


def results(rows: Sequence[dict]) -> str:
    def mean(method: str, column: str) -> float:
        values = [r[column] for r in rows if r["loss"] == method and r.get(column) is not None]
        return float(np.mean(values)) if values else np.nan

    present = [m for m in METHOD_NAMES if any(r["loss"] == m for r in rows)]
    trained = [m for m in LOSSES if m in present]
    named = [f"{METHOD_NAMES[m]} {mean(m, 'acc_all'):.1f} / {mean(m, 'miou_all'):.1f}" for m in present]
    text = f"All Acc / mIoU: {_listed(named)}."
    if trained:
        best = max(trained, key=lambda m: mean(m, "acc_all"))
        text += f" The highest All Acc of the three methods is {METHOD_NAMES[best]}'s."
    return text + (
        " Compare the order of the bars with the order of the paper's ticks, not their heights: the paper's "
        "numbers are COCO-Stuff-27's."
    )


def gains(effects: dict[str, Sequence[dict]], baseline: str = "ce") -> str:
    """``effects`` as for ``plots.gains_over_baseline``. Per method: the classes whose gain lies beyond both
    noises (largest first), or that none does and the largest gain with its noise; then the mean over things and
    over stuff."""
    parts = []
    for method, rows in effects.items():
        if not rows:
            parts.append(f"{METHOD_NAMES[method]}: no class scored in both runs")
            continue
        beyond = sorted((r for r in rows if r["beyond_noise"]), key=lambda r: -abs(r["difference"]))
        by_kind = {
            k: np.mean([r["difference"] for r in rows if r["kind"] == k] or [np.nan]) for k in ("thing", "stuff")
        }
        if beyond:
            named = ", ".join(f"{r['class']} {r['difference']:+.1f}" for r in beyond[:4])
            more = f" and {len(beyond) - 4} more" if len(beyond) > 4 else ""
            text = f"{METHOD_NAMES[method]} changes beyond the noise on {named}{more}"
        else:
            top = max(rows, key=lambda r: abs(r["difference"]))
            noise = "unmeasured" if np.isnan(top["noise"]) else f"± {CLASS_THRESHOLD * top['noise']:.1f}"
            text = (
                f"{METHOD_NAMES[method]} changes no class beyond the noise (the largest, {top['class']} "
                f"{top['difference']:+.1f}, has a noise of {noise})"
            )
        parts.append(text + f"; on average things {by_kind['thing']:+.1f}, stuff {by_kind['stuff']:+.1f}")
    return "; ".join(parts) + f" (IoU points over {METHOD_NAMES[baseline]}, subset protocol)."


def two_class_logits(p_t: float) -> torch.Tensor:
    """Logits of two classes whose softmax gives class 0 the probability ``p_t`` (04's curves)."""
    return torch.tensor([[math.log(p_t), math.log1p(-p_t)]], dtype=torch.float64)


def ib_focal_over_ce(cfg: Config, p_values: Sequence[float] = (0.1, 0.5, 0.9), points: int = 60) -> tuple[float, float]:
    """The smallest and largest ratio IB-Focal / CE over 04's figure: ``p_values`` of the true class, and the
    L1 norms ``h`` a normalised feature can reach (``losses.reachable_l1_norms``), at ``cfg``'s alpha."""
    target, ratios = torch.tensor([0]), []
    for p in p_values:
        ce = float(cross_entropy(two_class_logits(p), target))
        for h in np.linspace(*reachable_l1_norms(FEATURE_DIM), points):
            feature = torch.full((1, FEATURE_DIM), h / FEATURE_DIM, dtype=torch.float64)
            logits = two_class_logits(p)
            ib = ib_focal_loss(logits, target, feature, alpha=cfg.ib_alpha, gamma=cfg.ib_gamma, eps=cfg.ib_eps)
            ratios.append(float(ib) / ce)
    return min(ratios), max(ratios)


def times(low: float, high: float) -> str:
    """A range of ratios in words: "4.4 to 450 times", "0.0044 to 0.45 times"."""

    def number(r: float) -> str:
        return f"{r:.0f}" if r >= 10 else (f"{r:.1f}" if r >= 1 else f"{r:.2g}")

    return f"{number(low)} to {number(high)} times"


def ib_against_ce(cfg: Config) -> str:
    """Where IB-Focal lies against CE over 04's figure, chosen by the ratio's range: above, below, or across."""
    low, high = ib_focal_over_ce(cfg)
    if low > 1:
        return f"lies above CE (dashed) everywhere plotted, {times(low, high)} CE's loss"
    if high < 1:
        return f"lies below CE (dashed) everywhere plotted, {times(low, high)} CE's loss"
    return f"crosses CE (dashed): from {times(low, high)} CE's loss"


def loss_shapes(cfg: Config) -> str:
    low, high = reachable_l1_norms(FEATURE_DIM)
    text = (
        f"Focal weighs a pixel with p_t = 0.9 at (1 - 0.9)^{cfg.gamma:g} = {0.1**cfg.gamma:.2g} of its CE, one "
        f"with p_t = 0.1 at {0.9**cfg.gamma:.2f}: easy pixels fade. IB-Focal divides by the influence "
        f"2(1 - p_t) h: over the norms a normalised feature can have (h = {low:g} to {high:.1f}) it falls by "
        f"{high / low:.1f}x, and at alpha = {cfg.ib_alpha:g} it {ib_against_ce(cfg)}"
    )
    if ib_focal_over_ce(cfg)[0] > 1 and cfg.ib_lr_factor < 1:
        return text + f", which is why the IB phase trains at ib_lr_factor = {cfg.ib_lr_factor:g} times the rate."
    return text + f"; the IB phase's learning rate is ib_lr_factor = {cfg.ib_lr_factor:g} times CE's."


def probability(p: float) -> str:
    """A probability with the digits that tell it from 1 (0.9988, not 1.00)."""
    return f"{p:.2f}" if p < 0.99 else f"{p:.{1 + math.ceil(-math.log10(max(1 - p, 1e-12)))}f}"


def focal_reach(cfg: Config, temperature: float) -> tuple[float, float]:
    """``p_t`` of a pixel on its centroid, the others orthogonal, at ``temperature``, and Focal's factor there."""
    p = cosine_logit_max_probability(cfg.n_clusters, temperature, "orthogonal")
    return p, (1 - p) ** cfg.gamma


def temperature(cfg: Config) -> str:
    def reach(t: float) -> str:
        p, factor = focal_reach(cfg, t)
        return f"p_t = {probability(p)} (Focal factor {factor:.2g})"

    here = reach(cfg.temperature)
    text = f"At this run's T = {cfg.temperature:g} a pixel on its centroid, the others orthogonal, reaches {here}"
    if cfg.temperature != 1.0:
        text += f"; at PiCIE's T = 1 only {reach(1.0)}"
    else:
        text += f", PiCIE's setting; at T = 0.1 it would reach {reach(0.1)}"
    return text + ": Focal differs from a rescaled CE only at low temperatures."


def evaluation_noise(acc_all: list[float], miou_all: list[float], what: str, draws_in_score: int = 1) -> str:
    """How far the evaluation's k-means alone moves one run's scores: the span over its draws, and what is left
    in a score that averages ``draws_in_score`` of them (one draw's std over the square root of their number)."""
    if len(acc_all) < 2:
        return f"{what}: one k-means draw, so no spread yet (set `eval_seeds` to 5, or run the cell below)."
    text = (
        f"{what}: over {len(acc_all)} k-means seeds on the same weights, All Acc spans {np.ptp(acc_all):.2f} points "
        f"({min(acc_all):.2f} to {max(acc_all):.2f}) and mIoU {np.ptp(miou_all):.2f} ({min(miou_all):.2f} to "
        f"{max(miou_all):.2f})."
    )
    if draws_in_score < 2:
        return text + (
            " The run's score is one such draw: a difference between methods smaller than this cannot be told "
            "from the evaluation's own (`eval_seeds` averages several draws)."
        )
    se = float(np.std(acc_all, ddof=1)) / math.sqrt(draws_in_score)
    return text + (
        f" The run's score is their mean, which leaves a standard error of {se:.2f} All Acc from the evaluation "
        "(one draw's std over the square root of the draws): a difference between two such scores under about "
        f"{2 * math.sqrt(2) * se:.2f} cannot be told from the evaluation's own."
    )


def optimizer_steps(sizes: dict[str, dict[float, float]]) -> str:
    """04's optimiser figure: ``sizes[optimizer][loss scale]``, the first step's length. Whether each optimiser's
    step grows with the loss's scale, said from the ratio between the largest and the smallest scale."""
    parts = []
    for name, by_scale in sizes.items():
        low, high = min(by_scale), max(by_scale)
        grows, larger = by_scale[high] / by_scale[low], f"when the loss is {high / low:g} times larger"
        if abs(grows - 1) < 0.05:
            parts.append(f"{name}'s step stays the same ({grows:.2f} times) {larger}")
        else:
            factor = f"{grows:,.0f}" if grows >= 10 else f"{grows:.2g}"
            parts.append(f"{name}'s step grows {factor} times {larger}")
    return (
        "; ".join(parts)
        + ". A constant factor on the loss (IB-Focal's alpha) sets the step under an optimiser whose step grows with "
        "it, and hardly matters under one whose step stays: there only the learning rate sets the step."
    )
