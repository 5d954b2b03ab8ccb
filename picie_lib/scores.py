"""A run's scores on disk: ``python -m picie_lib evaluate DIR`` (the final weights, and for IB-Focal the weights its
phase started from), ``metrics.json`` written, read back and reused while it scored the weights now in the folder,
and a predictor that draws a scored run's classes again. The scoring itself is ``evaluate.py``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from picie_lib import distributed
from picie_lib.checkpoints import (
    SWITCH_KEYS,
    TRAINING_RUNTIME_KEYS,
    checkpoint_record,
    evaluation_asked,
    load_checkpoint,
    load_state,
)
from picie_lib.config import EVALUATION_KEYS, Config, differences, from_dict, load_config
from picie_lib.data import build_dataset
from picie_lib.distributed import resolve_device
from picie_lib.eval_seeds import draws_of, paired_effect
from picie_lib.evaluate import CENTROIDS_FORMAT, evaluate_model, network_feature_fn, predict, rgb_feature_fn
from picie_lib.picie import build_model, labelling_bn
from picie_lib.run_folder import exclusive, holds_a_run, start_manifest
from picie_lib.runs import (
    atomic_torch_save,
    atomic_write_text,
    csv_text,
    environment,
    load_tensors,
    read_json,
    weights_digest,
    write_json,
)


def load_trained_model(run_dir: Path, cfg: Config) -> torch.nn.Module:
    model = build_model(cfg, resolve_device(cfg.device))
    model.load_state_dict(load_checkpoint(Path(run_dir) / "checkpoint.pt")["model"])
    return model


def write_evaluation(out_dir: Path, result: dict, method: str, cfg: Config) -> None:
    """metrics.json (everything but the centroids), per_class.csv, confusion.csv and, for a
    clustering, centroids.pt (the fitted classifier, to draw predictions later), atomically. Under
    torchrun rank 0 writes them and every process waits until they are there."""
    if distributed.is_main():
        _write_evaluation(Path(out_dir), result, method, cfg)
        distributed.trace("evaluation: scores written")
    distributed.barrier()


def _write_evaluation(out_dir: Path, result: dict, method: str, cfg: Config) -> None:
    result = dict(result)
    centroids, bn_buffers = result.pop("centroids", None), result.pop("bn_state", None)
    if centroids is not None:
        saved = {"format": CENTROIDS_FORMAT, "centroids": centroids}
        if bn_buffers is not None:  # the evaluated copy's BatchNorm statistics (bn_eval: running)
            saved["bn_state"] = bn_buffers
        atomic_torch_save(saved, out_dir / "centroids.pt")
    write_json(
        out_dir / "metrics.json",
        {"method": method, "seed": cfg.seed, "config": cfg.to_dict(), **result, "environment": environment()},
    )
    atomic_write_text(out_dir / "per_class.csv", csv_text(result["per_class"]))
    conf = np.asarray(result["confusion"])
    lines = ["class," + ",".join(f"cluster_{k}" for k in range(conf.shape[1]))]
    lines += [f"{row['class']}," + ",".join(map(str, conf[c])) for c, row in enumerate(result["per_class"])]
    atomic_write_text(out_dir / "confusion.csv", "\n".join(lines) + "\n")


def run_config_path(run_dir: Path) -> Path:
    """``run_dir/config.json``, or an error that says the folder is not a run's."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.json; expected the folder of a run made by `train`")
    return path


def scored_checkpoint(run_dir: Path, force: bool = False) -> tuple[Config, dict]:
    """The folder's configuration and its checkpoint, once checked to be what the folder's scores may
    describe: the run finished, and the checkpoint was written by the folder's configuration. Either
    failure is refused, naming what is wrong, unless ``force`` (then the scores say what they scored)."""
    run_dir = Path(run_dir)
    cfg = load_config(run_config_path(run_dir))
    ckpt = load_checkpoint(run_dir / "checkpoint.pt")
    problems = differences(ckpt["config"], cfg, TRAINING_RUNTIME_KEYS, saved_as="checkpoint")
    if problems and not force:
        raise ValueError(
            f"{run_dir / 'checkpoint.pt'} was written by another configuration than {run_dir / 'config.json'} "
            f"({'; '.join(problems)}); refusing to score it as this run (--force scores it anyway)"
        )
    if ckpt["epoch"] < cfg.epochs_for() and not force:
        raise ValueError(
            f"{run_dir}: the run stopped after epoch {ckpt['epoch']} of {cfg.epochs_for()}; finish it with "
            f"`python -m picie_lib train ... --out {run_dir} --resume`, or pass --force to score these weights"
        )
    return cfg, ckpt


def evaluate_run(
    run_dir: Path,
    train_set=None,
    val_set=None,
    force: bool = False,
    evaluation: dict | None = None,
    into: Path | None = None,
) -> dict:
    """``python -m picie_lib evaluate DIR``: evaluate a trained run and write its metrics beside it (or ``into``
    another folder: a try's, which leaves the run's own scores as they are), with the checkpoint they scored
    (``checkpoints.checkpoint_record``: epoch, phase, loss, weights' hash). ``evaluation`` overrides the folder's
    evaluation parameters (``EVALUATION_KEYS``); metrics.json records the values used. The k-means draws the
    run's own metrics.json kept for these weights are reused (``stored_draws``), not drawn again."""
    run_dir = Path(run_dir)
    run_config_path(run_dir)  # a wrong folder is named before exclusive() could create it
    unknown = set(evaluation or {}) - set(EVALUATION_KEYS)
    if unknown:
        raise ValueError(f"evaluation={sorted(unknown)}: expected only {', '.join(EVALUATION_KEYS)}")
    out = Path(into or run_dir)
    with exclusive(out) if distributed.is_main() else contextlib.nullcontext():  # rank 0 writes
        if into is not None and not holds_a_run(out):
            start_manifest(out)
        cfg, ckpt = scored_checkpoint(run_dir, force)
        cfg = cfg.replace(**(evaluation or {}))
        model = build_model(cfg, resolve_device(cfg.device))
        model.load_state_dict(ckpt["model"])
        result = evaluate_model(model, cfg, train_set, val_set, stored_draws(run_dir, cfg, ckpt))
        result["checkpoint"] = checkpoint_record(ckpt) | ({"run": str(run_dir)} if into is not None else {})
        if cfg.loss == "ib_focal" and (run_dir / "switch.pt").is_file():
            evaluate_at_switch(run_dir / "switch.pt", model, cfg, result, train_set, val_set)
        write_evaluation(out, result, cfg.loss, cfg)
    return result


def stored_draws(run_dir: Path, cfg: Config, ckpt: dict) -> dict[int, dict]:
    """The k-means draws ``run_dir/metrics.json`` kept (``eval_seeds.draws_of``), when it scored these weights
    (``ckpt``'s) with ``cfg``'s evaluation but for the number of draws; the first draw with its centroids from
    centroids.pt. Empty otherwise: nothing is reused that was scored another way."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file() or not (Path(run_dir) / "centroids.pt").is_file():
        return {}
    ignore = (TRAINING_RUNTIME_KEYS - set(EVALUATION_KEYS)) | {"eval_seeds"}  # only the number of draws may differ
    saved = stored_scores(path, cfg, weights_digest(ckpt["model"]), ignore)
    draws = draws_of(saved) if saved is not None else {}
    if draws:
        centroids = load_tensors(Path(run_dir) / "centroids.pt")
        first = draws[saved["eval_spread"]["seeds"][0]]
        first["centroids"] = centroids["centroids"]
        if "bn_state" in centroids:
            first["bn_state"] = centroids["bn_state"]
    return draws


def evaluate_at_switch(path: Path, model, cfg: Config, result: dict, train_set=None, val_set=None) -> None:
    """IB-Focal's own phase: the weights it started from (``switch.pt``: CE stopped at the switch) scored under
    the same k-means draws as the final weights in ``result``, which gains ``at_switch`` (their scores) and
    ``ib_phase_effect`` (final minus at-switch, per score and per class, paired by draw, with its evaluation
    standard error: ``eval_seeds.paired_effect``). ``model``'s weights are replaced by the switch's."""
    switch = load_checkpoint(path, SWITCH_KEYS)
    load_state(model, switch["model"], path)
    at = evaluate_model(model, cfg, train_set, val_set)
    result["at_switch"] = {
        "checkpoint": {"file": path.name, "epoch": switch["epoch"], "weights_sha256": weights_digest(switch["model"])},
        **{key: at[key] for key in ("scores", "eval_spread", "per_class_draws")},
        "per_class": [{k: row[k] for k in ("class", "kind", "iou_all", "iou_subset")} for row in at["per_class"]],
    }
    effect = paired_effect(result, at)
    effect["per_class"] = [
        {"class": row["class"], "kind": row["kind"], **{k: effect["per_class"][k][c] for k in effect["per_class"]}}
        for c, row in enumerate(result["per_class"])
    ]
    result["ib_phase_effect"] = effect


def kmeans_seed_scores(
    run_dir: Path, seeds: list[int], restarts: int | None = None, cfg: Config | None = None
) -> list[dict]:
    """The scores of ``run_dir``'s weights, fixed, under each evaluation k-means seed in ``seeds`` (with
    ``restarts`` starts each, by default ``cfg``'s or the run's ``eval_kmeans_restarts``; ``cfg``'s evaluation
    parameters as ``current_evaluation`` takes them); nothing is written. What the evaluation alone moves: the
    same weights, only the k-means drawn again."""
    folder_cfg, ckpt = scored_checkpoint(Path(run_dir))
    cfg = folder_cfg.replace(**({} if cfg is None else evaluation_asked(run_dir, folder_cfg, cfg)))
    cfg = cfg.replace(eval_seeds=1, eval_kmeans_restarts=restarts or cfg.eval_kmeans_restarts)
    model = build_model(cfg, resolve_device(cfg.device))
    model.load_state_dict(ckpt["model"])
    train_set, val_set = build_dataset(cfg, "train", mode="eval"), build_dataset(cfg, "val", mode="eval")
    rows = []
    for seed in seeds:
        scores = evaluate_model(model, cfg.replace(seed=seed), train_set, val_set)["scores"]
        rows.append({"k-means seed": seed, "restarts": cfg.eval_kmeans_restarts, **scores})
    return rows


def read_metrics(path: Path) -> dict:
    """A ``metrics.json`` with its numbers as they were computed: JSON has no NaN, so a value that was
    not a number (a class absent from the split, a subset it is not in) is written as null
    (``runs.json_text``) and read back here as NaN, in the scores, the per-class rows and the
    over-segmentation summary."""
    metrics = read_json(path)
    for key in ("scores", "per_class"):
        if not isinstance(metrics.get(key, {} if key == "scores" else []), dict if key == "scores" else list):
            raise ValueError(f"{path}: its {key!r} is not what an evaluation writes; evaluate the run again")

    def nan_for_null(values: dict, skip: tuple[str, ...] = ()) -> dict:
        return {k: (math.nan if v is None and k not in skip else v) for k, v in values.items()}

    metrics["scores"] = nan_for_null(metrics.get("scores", {}))
    metrics["per_class"] = [nan_for_null(r, ("class", "kind")) for r in metrics.get("per_class", [])]
    if "oversegmentation" in metrics:
        metrics["oversegmentation"] = {k: nan_for_null(v) for k, v in metrics["oversegmentation"].items()}
    return metrics


def stored_scores(metrics: Path, cfg: Config, weights: str | None, ignore: frozenset[str]) -> dict | None:
    """``metrics`` (read as ``read_metrics`` reads it) when it exists and was computed with ``cfg`` up to
    the keys in ``ignore`` and, for trained weights, from ``weights`` (their SHA-256), and holds what its run
    needs (IB-Focal: the switch's scores); else None: an evaluation of another configuration or of earlier
    weights is recomputed, never reused."""
    if not Path(metrics).is_file():
        return None
    saved = read_metrics(metrics)
    if saved.get("method") == "ib_focal" and "at_switch" not in saved:
        if (Path(metrics).parent / "switch.pt").is_file():
            return None  # an IB-Focal run is scored with the weights its phase started from
    if weights is not None and saved.get("checkpoint", {}).get("weights_sha256") != weights:
        return None
    return None if differences(saved.get("config", {}), cfg, ignore) else saved


def current_evaluation(run_dir: Path, cfg: Config | None = None, into: Path | None = None) -> dict:
    """The scores of the weights now in ``run_dir`` under ``cfg``'s evaluation parameters (default: the folder's):
    the metrics.json of ``into`` (default the run's folder) while that scored these weights so, else
    ``evaluate_run`` with them, written there. A ``cfg`` that trains differently from the folder's run is refused
    (``checkpoints.evaluation_asked``)."""
    run_dir = Path(run_dir)
    if into is not None and Path(into).resolve() == run_dir.resolve():
        into = None  # the run's own folder
    target = Path(into or run_dir)
    folder_cfg, ckpt = scored_checkpoint(run_dir)
    evaluation = {} if cfg is None else evaluation_asked(run_dir, folder_cfg, cfg)
    ignore = TRAINING_RUNTIME_KEYS if cfg is None else TRAINING_RUNTIME_KEYS - set(EVALUATION_KEYS)
    if (target / "centroids.pt").is_file():
        wanted = folder_cfg.replace(**evaluation)
        saved = stored_scores(target / "metrics.json", wanted, weights_digest(ckpt["model"]), ignore)
        if saved is not None:
            return saved
    return evaluate_run(run_dir, evaluation=evaluation, into=into)


Predictor = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]


def class_predictor(run_dir: Path, weights_dir: Path | None = None) -> Predictor:
    """``(images, size) -> (B, H, W)`` class ids predicted by an evaluated run (or reference point): its fitted
    centroids, each cluster named by the run's Hungarian matching (All); -1 = unmatched. The trained weights are
    ``weights_dir``'s where the scores lie elsewhere (a try's re-scoring of a run)."""
    run_dir = Path(run_dir)
    metrics = read_metrics(run_dir / "metrics.json")
    if not (run_dir / "centroids.pt").is_file():
        raise FileNotFoundError(f"{run_dir}: no centroids.pt; only clusterings have them (evaluate the run first)")
    saved = torch.load(run_dir / "centroids.pt", map_location="cpu", weights_only=True)
    centroids = saved["centroids"]
    cfg = from_dict(metrics["config"], source=str(run_dir / "metrics.json"))
    if metrics["method"] == "rgb_kmeans":
        extract, rule = rgb_feature_fn(), "nearest"
    else:
        if metrics["method"] == "untrained":
            model = build_model(cfg, resolve_device(cfg.device))
        else:
            model = load_trained_model(weights_dir or run_dir, cfg)
        if "bn_state" in saved:  # the statistics the predictions were scored with
            model.load_state_dict(saved["bn_state"], strict=False)
        extract, rule = network_feature_fn(model, cfg, labelling_bn(cfg)), "dot"
    cluster_to_class = torch.full((len(centroids),), -1, dtype=torch.int64)
    for c, row in enumerate(metrics["per_class"]):
        if row["cluster"] >= 0:
            cluster_to_class[row["cluster"]] = c

    @torch.no_grad()
    def classes(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return cluster_to_class[predict(extract, images, size, centroids, rule).cpu()]

    return classes
