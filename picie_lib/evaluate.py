"""Final evaluation (picie.md section 7, design section 3 "Evaluation").

A fresh k-means (K clusters, PiCIE's mini-batch k-means) on the train split without
augmentation (shorter side resized, centre crop), then on val: logits of the frozen centroid
classifier, upsampled bilinearly to the label size, argmax, a confusion matrix, Hungarian
matching. BatchNorm as training's passes (``bn_eval``): with "running" (PiCIE's), the fresh k-means
runs in ``train()`` mode and moves the running statistics of a *copy* of the model, which then
scores in ``eval()`` mode; the model itself (and its saved weights) stay as trained.

The same machinery scores two reference points used to calibrate a data set: k-means on raw
RGB pixels, and a supervised linear probe on the network's features (the ceiling).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from picie_lib import distributed
from picie_lib.clustering import MiniBatchKMeans
from picie_lib.config import Config
from picie_lib.data import SceneDataset, build_dataset
from picie_lib.data.base import warn_skipped
from picie_lib.eval_seeds import over_eval_seeds
from picie_lib.loader import Batches
from picie_lib.metrics import ConfusionMatrix, ObjectFragments, group_scores, over_segmentation, protocol_scores
from picie_lib.model import bn_mode, bn_state
from picie_lib.picie import clustering_bn, derive_seed, labelling_bn, network_features, permutation
from picie_lib.progress import progress
from picie_lib.transforms import to_network_input

STREAM_EVAL_ORDER, STREAM_EVAL_KMEANS = 11, 12
CENTROIDS_FORMAT = "picie_lib.centroids/1"
FeatureFn = Callable[[torch.Tensor], torch.Tensor]  # uint8 images (B, 3, H, W) -> features (B, D, h, w)


def network_feature_fn(model: torch.nn.Module, cfg: Config, bn: str) -> FeatureFn:
    """L2-normalised network features, no gradient, BatchNorm in mode ``bn`` (``model.bn_mode``)."""
    device = next(model.parameters()).device

    @torch.no_grad()
    def extract(images: torch.Tensor) -> torch.Tensor:
        with bn_mode(model, bn):
            return F.normalize(network_features(model, to_network_input(images, device), cfg), dim=1)

    extract.model = model  # whose BatchNorm statistics a clustering pass may move (``fit_centroids``)
    return extract


def rgb_feature_fn(stride: int = 4) -> FeatureFn:
    """Raw RGB in [0, 1], averaged over stride x stride cells (the network's output grid)."""
    return lambda images: F.avg_pool2d(images.float() / 255, stride)


def cluster_logits(features: torch.Tensor, centroids: torch.Tensor, rule: str) -> torch.Tensor:
    """(B, K, h, w) scores whose argmax is the prediction.

    ``"dot"``: f . c_k, PiCIE's frozen classifier (its evaluation rule). ``"nearest"``: the negative
    squared distance up to a per-pixel constant, 2 f . c_k - ||c_k||^2.
    """
    c = centroids.to(features.device, features.dtype)
    dot = torch.einsum("bdhw,kd->bkhw", features, c)
    if rule == "dot":
        return dot
    if rule == "nearest":
        return 2 * dot - (c * c).sum(1).view(1, -1, 1, 1)
    raise ValueError(f"rule={rule!r}: expected 'dot' or 'nearest'")


def fit_centroids(
    extract: FeatureFn, dataset: SceneDataset, cfg: Config, seed: int, order_seed: int | None = None
) -> tuple[torch.Tensor, list[str]]:
    """A fresh mini-batch k-means on ``dataset`` (eval mode), its start and the split's reading order seeded by
    ``seed`` (the order by ``order_seed`` if given); also the files left out. Under torchrun each process reads its
    share of every batch, the k-means sums over the processes; BatchNorm statistics ``extract`` moves are averaged."""
    km = MiniBatchKMeans.from_config(
        cfg, derive_seed(seed, STREAM_EVAL_KMEANS), cfg.eval_kmeans_restarts, cfg.eval_kmeans_init_batches
    )
    order = permutation(len(dataset), derive_seed(seed if order_seed is None else order_seed, STREAM_EVAL_ORDER))
    batches = Batches(dataset, order, cfg.batch_size_cluster, cfg, keep_empty=distributed.joined())
    for batch in progress(batches, "eval k-means"):
        if batch is None:  # this process has no usable item in this step
            km.update(None)
            continue
        feats = extract(batch[1])
        km.update(feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1]))
    if getattr(extract, "model", None) is not None:
        distributed.average_bn_buffers(extract.model)
    return km.finish(), _all_skipped(batches)


def _all_skipped(batches: Batches) -> list[str]:
    """The files every process left out of a pass (one process's in a single process)."""
    return sorted({name for names in distributed.all_gather_objects(batches.skipped_files) for name in names})


def predict(
    extract: FeatureFn,
    images: torch.Tensor,
    size: tuple[int, int],
    centroids=None,
    rule: str = "dot",
    head: torch.nn.Module | None = None,
) -> torch.Tensor:
    """Per-pixel predictions (B, H, W) at the label size: logits upsampled bilinearly, argmax."""
    feats = extract(images)
    logits = head(feats) if head is not None else cluster_logits(feats, centroids, rule)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False).argmax(1)


@torch.no_grad()
def score_predictions(
    predict_batch: Callable[[torch.Tensor, tuple[int, int]], torch.Tensor],
    dataset: SceneDataset,
    cfg: Config,
    num_clusters: int,
    match: bool = True,
) -> dict:
    """Run ``predict_batch`` over the val set; returns scores, per-class tables, the confusion matrix
    and the val items left out as bad files. Under torchrun each process predicts its share (every image
    once) and the confusion matrix is summed over the processes before the Hungarian matching; the
    predictions are gathered for the per-object counts."""
    confusion = ConfusionMatrix(dataset.n_classes, num_clusters)
    predictions, targets = [], []
    kept = torch.int16 if max(num_clusters, dataset.n_classes) < 2**15 else torch.int32  # kept maps: 4x less memory
    batches = Batches(dataset, list(range(len(dataset))), cfg.eval_batch_size, cfg)
    for _, images, labels in progress(batches, "evaluate"):
        pred = predict_batch(images, tuple(labels.shape[-2:])).cpu()
        confusion.update(pred, labels)
        predictions.append(pred.to(kept))
        targets.append(labels.to(kept))
    matrix = confusion.matrix
    if distributed.joined():
        matrix = distributed.all_reduce_(torch.from_numpy(np.ascontiguousarray(matrix))).numpy()
        shares = distributed.all_gather_objects((predictions, targets))
        predictions = [p for share, _ in shares for p in share]
        targets = [t for _, share in shares for t in share]
    result = summarise(matrix, torch.cat(predictions), torch.cat(targets), dataset, match)
    result["skipped_files"] = _all_skipped(batches)
    return result


def summarise(
    confusion: np.ndarray, predictions: torch.Tensor, targets: torch.Tensor, dataset: SceneDataset, match: bool = True
) -> dict:
    """The six numbers (both protocols), per-class IoU and over-segmentation, from one evaluation."""
    things, stuff = dataset.thing_classes, dataset.stuff_classes
    scored = protocol_scores(confusion, things, stuff, match=match)
    scores = group_scores(confusion, things, stuff, match=match, scored=scored)
    all_scores = scored["all"]
    subset_iou = np.full(dataset.n_classes, np.nan)
    for name in ("thing", "stuff"):
        subset_iou[scored[name]["classes"]] = scored[name]["iou"]
    # fragments are counted on the All matching's class map, so that a piece = a predicted class
    assignment = all_scores["assignment"]
    cluster_to_class = np.full(confusion.shape[1], -1, dtype=np.int64)
    cluster_to_class[assignment[assignment >= 0]] = np.nonzero(assignment >= 0)[0]
    fragments = ObjectFragments(dataset.n_classes)
    mapped = torch.from_numpy(cluster_to_class)[predictions.long()].numpy()
    for pred, target in zip(mapped, targets.numpy(), strict=True):
        fragments.update(pred, target)
    overseg = over_segmentation(confusion)
    fragments_per_object = fragments.per_class()
    per_class = []
    for c, name in enumerate(dataset.class_names):
        per_class.append(
            {
                "class": name,
                "kind": "thing" if c in things else "stuff",
                "pixels": int(confusion[c].sum()),
                "iou_all": float(all_scores["iou"][c]),
                "iou_subset": float(subset_iou[c]),
                "cluster": int(assignment[c]),
                "clusters_for_90pct": float(overseg["clusters_for_share"][c]),
                "effective_clusters": float(overseg["effective_clusters"][c]),
                "top_cluster_share": float(overseg["top_cluster_share"][c]),
                "fragments_per_object": float(fragments_per_object[c]),
            }
        )
    groups = {}
    for kind, members in (("thing", things), ("stuff", stuff)):
        rows = [per_class[c] for c in members]
        groups[kind] = {
            key: float(np.nanmean([r[key] for r in rows]))
            for key in ("clusters_for_90pct", "effective_clusters", "fragments_per_object")
        }
    return {"scores": scores, "per_class": per_class, "oversegmentation": groups, "confusion": confusion.tolist()}


def evaluate_clusters(
    extract: FeatureFn,
    cfg: Config,
    rule: str,
    train_set=None,
    val_set=None,
    score_extract: FeatureFn | None = None,
    seed: int | None = None,
    order_seed: int | None = None,
) -> dict:
    """Fresh k-means on the train split's features (``extract``), seeded ``seed`` (default the run's; ``order_seed``:
    the split's order, ``fit_centroids``), best of ``eval_kmeans_restarts`` starts; val scored by ``score_extract``."""
    train_set = train_set or build_dataset(cfg, "train", mode="eval")
    val_set = val_set or build_dataset(cfg, "val", mode="eval")
    score_extract = score_extract or extract
    start = time.perf_counter()
    distributed.trace("evaluation: fresh k-means on train")
    centroids, skipped_train = fit_centroids(extract, train_set, cfg, cfg.seed if seed is None else seed, order_seed)
    distributed.trace("evaluation: scoring val")
    result = score_predictions(
        lambda x, size: predict(score_extract, x, size, centroids, rule), val_set, cfg, cfg.n_clusters
    )
    result["skipped_files"] = skipped_train + result["skipped_files"]
    warn_skipped(result["skipped_files"], "left out of the evaluation (metrics.json lists them)")
    result["seconds"] = time.perf_counter() - start
    result["centroids"] = centroids.cpu()
    return result


def evaluate_model(model: torch.nn.Module, cfg: Config, train_set=None, val_set=None, stored=None) -> dict:
    """PiCIE's final evaluation of ``model``: its features, its dot-product classifier rule, for each
    k-means seed (``over_eval_seeds``). With ``bn_eval: running`` a fresh copy of the model is evaluated
    per seed (its running statistics move during the fresh k-means) and the result holds the first copy's
    BatchNorm buffers (``bn_state``), so that predictions can be drawn again exactly as they were scored. The draws
    ``stored`` holds (``scores.stored_draws``) are not drawn again."""
    train_set = train_set or build_dataset(cfg, "train", mode="eval")
    val_set = val_set or build_dataset(cfg, "val", mode="eval")

    def evaluate_with(seed: int) -> dict:
        if cfg.bn_eval == "batch":
            extract = network_feature_fn(model, cfg, "batch")
            return evaluate_clusters(extract, cfg, "dot", train_set, val_set, seed=seed)
        evaluated = copy.deepcopy(model)
        result = evaluate_clusters(
            network_feature_fn(evaluated, cfg, clustering_bn(cfg)),
            cfg,
            "dot",
            train_set,
            val_set,
            score_extract=network_feature_fn(evaluated, cfg, labelling_bn(cfg)),
            seed=seed,
        )
        result["bn_state"] = bn_state(evaluated)
        return result

    return over_eval_seeds(evaluate_with, cfg, stored)


def evaluate_rgb(cfg: Config, train_set=None, val_set=None) -> dict:
    """Reference: k-means on raw RGB pixels, nearest-centroid prediction, for each k-means seed."""
    train_set = train_set or build_dataset(cfg, "train", mode="eval")
    val_set = val_set or build_dataset(cfg, "val", mode="eval")
    return over_eval_seeds(
        lambda seed: evaluate_clusters(rgb_feature_fn(), cfg, "nearest", train_set, val_set, seed=seed), cfg
    )
