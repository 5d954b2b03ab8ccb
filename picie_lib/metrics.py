"""Evaluation metrics: the confusion matrix, Hungarian matching, All / Thing / Stuff scores,
and over-segmentation measures (design section 3, "Evaluation").

Rows of a confusion matrix are ground-truth classes and columns clusters. Two Thing/Stuff
protocols are offered, and named wherever they are reported:

- **subset** (the paper's tables, "the other group ignored"): keep the pixels whose ground
  truth is in the group, match the group's classes to the clusters, score the group.
- **global**: the All matching, with the scores restricted to the group's classes.

PiCIE's own code slices the reordered matrix by cluster index (``[:12, :12]``), which mixes
classes; neither protocol does that. ``picie_code_scores`` reproduces it, labelled "as PiCIE's code
prints it": the paper's method rows were most likely computed that way, so it is shown beside the two
protocols, never in their place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage, sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csgraph

from picie_lib.data.base import SkippedItem


def _as_tensor(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def confusion_matrix(pred, target, num_classes: int, num_clusters: int) -> np.ndarray:
    """Counts (num_classes, num_clusters), int64: rows = ground truth, columns = prediction.

    ``pred`` and ``target`` are integer arrays or tensors of the same shape; target -1 is ignored.
    """
    pred, target = _as_tensor(pred).reshape(-1).long(), _as_tensor(target).reshape(-1).long()
    if pred.shape != target.shape:
        raise ValueError(f"pred has {pred.numel()} elements, target {target.numel()}")
    keep = target >= 0
    pred, target = pred[keep], target[keep]
    if len(target) and (int(target.max()) >= num_classes):
        raise ValueError(f"target holds class {int(target.max())}, expected 0..{num_classes - 1} or -1")
    if len(pred) and (int(pred.min()) < 0 or int(pred.max()) >= num_clusters):
        raise ValueError(f"pred holds {int(pred.min())}..{int(pred.max())}, expected 0..{num_clusters - 1}")
    counts = torch.bincount(target * num_clusters + pred, minlength=num_classes * num_clusters)
    return counts.view(num_classes, num_clusters).cpu().numpy().astype(np.int64)


class ConfusionMatrix:
    """Accumulates a confusion matrix batch by batch (``update``), on the predictions' device."""

    def __init__(self, num_classes: int, num_clusters: int) -> None:
        self.num_classes, self.num_clusters = num_classes, num_clusters
        self.matrix = np.zeros((num_classes, num_clusters), dtype=np.int64)

    def update(self, pred, target) -> None:
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.num_clusters)


def hungarian(confusion: np.ndarray) -> np.ndarray:
    """Cluster matched to each row (class) maximising matched pixels; -1 for a row left unmatched
    (only when there are more rows than clusters)."""
    rows, cols = linear_sum_assignment(confusion, maximize=True)
    assignment = np.full(confusion.shape[0], -1, dtype=np.int64)
    assignment[rows] = cols
    return assignment


def _iou(confusion: np.ndarray, assignment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True positives and IoU (NaN where a class is absent from both truth and prediction)."""
    rows = np.arange(len(assignment))
    matched = assignment >= 0
    tp = np.zeros(len(assignment), dtype=np.float64)
    tp[matched] = confusion[rows[matched], assignment[matched]]
    fn = confusion.sum(1) - tp
    fp = np.zeros_like(tp)
    fp[matched] = confusion[:, assignment[matched]].sum(0) - tp[matched]
    denom = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(denom > 0, tp / denom, np.nan)
    return tp, iou


def _mean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if len(values) else math.nan


def score(confusion: np.ndarray, classes: Sequence[int] | None = None, match: bool = True) -> dict:
    """Acc and mIoU in percent, per-class IoU (percent) and the class-to-cluster assignment.

    ``classes`` selects a ground-truth subset (the subset protocol): only its rows count, and its
    classes are matched to the clusters on their own. ``match=False`` takes class i = cluster i
    (a supervised prediction). mIoU leaves out classes absent from truth and prediction.
    """
    confusion = np.asarray(confusion)
    classes = np.arange(confusion.shape[0]) if classes is None else np.asarray(list(classes), dtype=np.int64)
    sub = confusion[classes].astype(np.float64)
    assignment = hungarian(sub) if match else classes.copy()
    tp, iou = _iou(sub, assignment)
    total = sub.sum()
    return {
        "acc": float(100 * tp.sum() / total) if total > 0 else math.nan,
        "miou": 100 * _mean(iou),
        "iou": 100 * iou,
        "assignment": assignment,
        "classes": classes,
    }


def protocol_scores(
    confusion: np.ndarray, thing_classes: Sequence[int], stuff_classes: Sequence[int], match: bool = True
) -> dict[str, dict]:
    """``score`` for All and for each group by the subset protocol: keys ``all``, ``thing``, ``stuff``."""
    return {
        "all": score(confusion, match=match),
        "thing": score(confusion, thing_classes, match=match),
        "stuff": score(confusion, stuff_classes, match=match),
    }


def group_scores(
    confusion: np.ndarray,
    thing_classes: Sequence[int],
    stuff_classes: Sequence[int],
    match: bool = True,
    scored: dict[str, dict] | None = None,
) -> dict[str, float]:
    """The six numbers of the paper's Table 2 (subset protocol), their global-protocol twins and PiCIE's
    code's version.

    Keys: ``acc_all, miou_all, acc_thing, miou_thing, acc_stuff, miou_stuff`` (subset),
    ``global_acc_thing, global_miou_thing, global_acc_stuff, global_miou_stuff`` and
    ``code_acc_thing, code_miou_thing, code_acc_stuff, code_miou_stuff`` (``picie_code_scores``: the
    first ``len(thing_classes)`` cluster indices against the rest). ``scored`` is ``protocol_scores``'s
    result, when the caller has it already.
    """
    confusion = np.asarray(confusion)
    scored = scored or protocol_scores(confusion, thing_classes, stuff_classes, match)
    all_scores = scored["all"]
    out = {"acc_all": all_scores["acc"], "miou_all": all_scores["miou"]}
    for name in ("thing", "stuff"):
        subset = scored[name]
        group = subset["classes"]
        out[f"acc_{name}"], out[f"miou_{name}"] = subset["acc"], subset["miou"]
        rows = confusion[group].astype(np.float64)
        matched = all_scores["assignment"][group]
        tp = np.where(matched >= 0, rows[np.arange(len(group)), np.maximum(matched, 0)], 0.0)
        out[f"global_acc_{name}"] = float(100 * tp.sum() / rows.sum()) if rows.sum() > 0 else math.nan
        out[f"global_miou_{name}"] = _mean(all_scores["iou"][group])
    if match:
        code = picie_code_scores(confusion, all_scores["assignment"], len(thing_classes))
    else:
        code = dict.fromkeys(("acc_first", "miou_first", "acc_rest", "miou_rest"), math.nan)
    for ours, theirs in (("thing", "first"), ("stuff", "rest")):
        out[f"code_acc_{ours}"], out[f"code_miou_{ours}"] = code[f"acc_{theirs}"], code[f"miou_{theirs}"]
    return out


def picie_code_scores(confusion: np.ndarray, assignment: np.ndarray, n_first: int) -> dict[str, float]:
    """Thing / Stuff as PiCIE's code prints them (``commons.py``, ``evaluate``, "For Table 2 -
    partitioned evaluation"): each class's row moves to the index of its matched cluster
    (``new_hist[m[c]] = hist[c]``), then ``get_result_metrics`` scores ``new_hist[:12, :12]`` and
    ``new_hist[12:, 12:]``: slices by *cluster* index, so a thing class matched to a cluster numbered
    12 or more lands in "stuff" and the off-diagonal pixels between the groups drop out.

    ``assignment``: the All matching (class -> cluster); ``n_first``: the 12 of ``[:12]`` (the number of
    thing classes). Keys ``acc_first, miou_first, acc_rest, miou_rest`` (percent); NaN when the matrix
    is not square or a class is unmatched (PiCIE's code needs K clusters for K classes).
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    keys = ("acc_first", "miou_first", "acc_rest", "miou_rest")
    k = confusion.shape[0]
    if confusion.shape[1] != k or (np.asarray(assignment) < 0).any():
        return dict.fromkeys(keys, math.nan)
    reordered = np.zeros_like(confusion)
    reordered[np.asarray(assignment)] = confusion

    def result_metrics(hist: np.ndarray) -> tuple[float, float]:  # PiCIE's utils.get_result_metrics
        tp = np.diag(hist)
        denom = hist.sum(0) + hist.sum(1) - tp  # tp + fp + fn
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(denom > 0, tp / denom, np.nan)
        acc = 100 * tp.sum() / hist.sum() if hist.sum() > 0 else math.nan
        return float(acc), 100 * _mean(iou)

    first = result_metrics(reordered[:n_first, :n_first])
    rest = result_metrics(reordered[n_first:, n_first:])
    return dict(zip(keys, (*first, *rest), strict=True))


def over_segmentation(confusion: np.ndarray, share: float = 0.9) -> dict[str, np.ndarray]:
    """How many clusters each class's pixels spread over (NaN for classes without pixels).

    - ``clusters_for_share``: the fewest clusters holding ``share`` (90%) of the class's pixels;
    - ``effective_clusters``: exp(entropy) of the class's distribution over clusters (1 = one cluster);
    - ``top_cluster_share``: the fraction of the class in its most common cluster.
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    totals = confusion.sum(1)
    present = totals > 0
    p = np.divide(confusion, totals[:, None], out=np.zeros_like(confusion), where=present[:, None])
    sorted_p = -np.sort(-p, axis=1)
    needed = (np.cumsum(sorted_p, axis=1) < share - 1e-12).sum(1) + 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(p > 0, p * np.log(p), 0.0).sum(1)
    nan = np.full(len(totals), np.nan)
    return {
        "clusters_for_share": np.where(present, needed, nan),
        "effective_clusters": np.where(present, np.exp(entropy), nan),
        "top_cluster_share": np.where(present, sorted_p[:, 0], nan),
    }


def constant_regions(values: np.ndarray) -> np.ndarray:
    """Connected regions of equal value in an (H, W) integer map, 4-connected as ``ndimage.label``'s default:
    one label per pixel, 0 .. regions - 1, from one connected-components call on the graph of equal
    neighbours (instead of one ``ndimage.label`` per value and region)."""
    h, w = values.shape
    index = np.arange(h * w).reshape(h, w)
    right = values[:, :-1] == values[:, 1:]
    down = values[:-1, :] == values[1:, :]
    rows = np.concatenate([index[:, :-1][right], index[:-1, :][down]])
    cols = np.concatenate([index[:, 1:][right], index[1:, :][down]])
    graph = sparse.coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(h * w, h * w))
    return csgraph.connected_components(graph, directed=False)[1].reshape(h, w)


class ObjectFragments:
    """Fragments per object: for each connected region of a class in the ground truth (an
    "object"), the number of connected pieces the prediction cuts it into, counting pieces of at
    least ``min_piece`` of the object's area. Averaged per class; 1 = never split.

    A piece is a connected region of one (class, prediction) pair: it lies inside one object, so one
    labelling of the pair map and one of the class map count every object's pieces at once.
    """

    def __init__(self, num_classes: int, min_piece: float = 0.05, min_object_pixels: int = 16) -> None:
        self.num_classes, self.min_piece, self.min_object_pixels = num_classes, min_piece, min_object_pixels
        self.fragments = np.zeros(num_classes, dtype=np.float64)
        self.objects = np.zeros(num_classes, dtype=np.int64)

    def update(self, pred, target) -> None:
        """One image: ``pred`` and ``target`` (H, W) integer maps, target -1 ignored (a prediction of -1,
        an unmatched cluster, is a piece like any other)."""
        pred, target = np.asarray(pred, dtype=np.int64), np.asarray(target, dtype=np.int64)
        labelled = target >= 0
        if not labelled.any():
            return
        objects = constant_regions(np.where(labelled, target, -1))
        values = int(pred.max()) - int(pred.min()) + 1  # one code per (class, prediction) pair, whatever the values
        pairs = np.where(labelled, target * values + pred - int(pred.min()), -1)
        pieces = constant_regions(pairs)[labelled]
        objects, classes = objects[labelled], target[labelled]
        area = np.bincount(objects)
        # each piece's object and size; a piece counts when it holds min_piece of its object
        piece_object = np.zeros(pieces.max() + 1, dtype=np.int64)
        piece_object[pieces] = objects
        piece_size = np.bincount(pieces)
        kept = (piece_size > 0) & (piece_size >= self.min_piece * area[piece_object])
        counted = np.bincount(piece_object[kept], minlength=len(area))
        object_class = np.zeros(len(area), dtype=np.int64)
        object_class[objects] = classes
        scored = (area > 0) & (area >= self.min_object_pixels)  # area 0: a label of the unlabelled pixels
        np.add.at(self.fragments, object_class[scored], np.maximum(counted[scored], 1))
        np.add.at(self.objects, object_class[scored], 1)

    def per_class(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.objects > 0, self.fragments / np.maximum(self.objects, 1), np.nan)


def class_pixel_counts(dataset, max_images: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Labelled pixels per class over the first ``max_images`` items of an eval-mode data set
    (at the evaluation crop), and each image's share of stuff among its labelled pixels (NaN for an
    image without labels or with a bad file)."""
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    counts = np.zeros(dataset.n_classes, dtype=np.int64)
    stuff = np.asarray(dataset.stuff_classes, dtype=np.int64)
    shares = np.full(n, np.nan)
    for i in range(n):
        item = dataset[i]
        if isinstance(item, SkippedItem):  # a bad file: left out, as in every pass
            continue
        label = np.asarray(item[2]).ravel()
        per_class = np.bincount(label[label >= 0], minlength=dataset.n_classes)
        counts += per_class
        if per_class.sum():
            shares[i] = per_class[stuff].sum() / per_class.sum()
    return counts, shares


def boundary_errors(predictions: Sequence, labels: Sequence, width: int = 1) -> dict[str, float]:
    """Error rate (%) of class predictions on the labelled pixels within ``width`` pixels of a class
    boundary of the ground truth, and on the other labelled pixels; with the boundary's share of them.
    A clustering that cuts rings along object edges shows a boundary error far above the interior's."""
    wrong = {"boundary": [0, 0], "interior": [0, 0]}  # errors, pixels
    for prediction, label in zip(predictions, labels, strict=True):
        label, prediction = np.asarray(label), np.asarray(prediction)
        size = 2 * width + 1
        # two labelled classes within the window; ignored pixels (-1) draw no boundary of their own
        largest = ndimage.maximum_filter(label, size=size, mode="nearest")
        smallest = ndimage.minimum_filter(np.where(label < 0, largest.max() + 1, label), size=size, mode="nearest")
        near = largest != smallest
        labelled = label >= 0
        for region, mask in (("boundary", near & labelled), ("interior", ~near & labelled)):
            wrong[region][0] += int((prediction[mask] != label[mask]).sum())
            wrong[region][1] += int(mask.sum())
    total = wrong["boundary"][1] + wrong["interior"][1]
    return {
        "boundary_error": 100 * wrong["boundary"][0] / max(wrong["boundary"][1], 1),
        "interior_error": 100 * wrong["interior"][0] / max(wrong["interior"][1], 1),
        "boundary_share": 100 * wrong["boundary"][1] / max(total, 1),
    }
