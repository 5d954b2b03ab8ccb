"""The evaluation's own noise, measured and averaged: the same weights scored under several k-means draws
(``eval_seeds``).

The evaluation's fresh k-means starts from random centroids and, under PiCIE's protocol, reads the train
split in a seeded order; on fixed weights its scores move with that seed (on the demo's weights one draw's
All Acc has a standard deviation near 2 points). ``over_eval_seeds`` runs the evaluation once per seed and
scores the weights by the **mean over the draws**: the same protocol and the same expected score as one
draw, with its noise divided by the square root of their number. Every draw's scores are kept with their
mean, sample standard deviation, range and the mean's standard error, which the report sets beside the
training seeds' spread (``claims.evaluation_se``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from picie_lib.config import Config
from picie_lib.progress import progress

PER_CLASS_DRAWS = ("iou_all", "iou_subset")  # per-class columns kept draw by draw (their noise: paired_effect)
# per-class columns averaged over the draws; the rest (class, kind, pixels, the matched cluster) are the first draw's
AVERAGED = (
    "iou_all", "iou_subset", "clusters_for_90pct", "effective_clusters", "top_cluster_share", "fragments_per_object"
)  # fmt: skip


def eval_seed_list(cfg: Config) -> list[int]:
    """The k-means seeds of an evaluation: ``seed * eval_seeds`` and the next ``eval_seeds - 1`` integers, a
    block of its own for every training seed (seeds 0, 1, 2 with 24 draws: 0-23, 24-47, 48-71), so that no two
    runs of a comparison share a draw; with one draw, the run's seed (PiCIE's protocol)."""
    return [cfg.seed * cfg.eval_seeds + i for i in range(cfg.eval_seeds)]


def over_eval_seeds(evaluate_with: Callable[[int], dict], cfg: Config) -> dict:
    """``evaluate_with(seed)`` for each of ``eval_seed_list(cfg)``. The scores, the per-class table and the
    over-segmentation summary are the means over the draws (``mean_over_draws``); the confusion matrix, the
    centroids and the files left out are the first draw's (the figures draw that one clustering);
    ``per_class_draws`` keeps each draw's per-class IoU; ``seconds`` is the total, and ``eval_spread`` holds every
    draw's scores with their mean, sample standard deviation, range and standard error of the mean: the
    evaluation's own noise on these weights."""
    seeds = eval_seed_list(cfg)
    results = [evaluate_with(seed) for seed in (progress(seeds, "k-means draws") if len(seeds) > 1 else seeds)]
    result = dict(results[0])
    result["scores"] = {key: mean_over_draws([r["scores"][key] for r in results]) for key in result["scores"]}
    if "per_class" in result:
        kept = [k for k in PER_CLASS_DRAWS if all(k in row for row in result["per_class"])]
        result["per_class_draws"] = {k: [[row[k] for row in r["per_class"]] for r in results] for k in kept}
        result["per_class"] = [
            {**row, **{k: mean_over_draws([r["per_class"][c][k] for r in results]) for k in AVERAGED if k in row}}
            for c, row in enumerate(result["per_class"])
        ]
    if "oversegmentation" in result:
        result["oversegmentation"] = {
            kind: {key: mean_over_draws([r["oversegmentation"][kind][key] for r in results]) for key in summary}
            for kind, summary in result["oversegmentation"].items()
        }
    result["seconds"] = sum(r["seconds"] for r in results)
    result["eval_spread"] = eval_spread(seeds, [r["scores"] for r in results])
    return result


def mean_over_draws(values: list[float]) -> float:
    """The mean of the draws' values that are numbers (a class one draw's matching left out is NaN there);
    NaN when none is."""
    finite = np.asarray(values, dtype=float)
    finite = finite[~np.isnan(finite)]
    return float(finite.mean()) if len(finite) else math.nan


def eval_spread(seeds: list[int], scores: list[dict[str, float]]) -> dict:
    """Per score: the values over the k-means draws, their mean, sample std (NaN for one draw), range and
    the standard error of their mean (std / sqrt(draws): the noise left in a score that averages them)."""
    out = {"seeds": list(seeds)}
    for key in scores[0]:
        values = np.array([s[key] for s in scores], dtype=float)
        finite = values[~np.isnan(values)]
        std = float(finite.std(ddof=1)) if len(finite) > 1 else math.nan
        out[key] = {
            "values": values.tolist(),
            "mean": mean_over_draws(values.tolist()),
            "std": std,
            "range": float(finite.max() - finite.min()) if len(finite) else math.nan,
            "se": std / math.sqrt(len(finite)) if len(finite) > 1 else math.nan,
        }
    return out


def score_standard_error(spread: dict, key: str) -> float | None:
    """The evaluation's noise in a run's ``key`` score from its ``eval_spread``: the mean's standard error.
    A metrics.json written before scores averaged the draws (no ``se``) scored its first draw alone: its
    noise is one draw's standard deviation."""
    entry = spread.get(key, {})
    return entry.get("se", entry.get("std"))


def paired_effect(after: dict, before: dict) -> dict:
    """``after`` minus ``before``, two evaluations of different weights under the same k-means draws
    (``over_eval_seeds`` with the same seeds): per score and per class (``PER_CLASS_DRAWS``), the mean of the
    draws' differences and its standard error (their sample std over sqrt(draws); NaN for one draw). Paired by
    draw, the difference carries only the noise the two clusterings do not share."""
    seeds = after["eval_spread"]["seeds"]
    if before["eval_spread"]["seeds"] != seeds:
        raise ValueError(f"paired_effect: draws {seeds} against {before['eval_spread']['seeds']}; expected the same")
    scores = {
        key: _mean_and_se(np.subtract(after["eval_spread"][key]["values"], before["eval_spread"][key]["values"]))
        for key in after["scores"]
    }
    per_class = {
        key: [
            _mean_and_se(np.subtract(a, b))
            for a, b in zip(
                np.transpose(after["per_class_draws"][key]), np.transpose(before["per_class_draws"][key]), strict=True
            )
        ]
        for key in after["per_class_draws"]
    }
    return {"draws": len(seeds), "scores": scores, "per_class": per_class}


def _mean_and_se(differences: np.ndarray) -> dict:
    finite = np.asarray(differences, dtype=float)
    finite = finite[~np.isnan(finite)]
    se = float(finite.std(ddof=1) / math.sqrt(len(finite))) if len(finite) > 1 else math.nan
    return {"difference": float(finite.mean()) if len(finite) else math.nan, "se": se}
