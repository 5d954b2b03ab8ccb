"""Metrics against scikit-learn and brute force over all matchings."""

import importlib
import itertools
import math
import sys

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import confusion_matrix as sk_confusion

from picie_lib.metrics import (
    ConfusionMatrix,
    ObjectFragments,
    confusion_matrix,
    group_scores,
    hungarian,
    over_segmentation,
    score,
)
from picie_lib.notebook import NOTEBOOK_DIR

sys.path.insert(0, str(NOTEBOOK_DIR.parent / "benchmarks"))
evaluate_parts = importlib.import_module("evaluate_parts")


def _brute_force(conf: np.ndarray, classes=None):
    """Best injective class->cluster map by enumeration; Acc and nan-mean IoU in percent."""
    conf = np.asarray(conf, dtype=float)
    classes = list(range(conf.shape[0])) if classes is None else list(classes)
    sub = conf[classes]
    best = None
    for perm in itertools.permutations(range(conf.shape[1]), len(classes)):
        matched = sum(sub[i, perm[i]] for i in range(len(classes)))
        if best is None or matched > best[0]:
            best = (matched, perm)
    matched, perm = best
    ious = []
    for i in range(len(classes)):
        tp = sub[i, perm[i]]
        fn = sub[i].sum() - tp
        fp = sub[:, perm[i]].sum() - tp
        ious.append(tp / (tp + fp + fn) if tp + fp + fn > 0 else math.nan)
    return 100 * matched / sub.sum(), 100 * np.nanmean(ious), np.array(ious) * 100


def test_confusion_matrix_matches_sklearn_with_ignore():
    rng = np.random.default_rng(0)
    target = rng.integers(-1, 5, size=(3, 17, 19))
    pred = rng.integers(0, 7, size=(3, 17, 19))
    got = confusion_matrix(pred, target, num_classes=5, num_clusters=7)
    keep = target >= 0
    expected = sk_confusion(target[keep], pred[keep], labels=range(7))[:5]
    assert got.shape == (5, 7) and got.dtype == np.int64
    assert np.array_equal(got, expected)
    assert got.sum() == keep.sum()  # ignored pixels are not counted


def test_confusion_matrix_rejects_out_of_range():
    with pytest.raises(ValueError, match="target holds class 5"):
        confusion_matrix([0, 1], [0, 5], num_classes=5, num_clusters=5)
    with pytest.raises(ValueError, match="pred holds"):
        confusion_matrix([0, 9], [0, 1], num_classes=5, num_clusters=5)


def test_accumulated_confusion_equals_one_shot():
    rng = np.random.default_rng(1)
    target, pred = rng.integers(-1, 4, (5, 8, 8)), rng.integers(0, 4, (5, 8, 8))
    acc = ConfusionMatrix(4, 4)
    for p, t in zip(pred, target, strict=True):
        acc.update(p, t)
    assert np.array_equal(acc.matrix, confusion_matrix(pred, target, 4, 4))


@pytest.mark.parametrize("seed", range(5))
def test_score_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    conf = rng.integers(0, 10**6, size=(5, 5))  # large counts: no ties between matchings
    conf[rng.integers(0, 5)] = 0  # a class absent from the ground truth
    got = score(conf)
    acc, miou, iou = _brute_force(conf)
    assert got["acc"] == pytest.approx(acc)
    assert got["miou"] == pytest.approx(miou)
    assert np.allclose(got["iou"], iou, equal_nan=True)
    assert sorted(got["assignment"].tolist()) == list(range(5))


def test_miou_leaves_out_classes_absent_from_truth_and_prediction():
    conf = np.array([[10, 0, 0], [0, 5, 0], [0, 0, 0]])  # class 2 never occurs, cluster 2 never predicted
    got = score(conf)
    assert math.isnan(got["iou"][2])
    assert got["miou"] == pytest.approx(100.0) and got["acc"] == pytest.approx(100.0)
    # but a class absent from the truth whose matched cluster is predicted counts as IoU 0
    conf2 = np.array([[10, 0, 3], [0, 5, 0], [0, 0, 0]])
    got2 = score(conf2)
    assert got2["iou"][2] == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_subset_protocol_matches_brute_force_on_a_rectangular_problem(seed):
    rng = np.random.default_rng(10 + seed)
    conf = rng.integers(0, 10**6, size=(6, 6))
    group = [1, 3, 4]
    got = score(conf, classes=group)
    acc, miou, iou = _brute_force(conf, group)
    assert got["acc"] == pytest.approx(acc) and got["miou"] == pytest.approx(miou)
    assert np.allclose(got["iou"], iou)
    assert len(set(got["assignment"].tolist())) == 3


def test_group_scores_both_protocols_by_hand():
    # classes 0,1 = things, 2,3 = stuff; clusters in a scrambled order
    conf = np.array(
        [
            [8, 2, 0, 0],
            [6, 0, 0, 4],
            [0, 0, 9, 1],
            [0, 10, 0, 0],
        ]
    )
    s = group_scores(conf, [0, 1], [2, 3])
    # All matching: 0->0 (8), 1->3 (4), 2->2 (9), 3->1 (10): 31 of 40
    assert s["acc_all"] == pytest.approx(100 * 31 / 40)
    # subset, things: rows 0,1 alone; best is 0->1 (2) + 1->0 (6) = 8 or 0->0 (8) + 1->3 (4) = 12
    assert s["acc_thing"] == pytest.approx(100 * 12 / 20)
    # global, things: the All matching restricted to rows 0,1: 8 + 4 of 20
    assert s["global_acc_thing"] == pytest.approx(100 * 12 / 20)
    # subset, stuff: rows 2,3: 2->2 (9) + 3->1 (10) = 19 of 20
    assert s["acc_stuff"] == pytest.approx(100 * 19 / 20)
    # subset IoU for thing 0 (cluster 0) counts only thing pixels as false positives: 8 / (8 + 6 + 2)
    t = score(conf, [0, 1])
    assert t["iou"][0] == pytest.approx(100 * 8 / 16)
    # global IoU for thing 0 counts every pixel: same here; for stuff 3 (cluster 1): 10 / (10 + 2)
    assert score(conf)["iou"][3] == pytest.approx(100 * 10 / 12)


def test_scores_do_not_depend_on_cluster_order():
    # PiCIE slices the reordered matrix by cluster index; a correct protocol is invariant to relabelling
    rng = np.random.default_rng(3)
    conf = rng.integers(0, 30, size=(6, 6))
    perm = rng.permutation(6)
    a, b = group_scores(conf, [0, 1, 2], [3, 4, 5]), group_scores(conf[:, perm], [0, 1, 2], [3, 4, 5])
    ours = [k for k in a if not k.startswith("code_")]
    assert {k: a[k] for k in ours} == pytest.approx({k: b[k] for k in ours})


def _picie_code_literal(hist: np.ndarray, n_first: int) -> tuple[float, float, float, float]:
    """PiCIE's commons.py ``evaluate`` transcribed: linear_assignment(hist.max() - hist), the rows moved
    to their cluster (new_hist[m[idx, 1]] = histogram[idx]), get_result_metrics on the two slices."""
    rows, cols = linear_sum_assignment(hist.max() - hist)
    m = np.stack([rows, cols], axis=1)
    new_hist = np.zeros(hist.shape)
    for idx in range(hist.shape[0]):
        new_hist[m[idx, 1]] = hist[idx]

    def get_result_metrics(h):
        tp = np.diag(h)
        fp = np.sum(h, 0) - tp
        fn = np.sum(h, 1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = tp / (tp + fp + fn)
        return 100 * np.sum(tp) / np.sum(h), 100 * np.nanmean(iou)

    return (*get_result_metrics(new_hist[:n_first, :n_first]), *get_result_metrics(new_hist[n_first:, n_first:]))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_picie_code_thing_stuff_equals_its_literal_transcription(seed):
    rng = np.random.default_rng(seed)
    conf = rng.integers(0, 50, size=(7, 7)) * (rng.random((7, 7)) < 0.6)
    conf[rng.integers(0, 7)] = 0  # a class absent from the ground truth: NaN IoU, left out
    s = group_scores(conf, [0, 1, 2], [3, 4, 5, 6])
    got = (s["code_acc_thing"], s["code_miou_thing"], s["code_acc_stuff"], s["code_miou_stuff"])
    assert got == pytest.approx(_picie_code_literal(conf.astype(float), 3), nan_ok=True)


def test_picie_code_slices_by_cluster_index_not_by_class():
    # thing 0 is matched to cluster 3 (a "stuff" index), stuff 3 to cluster 0: PiCIE's code then scores
    # thing 0's pixels as stuff and the reverse; the subset protocol is not fooled
    conf = np.array([[0, 0, 0, 10], [0, 10, 0, 0], [0, 0, 10, 0], [10, 0, 0, 0]])
    s = group_scores(conf, [0, 1], [2, 3])
    assert s["acc_thing"] == s["acc_stuff"] == 100.0
    assert s["code_acc_thing"] == 100.0 and s["code_miou_thing"] == 100.0  # the slice holds class 3 and class 1
    relabelled = group_scores(conf[:, [3, 1, 2, 0]], [0, 1], [2, 3])  # the same prediction, clusters renamed
    assert relabelled["acc_thing"] == s["acc_thing"]
    assert (relabelled["code_acc_thing"], relabelled["code_acc_stuff"]) == (100.0, 100.0)
    mixed = np.array([[6, 0, 0, 4], [0, 10, 0, 0], [0, 0, 10, 0], [4, 0, 0, 6]])  # things and stuff confused
    m = group_scores(mixed, [0, 1], [2, 3])
    assert m["code_acc_thing"] == pytest.approx(100 * 16 / 16)  # [:2, :2] drops the 4 + 4 confused pixels
    assert m["acc_thing"] == pytest.approx(100 * 16 / 20)


def test_identity_matching_for_supervised_predictions():
    conf = np.array([[5, 5], [0, 10]])
    assert score(conf, match=False)["acc"] == pytest.approx(75.0)
    assert score(conf, match=True)["acc"] == pytest.approx(75.0)
    swapped = conf[:, ::-1]
    assert score(swapped, match=False)["acc"] == pytest.approx(25.0)
    assert score(swapped, match=True)["acc"] == pytest.approx(75.0)


def test_more_classes_than_clusters_leaves_some_unmatched():
    conf = np.array([[5, 0], [0, 5], [1, 1]])
    assert hungarian(conf).tolist() == [0, 1, -1]
    got = score(conf)
    assert got["iou"][2] == 0.0 and got["acc"] == pytest.approx(100 * 10 / 12)


def test_over_segmentation_by_hand():
    conf = np.array(
        [
            [90, 10, 0, 0],  # one dominant cluster
            [25, 25, 25, 25],  # spread evenly over four
            [0, 0, 0, 0],  # absent
        ]
    )
    o = over_segmentation(conf)
    assert o["clusters_for_share"][0] == 1 and o["clusters_for_share"][1] == 4
    assert o["effective_clusters"][1] == pytest.approx(4.0)
    assert o["effective_clusters"][0] == pytest.approx(math.exp(-(0.9 * math.log(0.9) + 0.1 * math.log(0.1))))
    assert o["top_cluster_share"][0] == pytest.approx(0.9)
    assert all(math.isnan(o[k][2]) for k in o)


def test_object_fragments_counts_pieces_per_object():
    target = np.full((20, 20), 1)
    target[2:10, 2:10] = 0  # object A (class 0, 64 px)
    target[12:18, 12:18] = 0  # object B (class 0, 36 px)
    target[0, :] = -1
    pred = np.full((20, 20), 5)
    pred[2:10, 2:6] = 3  # A split into two halves of the same... different clusters
    pred[2:10, 6:10] = 4
    pred[12:18, 12:18] = 3  # B whole
    pred[13, 13] = 7  # a 1-pixel speck in B, under 5% of its area: not a piece
    frag = ObjectFragments(num_classes=2, min_piece=0.05)
    frag.update(pred, target)
    per_class = frag.per_class()
    assert frag.objects[0] == 2
    assert per_class[0] == pytest.approx((2 + 1) / 2)
    # two disconnected pieces of the same cluster count twice
    pred2 = pred.copy()
    pred2[2:10, 2:10] = 3
    pred2[2:10, 5:7] = 6  # a band cutting A into left and right parts of cluster 3
    frag2 = ObjectFragments(num_classes=2)
    frag2.update(pred2, target)
    assert frag2.fragments[0] == 3 + 1


@pytest.mark.parametrize("seed", range(6))
def test_object_fragments_match_labelling_each_object_and_cluster_apart(seed):
    # blobby maps with unlabelled pixels and unmatched (-1) predictions (other negative values too, and objects of
    # any size on odd seeds); the reference labels every object, and every cluster inside it, on its own
    # (benchmarks/evaluate_parts.py times the two side by side)
    rng = np.random.default_rng(seed)
    target = evaluate_parts.blobs(rng, 4, (40, 48), rng.uniform(1, 4))
    target[evaluate_parts.blobs(rng, 5, (40, 48), 2.0) == 0] = -1
    pred = evaluate_parts.blobs(rng, 6, (40, 48), rng.uniform(1, 4)) - 1 - 2 * (seed % 3 == 2)  # -1 .. 4 or -3 .. 2
    min_object_pixels = 0 if seed % 2 else 8
    frag = ObjectFragments(num_classes=4, min_piece=0.05, min_object_pixels=min_object_pixels)
    frag.update(pred, target)
    fragments, objects = evaluate_parts.fragments_by_object(pred, target, 4, 0.05, min_object_pixels)
    assert objects.sum() > 3 and fragments.sum() > objects.sum()  # several objects, some of them split
    np.testing.assert_array_equal(frag.objects, objects)
    np.testing.assert_array_equal(frag.fragments, fragments)


def test_object_fragments_of_an_image_without_labels_count_nothing():
    frag = ObjectFragments(num_classes=2)
    frag.update(np.zeros((5, 5), dtype=int), np.full((5, 5), -1))
    assert frag.objects.sum() == 0 and np.isnan(frag.per_class()).all()
