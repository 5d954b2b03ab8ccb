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
    "iou_all",
    "iou_subset",
    "clusters_for_90pct",
    "effective_clusters",
    "top_cluster_share",
    "fragments_per_object",
)


def eval_seed_list(cfg: Config) -> list[int]:
    """The k-means seeds of an evaluation: ``seed * eval_seeds`` and the next ``eval_seeds - 1`` integers, a
    block of its own for every training seed (seeds 0, 1, 2 with 24 draws: 0-23, 24-47, 48-71), so that no two
    runs of a comparison share a draw; with one draw, the run's seed (PiCIE's protocol)."""
    return [cfg.seed * cfg.eval_seeds + i for i in range(cfg.eval_seeds)]


def over_eval_seeds(evaluate_with: Callable[[int], dict], cfg: Config, stored: dict[int, dict] | None = None) -> dict:
    """``evaluate_with(seed)`` for each of ``eval_seed_list(cfg)``, but for the draws ``stored`` already holds (a
    seed's result as ``stored_draws`` rebuilds it from a metrics.json: the same draw costs nothing twice). The
    scores, the per-class table and the over-segmentation summary are the means over the draws
    (``mean_over_draws``); the confusion matrix, the centroids and the files left out are the first draw's (the
    figures draw that one clustering); ``per_class_draws`` and ``oversegmentation_draws`` keep every draw's values
    (so that a later evaluation can reuse them); ``seconds`` is the total, and ``eval_spread`` holds every draw's
    scores with their mean, sample standard deviation, range and standard error of the mean: the evaluation's own
    noise on these weights."""
    seeds, stored = eval_seed_list(cfg), stored or {}
    todo = [seed for seed in seeds if seed not in stored]
    computed = {seed: evaluate_with(seed) for seed in (progress(todo, "k-means draws") if len(todo) > 1 else todo)}
    results = [stored.get(seed) or computed[seed] for seed in seeds]
    result = dict(results[0])
    result["scores"] = {key: mean_over_draws([r["scores"][key] for r in results]) for key in result["scores"]}
    if "per_class" in result:
        kept = [k for k in (*PER_CLASS_DRAWS, *AVERAGED) if all(k in row for row in result["per_class"])]
        result["per_class_draws"] = {
            k: [[row[k] for row in r["per_class"]] for r in results] for k in dict.fromkeys(kept)
        }
        result["per_class"] = [
            {**row, **{k: mean_over_draws([r["per_class"][c][k] for r in results]) for k in AVERAGED if k in row}}
            for c, row in enumerate(result["per_class"])
        ]
    if "oversegmentation" in result:
        result["oversegmentation_draws"] = [r["oversegmentation"] for r in results]
        result["oversegmentation"] = {
            kind: {key: mean_over_draws([r["oversegmentation"][kind][key] for r in results]) for key in summary}
            for kind, summary in result["oversegmentation"].items()
        }
    result["seconds"] = sum(r["seconds"] for r in results)
    result["eval_spread"] = eval_spread(seeds, [r["scores"] for r in results])
    result["draws_reused"] = len(seeds) - len(todo)
    return result


def draws_of(metrics: dict, scores_keys: list[str] | None = None) -> dict[int, dict]:
    """Each k-means draw a metrics.json kept, as ``over_eval_seeds`` would have it from ``evaluate_with``: its
    scores, per-class rows and over-segmentation summary (the first draw also its confusion matrix and files left
    out; its centroids are in centroids.pt). Empty for a metrics.json that did not keep them all."""
    spread, draws = metrics.get("eval_spread", {}), metrics.get("per_class_draws", {})
    over = metrics.get("oversegmentation_draws")
    seeds = spread.get("seeds", [])
    if not seeds or over is None or not all(k in draws for k in AVERAGED) or len(over) != len(seeds):
        return {}
    keys = scores_keys or list(metrics["scores"])
    if not all(len(spread.get(k, {}).get("values", [])) == len(seeds) for k in keys):
        return {}
    out = {}
    for d, seed in enumerate(seeds):
        rows = [
            {**row, **{k: draws[k][d][c] for k in draws}} for c, row in enumerate(metrics["per_class"])
        ]  # the first draw's class, kind, pixels and matched cluster; this draw's averaged columns
        out[seed] = {
            "scores": {k: spread[k]["values"][d] for k in keys},
            "per_class": rows,
            "oversegmentation": over[d],
            "seconds": 0.0,
        }
    first = out[seeds[0]]
    first.update(confusion=metrics["confusion"], skipped_files=metrics.get("skipped_files", []))
    return out


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
        key: _mean_and_se(_floats(after["eval_spread"][key]["values"]) - _floats(before["eval_spread"][key]["values"]))
        for key in after["scores"]
    }
    per_class = {
        key: [
            _mean_and_se(np.subtract(a, b))
            for a, b in zip(
                _floats(after["per_class_draws"][key]).T, _floats(before["per_class_draws"][key]).T, strict=True
            )
        ]
        for key in after["per_class_draws"]
    }
    return {"draws": len(seeds), "scores": scores, "per_class": per_class}


def _floats(values) -> np.ndarray:
    """Numbers as a float array, a JSON null (a value that was not a number) as NaN."""
    return np.asarray(values, dtype=float)


def _mean_and_se(differences: np.ndarray) -> dict:
    finite = np.asarray(differences, dtype=float)
    finite = finite[~np.isnan(finite)]
    se = float(finite.std(ddof=1) / math.sqrt(len(finite))) if len(finite) > 1 else math.nan
    return {"difference": float(finite.mean()) if len(finite) else math.nan, "se": se}


def class_effect(after: dict, before: dict, key: str) -> list[dict]:
    """Per class, ``after`` minus ``before`` (two evaluations' metrics of one training seed) on ``key``: paired by
    k-means draw where both kept their draws under the same seeds (``paired_effect``'s difference and standard
    error), else the difference of their means, its evaluation noise unknown (NaN)."""
    draws_a, draws_b = after.get("per_class_draws", {}), before.get("per_class_draws", {})
    same = after.get("eval_spread", {}).get("seeds") == before.get("eval_spread", {}).get("seeds")
    if same and key in draws_a and key in draws_b:
        pairs = zip(_floats(draws_a[key]).T, _floats(draws_b[key]).T, strict=True)  # null (not a number) as NaN
        return [_mean_and_se(np.subtract(a, b)) for a, b in pairs]
    rows = zip(after["per_class"], before["per_class"], strict=True)
    return [{"difference": a[key] - b[key], "se": math.nan} for a, b in rows]


CLASS_THRESHOLD = 3.0  # standard errors: 27 classes judged at once, two would name one or two of them by chance


def combine_class_effects(classes: list[dict], per_seed: list[list[dict]]) -> list[dict]:
    """Per class (``classes``: rows with ``class`` and ``kind``), one effect per training seed (``per_seed``, each a
    list of ``{difference, se}`` in the classes' order) combined: the mean over the seeds, its standard error over
    them (NaN for one seed) and the evaluation's (the seeds' errors combined), the larger of the two (``noise``)
    and whether the mean lies beyond ``CLASS_THRESHOLD`` of each noise measured (``beyond_noise``). A class no
    seed scored is left out."""
    out = []
    for c, row in enumerate(classes):
        effects = [seed[c] for seed in per_seed]
        values = np.array([e["difference"] for e in effects], dtype=float)
        finite = values[~np.isnan(values)]
        if not len(finite):
            continue
        se = float(finite.std(ddof=1) / math.sqrt(len(finite))) if len(finite) > 1 else math.nan
        errors = [e["se"] for e in effects if e["se"] is not None and not math.isnan(e["se"])]
        eval_se = math.sqrt(sum(e * e for e in errors)) / len(errors) if errors else math.nan
        noises = [n for n in (se, eval_se) if not math.isnan(n)]
        mean = float(finite.mean())
        beyond = bool(noises) and mean != 0 and all(abs(mean) >= CLASS_THRESHOLD * n for n in noises)
        out.append(
            {"class": row["class"], "kind": row["kind"], "difference": mean, "se": se, "eval_se": eval_se}
            | {"beyond_noise": beyond, "seeds": len(finite), "noise": max(noises) if noises else math.nan}
        )
    return out


def gains_over(metrics: dict[str, list[dict]], baseline: str = "ce", key: str = "iou_subset") -> dict[str, list[dict]]:
    """Per method but ``baseline``, each class's gain over the baseline on ``key`` (``combine_class_effects``):
    ``metrics`` maps a method to its runs' metrics.json, one per training seed, the seeds in the same order."""
    out = {}
    for method, runs in metrics.items():
        if method != baseline and runs:
            per_seed = [class_effect(a, b, key) for a, b in zip(runs, metrics[baseline], strict=True)]
            out[method] = combine_class_effects(runs[0]["per_class"], per_seed)
    return out
