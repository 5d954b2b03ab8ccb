"""The evaluation's own noise: the same weights scored under several k-means seeds (``eval_seeds``).

The evaluation's fresh k-means starts from random centroids and, under PiCIE's protocol, reads the train
split in a seeded order; on fixed weights its scores move with that seed. ``over_eval_seeds`` runs an
evaluation once per seed and records every seed's scores with their mean, sample standard deviation
and range, which the report sets beside the training seeds' spread (``claims.evaluation_se``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from picie_lib.config import Config


def eval_seed_list(cfg: Config) -> list[int]:
    """The k-means seeds of an evaluation: the run's seed, then the next ``eval_seeds - 1`` integers."""
    return [cfg.seed + i for i in range(cfg.eval_seeds)]


def over_eval_seeds(evaluate_with: Callable[[int], dict], cfg: Config) -> dict:
    """``evaluate_with(seed)`` for each of ``eval_seed_list(cfg)``: the first seed's result (the run's
    scores, centroids and tables), its ``seconds`` the total, and under ``eval_spread`` every seed's
    scores with their mean, sample standard deviation and range (max - min): the evaluation's own noise
    on these weights."""
    seeds = eval_seed_list(cfg)
    results = [evaluate_with(seed) for seed in seeds]
    result = results[0]
    result["seconds"] = sum(r["seconds"] for r in results)
    result["eval_spread"] = eval_spread(seeds, [r["scores"] for r in results])
    return result


def eval_spread(seeds: list[int], scores: list[dict[str, float]]) -> dict:
    """Per score: the values over the k-means seeds, their mean, sample std (NaN for one seed) and range."""
    out = {"seeds": list(seeds)}
    for key in scores[0]:
        values = np.array([s[key] for s in scores], dtype=float)
        finite = values[~np.isnan(values)]
        out[key] = {
            "values": values.tolist(),
            "mean": float(finite.mean()) if len(finite) else math.nan,
            "std": float(finite.std(ddof=1)) if len(finite) > 1 else math.nan,
            "range": float(finite.max() - finite.min()) if len(finite) else math.nan,
        }
    return out
