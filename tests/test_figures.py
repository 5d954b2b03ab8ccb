"""What the notebooks draw and check: colours, feature projections, widgets, the paper's claims,
the cosine-logit bound, the pixel statistics. Each against an independent computation."""

import json

import numpy as np
import pytest
import scipy.stats
import torch

from picie_lib import explore, plots, readings
from picie_lib.claims import CLAIMS, COLUMNS, GLOBAL_COLUMNS, PAPER_TABLE, paired_difference, paper_claims, verdict
from picie_lib.config import METHOD_NAMES
from picie_lib.data import SyntheticScenes
from picie_lib.data.cocostuff_classes import COARSE_NAMES
from picie_lib.eval_seeds import gains_over
from picie_lib.explore import browse, failure_map
from picie_lib.losses import cosine_logit_max_probability
from picie_lib.metrics import boundary_errors, class_pixel_counts


def _lab(rgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] -> CIELAB (D65), the textbook formulas."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]).T
    xyz = xyz / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


def test_colourise_gives_each_class_its_colour_and_ignore_black():
    label = np.array([[0, 1], [-1, 26]])
    colours = plots.colourise(label, 27)
    assert colours.shape == (2, 2, 3)
    assert np.array_equal(colours[1, 0], [0, 0, 0])
    image = np.full((2, 2, 3), 0.5)
    mixed = plots.overlay(image, label, 27, alpha=0.5)
    assert np.array_equal(mixed[1, 0], image[1, 0])  # ignored pixels keep the image
    assert np.allclose(mixed[0, 0], 0.5 * image[0, 0] + 0.5 * colours[0, 0])


def test_every_two_class_colours_are_far_apart_and_the_frequent_classes_look_as_expected():
    lab = _lab(plots.class_colours(27)[:27])
    distance = np.linalg.norm(lab[:, None] - lab[None], axis=-1) + np.eye(27) * 1e9
    assert distance.min() > 30  # Delta E 1976: 2.3 is a just-noticeable difference
    hue = {name: np.degrees(np.arctan2(lab[c, 2], lab[c, 1])) % 360 for c, name in enumerate(COARSE_NAMES)}
    chroma = {name: np.hypot(lab[c, 1], lab[c, 2]) for c, name in enumerate(COARSE_NAMES)}
    assert 200 < hue["sky-stuff"] < 280 and 100 < hue["plant-stuff"] < 160  # blue sky, green plant
    assert chroma["building-stuff"] < 5 and 40 < hue["ground-stuff"] < 80  # grey building, brown ground


def test_a_class_key_lists_exactly_the_classes_in_the_maps():
    fig = plots.image_grid([[np.zeros((4, 4, 3))]])
    plots.add_class_key(fig, [np.array([[3, -1], [22, 22]]), np.array([[3, 5]])], COARSE_NAMES, (3, 5))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["furniture-things *", "kitchen-things *", "plant-stuff"]


def test_feature_pca_gives_equal_colours_to_equal_features_across_maps():
    torch.manual_seed(0)
    f = torch.randn(2, 16, 5, 5)
    a, b = plots.feature_pca_rgb(f, f.flip(-1))
    assert a.shape == (2, 5, 5, 3) and a.min() >= 0 and a.max() <= 1
    assert np.allclose(a[..., ::-1, :], b)
    # the first component is the direction of largest variance (numpy's SVD, independently)
    pixels = torch.cat([f, f.flip(-1)]).permute(0, 2, 3, 1).reshape(-1, 16).double().numpy()
    centred = pixels - pixels.mean(0)
    first = np.linalg.svd(centred, full_matrices=False)[2][0]
    projected = (f.permute(0, 2, 3, 1).reshape(-1, 16).double().numpy() - pixels.mean(0)) @ first
    assert abs(np.corrcoef(projected, a[..., 0].reshape(-1))[0, 1]) > 0.999


def test_failure_map_marks_found_missed_and_invented_pixels():
    label = np.array([[3, 3, 1, -1, 0]])
    pred = np.array([[3, 0, 3, 3, 0]])
    colours = failure_map(pred, label, 3)
    expected = [explore.FOUND, explore.MISSED, explore.INVENTED, explore.ELSEWHERE, explore.ELSEWHERE]
    assert np.allclose(colours[0], expected)  # an ignored pixel is not a false positive
    assert len({tuple(c) for _, c in explore.FAILURE_KEY}) == 4


def test_per_image_iou_matches_sklearn_on_the_labelled_pixels():
    from sklearn.metrics import jaccard_score

    rng = np.random.default_rng(0)
    label, pred = rng.integers(-1, 4, (20, 20)), rng.integers(0, 4, (20, 20))
    kept = label >= 0
    for cls in range(4):
        expected = 100 * jaccard_score(label[kept] == cls, pred[kept] == cls)
        assert explore.image_iou(pred, label, cls) == pytest.approx(expected)
    assert explore.image_iou(pred, label, 9) is None  # neither held nor predicted


def test_class_index_steps_to_the_images_that_hold_a_class():
    scenes = SyntheticScenes(12, 32, seed=0, split="val", mode="eval", res=32)
    index = explore.ClassIndex(scenes)
    holding = {c: [i for i in range(12) if c in set(scenes[i][2].unique().tolist())] for c in range(27)}
    cls = next(c for c, images in holding.items() if 1 < len(images) < 12)
    images = holding[cls]
    assert index.step(cls, images[0]) == images[1]
    assert index.step(cls, images[0], -1) == images[-1]  # wraps around
    absent = next((c for c, images in holding.items() if not images), None)
    if absent is not None:
        assert index.step(absent, 0) is None


def test_the_widget_builds_and_redraws_without_a_frontend():
    pytest.importorskip("ipywidgets")
    scenes = SyntheticScenes(6, 32, seed=0, split="val", mode="eval", res=32)
    calls = []

    def predictor(images, size):
        calls.append((len(images), *size))
        return torch.zeros((len(images), *size), dtype=torch.int64)

    per_class = [{"iou_all": 12.5}] * scenes.n_classes
    box = browse(scenes, {"ce": predictor}, {"ce": per_class})
    slider, picker = box.children[0].children
    previous, following, status = box.children[1].children
    assert following.disabled  # no class picked: nothing to jump to
    slider.value = 2
    picker.value = 5  # same image: its predictions are reused
    assert calls == [(1, 32, 32)] * 2
    holding = [i for i in range(6) if 5 in set(scenes[i][2].unique().tolist())]
    following.click()
    assert slider.value == next((i for i in holding if i > 2), holding[0] if holding else 2)
    calls.clear()
    box = browse(scenes, {"ce": predictor}, batch_size=3)  # the evaluation's batches: one call for all three
    box.children[0].children[0].value = 2
    assert calls == [(3, 32, 32)]


def test_boundary_errors_against_a_pixel_by_pixel_count():
    rng = np.random.default_rng(1)
    labels = [np.repeat(np.repeat(rng.integers(-1, 3, (4, 5)), 3, 0), 3, 1) for _ in range(3)]
    preds = [rng.integers(0, 3, label.shape) for label in labels]
    counts = {True: [0, 0], False: [0, 0]}
    for label, pred in zip(labels, preds, strict=True):
        h, w = label.shape
        for y in range(h):
            for x in range(w):
                if label[y, x] < 0:
                    continue
                window = label[max(0, y - 1) : y + 2, max(0, x - 1) : x + 2]
                near = len({int(v) for v in window.ravel() if v >= 0}) > 1
                counts[near][0] += int(pred[y, x] != label[y, x])
                counts[near][1] += 1
    result = boundary_errors(preds, labels)
    assert result["boundary_error"] == pytest.approx(100 * counts[True][0] / counts[True][1])
    assert result["interior_error"] == pytest.approx(100 * counts[False][0] / counts[False][1])
    assert result["boundary_share"] == pytest.approx(100 * counts[True][1] / (counts[True][1] + counts[False][1]))


def _ib_log():
    ce = [{"epoch": e, "phase": "ce", "loss": 3.0 - 0.1 * e, "kmeans_loss": [0.3, 0.3]} for e in (1, 2, 3)]
    dropped = {"epoch": 4, "phase": "ce", "loss": 2.8, "kmeans_loss": [0.3, 0.3], "discarded": True}
    ib = [{"epoch": e, "phase": "ib_focal", "loss": 60.0 + e, "kmeans_loss": [0.2, 0.2]} for e in (4, 5, 6)]
    return [*ce, dropped, *ib]


def test_loss_curves_give_ib_focal_its_own_axis_and_mark_the_switch():
    fig = plots.loss_curves(_ib_log(), "IB-Focal")
    loss_axes = [ax for ax in fig.axes if ax.get_ylabel().endswith("loss") or "right axis" in ax.get_ylabel()]
    assert [ax.get_ylabel() for ax in loss_axes] == ["CE loss", "IB-Focal loss (right axis)"]
    ce_axis, ib_axis = loss_axes
    assert ce_axis.get_ylim()[1] < 10 < ib_axis.get_ylim()[0]  # each scale readable on its own
    switch_lines = [line.get_xdata()[0] for line in ce_axis.lines if line.get_linestyle() == "--"]
    assert switch_lines == [3.5]  # between the last kept CE epoch and the first IB-Focal one
    text = readings.loss_curves(_ib_log())
    assert "after epoch 3" in text and "discarded" in text and "2.7" in text
    single = plots.loss_curves(_ib_log()[:3])
    assert len(single.axes) == 3  # CE alone: loss, k-means, weights moved; no second loss axis


def test_the_loss_curves_show_how_far_each_epoch_moved_the_weights_in_its_phases_colour():
    log = [{**r, "weights_moved": 0.01 if r["phase"] == "ce" else 0.0002} for r in _ib_log()]
    fig = plots.loss_curves(log, "IB-Focal")
    moved = next(ax for ax in fig.axes if ax.get_title() == "how far each epoch moved the weights")
    lines = {line.get_label(): line for line in moved.lines if line.get_linestyle() != "--"}
    assert list(lines["CE"].get_ydata()) == [1.0, 1.0, 1.0]  # percent, the discarded epoch left out
    assert list(lines["IB-Focal"].get_xdata()) == [4, 5, 6] and list(lines["IB-Focal"].get_ydata()) == [0.02] * 3
    assert lines["IB-Focal"].get_color() == plots.METHOD_COLOURS["ib_focal"]  # as 07 colours the method


def test_legends_sit_outside_the_axes_of_the_results_and_gains_figures():
    from picie_lib.compare import plot_results

    rows = _rows(PAPER_TABLE, (0, 1))
    fig = plot_results(rows)
    fig.canvas.draw()
    axes_box, legend_box = fig.axes[0].get_window_extent(), fig.axes[0].get_legend().get_window_extent()
    assert legend_box.y1 <= axes_box.y0  # under the axes, covering neither bars nor ticks
    assert {t.get_text() for t in fig.axes[0].get_legend().get_texts()} == {
        "the paper's value (COCO-Stuff-27)",
        *(METHOD_NAMES[m] for m in ("ce", "focal", "ib_focal")),
    }
    gains = gains_over(_runs_with_draws({"ce": 0.0, "focal": 10.0, "ib_focal": 10.0}, noise=0.5))
    fig = plots.gains_over_baseline(gains, METHOD_NAMES)
    fig.canvas.draw()
    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [METHOD_NAMES["focal"], METHOD_NAMES["ib_focal"]]
    assert legend.get_window_extent().y1 <= min(ax.get_window_extent().y0 for ax in fig.axes)


def _runs_with_draws(shift: dict[str, float], noise: float, seeds=(0, 1), draws: int = 6, classes=COARSE_NAMES):
    """Each method's metrics.json per seed, with per-class IoU kept draw by draw: the method's ``shift`` plus a
    noise of its own per draw and per seed; the same k-means seeds for every method of a seed."""
    rng = np.random.default_rng(0)
    runs = {}
    for method, gain in shift.items():
        runs[method] = []
        for seed in seeds:
            base = np.full((draws, len(classes)), 30.0 + seed) + rng.normal(0, noise, (draws, len(classes)))
            iou = base + gain
            rows = [{"class": n, "kind": "thing" if c < 12 else "stuff", "iou_subset": float(iou[:, c].mean())}
                    for c, n in enumerate(classes)]  # fmt: skip
            spread = {"seeds": [seed * draws + i for i in range(draws)]}
            runs[method].append(
                {"per_class": rows, "per_class_draws": {"iou_subset": iou.tolist()}, "eval_spread": spread}
            )
    return runs


def test_per_class_gains_carry_both_noises_and_the_reading_names_only_gains_beyond_them():
    gains = gains_over(_runs_with_draws({"ce": 0.0, "focal": 10.0, "ib_focal": 0.0}, noise=0.5))
    focal = {r["class"]: r for r in gains["focal"]}
    person = next(c for c in COARSE_NAMES if c.startswith("person"))
    assert focal[person]["beyond_noise"] and focal[person]["difference"] == pytest.approx(10.0, abs=1.0)
    assert focal[person]["eval_se"] > 0 and focal[person]["noise"] == max(focal[person]["se"], focal[person]["eval_se"])
    text = readings.gains(gains)
    assert "Method 1: Focal changes beyond the noise on " in text and "and 23 more" in text
    assert "Method 2: IB-Focal changes no class beyond the noise (the largest, " in text
    fig = plots.gains_over_baseline(gains, METHOD_NAMES)
    whiskers = [line for ax in fig.axes for line in ax.lines if len(line.get_xdata()) and line.get_linestyle() == "-"]
    assert whiskers  # every bar carries its noise
    quiet = gains_over(_runs_with_draws({"ce": 0.0, "focal": 0.0}, noise=3.0, seeds=(0, 1, 2), draws=24))
    assert "changes no class beyond the noise" in readings.gains(quiet) and "beyond the noise on" not in readings.gains(
        quiet
    )


def test_readings_name_the_best_and_worst_classes_and_skip_absent_ones():
    rows = [
        {"class": "a", "kind": "thing", "pixels": 10, "iou_all": 50.0, "effective_clusters": 1.0},
        {"class": "b", "kind": "stuff", "pixels": 10, "iou_all": 20.0, "effective_clusters": 3.0},
        {"class": "c", "kind": "stuff", "pixels": 0, "iou_all": float("nan"), "effective_clusters": float("nan")},
        {"class": "d", "kind": "stuff", "pixels": 10, "iou_all": 0.0, "effective_clusters": 2.0},
    ]
    text = readings.per_class_iou(rows, "CE")
    assert text.startswith("CE: highest IoU a (50), b (20) and d (0). Things")  # three classes: no bottom three
    assert "Things average 50.0, stuff 10.0; 1 class(es) at 0" in text and "nan" not in text
    confusion = np.array([[8, 2, 0], [1, 1, 8], [0, 0, 0]])
    text = readings.confusion(confusion, ["a", "b", "c"], [0, 1, -1], "CE")
    assert "are a (80%) and b (10%)" in text and "1 cluster(s) are matched to no class" in text
    assert "scattered" not in text  # the same classes are never listed at both ends
    ranked = [dict(rows[0], **{"class": f"k{i}", "iou_all": float(i)}) for i in range(8)]
    assert "highest IoU k7 (7), k6 (6) and k5 (5); lowest k0 (0), k1 (1) and k2 (2)" in readings.per_class_iou(
        ranked, "CE"
    )
    assert readings.per_class_iou([rows[2]], "CE").startswith("CE: highest IoU none")  # nothing scored: no crash


def _rows(values: dict[str, tuple[float, ...]], seeds=(0,), shift: tuple[float, ...] = (0.0, 0.0, 0.0)) -> list[dict]:
    """One row per method and seed: ``values`` plus, for the methods other than CE, ``shift[i]`` on seed i
    (so the paired differences from CE are the table's plus the shifts)."""
    return [
        {
            "loss": m,
            "seed": s,
            **dict(zip(COLUMNS, np.asarray(v) + (0.0 if m == "ce" else shift[i]), strict=True)),
            **dict.fromkeys(GLOBAL_COLUMNS, 0.0),
        }
        for i, s in enumerate(seeds)
        for m, v in values.items()
    ]


def _oversegmentation_files(tmp_path, seeds, thing=4.0, stuff=2.0):
    for seed in seeds:
        path = tmp_path / f"ce-seed{seed}" / "metrics.json"
        path.parent.mkdir(exist_ok=True)
        groups = {
            "thing": {"effective_clusters": thing + seed, "fragments_per_object": thing},
            "stuff": {"effective_clusters": stuff + seed, "fragments_per_object": stuff},
        }
        path.write_text(json.dumps({"oversegmentation": groups}))


def _verdicts(parts):
    return {p["claim"]: p["holds"] for p in parts}


def test_the_paper_claims_hold_on_the_paper_numbers_and_fail_on_reversed_ones(tmp_path):
    seeds = (0, 1, 2)
    _oversegmentation_files(tmp_path, seeds)
    parts = paper_claims(_rows(PAPER_TABLE, seeds, shift=(0.3, -0.3, 0.1)), tmp_path)
    assert set(_verdicts(parts).values()) == {"yes"}
    first = parts[0]
    assert (first["metric"], first["paper_method"], first["paper_picie_h"]) == ("Acc Thing", 77.17, 69.39)
    assert first["paper_plain_picie"] is None and first["paper_holds_vs_plain_picie"] == "not published"
    ib_all = next(p for p in parts if p["claim"].startswith("IB-Focal") and p["metric"] == "Acc All")
    assert ib_all["paper_plain_picie"] == 48.09 and ib_all["paper_holds_vs_plain_picie"] == "yes"
    # ours: the mean paired difference, its standard error (scipy's sem) and the number of seeds
    mine = np.array([77.17 + 0.3, 77.17 - 0.3, 77.17 + 0.1])
    ce = np.full(3, 69.39)
    assert first["difference"] == pytest.approx((mine - ce).mean())
    assert first["se"] == pytest.approx(scipy.stats.sem(mine - ce))
    assert first["n_seeds"] == 3
    reversed_table = {"ce": PAPER_TABLE["focal"], "focal": PAPER_TABLE["ce"], "ib_focal": PAPER_TABLE["ce"]}
    verdicts = _verdicts(paper_claims(_rows(reversed_table, seeds, shift=(0.3, -0.3, 0.1)), tmp_path))
    assert [verdicts[claim] for claim, _ in CLAIMS] == ["no", "no", "no"]


def test_a_difference_smaller_than_two_standard_errors_is_within_noise_and_one_seed_is_not_judged(tmp_path):
    _oversegmentation_files(tmp_path, (0, 1, 2))
    close = {"ce": PAPER_TABLE["ce"], "focal": PAPER_TABLE["ce"], "ib_focal": PAPER_TABLE["ce"]}
    verdicts = _verdicts(paper_claims(_rows(close, (0, 1, 2), shift=(3.0, -2.0, 0.5)), tmp_path))
    assert [verdicts[claim] for claim, _ in CLAIMS] == ["within noise"] * 3
    one_seed = paper_claims(_rows(PAPER_TABLE, (0,)), tmp_path)
    assert set(_verdicts(one_seed).values()) == {"one seed"}
    json.dumps(one_seed, allow_nan=False)  # strict JSON: a missing standard error is null, not NaN
    assert one_seed[0]["se"] is None and one_seed[0]["difference"] == pytest.approx(77.17 - 69.39)
    # the rule itself, at its edges
    assert verdict(2.0, 1.0, 3, +1) == "yes" and verdict(1.9, 1.0, 3, +1) == "within noise"
    assert verdict(-2.0, 1.0, 3, +1) == "no" and verdict(-2.0, 1.0, 3, -1) == "yes"
    assert verdict(0.0, 0.0, 3, +1) == "within noise" and verdict(0.5, 0.0, 2, +1) == "yes"
    assert paired_difference({0: 3.0, 1: 5.0, 7: 1.0}, {0: 1.0, 1: 2.0}) == pytest.approx((2.5, 0.5, 2))


@pytest.mark.parametrize("k,t", [(27, 1.0), (27, 0.1), (5, 2.0)])
def test_cosine_logit_bounds_match_a_softmax(k, t):
    top = torch.tensor([1.0 / t])
    opposite = torch.cat([top, torch.full((k - 1,), -1.0 / t)]).softmax(0)[0]
    orthogonal = torch.cat([top, torch.zeros(k - 1)]).softmax(0)[0]
    assert cosine_logit_max_probability(k, t) == pytest.approx(float(opposite), rel=1e-6)
    assert cosine_logit_max_probability(k, t, "orthogonal") == pytest.approx(float(orthogonal), rel=1e-6)
    # no unit-norm feature and centroids do better than the bound
    torch.manual_seed(k)
    f = torch.nn.functional.normalize(torch.randn(1000, 8), dim=1)
    c = torch.nn.functional.normalize(torch.randn(k, 8), dim=1)
    assert (f @ c.T / t).softmax(1).max() <= cosine_logit_max_probability(k, t) + 1e-6


def test_class_pixel_counts_against_the_label_maps():
    scenes = SyntheticScenes(6, 32, seed=2, split="train", mode="eval", res=32)
    counts, shares = class_pixel_counts(scenes, max_images=5)
    labels = np.stack([scenes[i][2].numpy() for i in range(5)])
    assert np.array_equal(counts, [(labels == c).sum() for c in range(27)])
    stuff = np.isin(labels, scenes.stuff_classes)
    expected = stuff.sum((1, 2)) / (labels >= 0).sum((1, 2))
    assert np.allclose(shares, expected)


def test_takeaways_say_what_happened_not_what_should_have():
    from picie_lib import takeaways

    log = [{"epoch": e, "phase": p, "loss": 3.0 - 0.1 * e, "empty_clusters": [0, 1]} for e, p in
           ((1, "ce"), (2, "ce"), (3, "ib_focal"), (4, "ib_focal"))]  # fmt: skip
    fixed = {"epochs": 4, "switch_epoch": 3, "ce_min_epoch": None, "seconds_per_pass": {"train": 60.0}}
    assert "after 2 CE epochs (a fixed switch)" in takeaways.training(log, fixed)
    minimum = {**fixed, "ce_min_epoch": 2}
    falling = takeaways.training(log, minimum)  # no epoch discarded: the loss still fell, the cap switched
    assert "forced by the cap (half the epochs): the CE loss was still falling at epoch 2" in falling
    rose = [log[0], log[1], {**log[1], "epoch": 3, "discarded": True}, *log[2:]]
    assert "after the CE minimum at epoch 2." in takeaways.training(rose, minimum)
    assert "cap" not in takeaways.training(rose, minimum)
    assert "At most 1 empty cluster in an epoch's k-means." in falling
    none_empty = [{**r, "empty_clusters": [0, 0]} for r in log]
    assert "No epoch's k-means left a cluster empty." in takeaways.training(none_empty, fixed)
    assert "At most 0" not in takeaways.training(none_empty, fixed)
    assert "3 empty clusters" in takeaways.training([{**r, "empty_clusters": [3, 1]} for r in log], fixed)
    never = {**fixed, "switch_epoch": 5}
    assert "IB-Focal never ran" in takeaways.training(log[:2], never)
    assert takeaways.training([], fixed) == "- No epoch finished yet."
    worse = {"before": {"same": 0.6, "mirrored": 0.3}, "trained": {"same": 0.5, "mirrored": 0.4}}
    assert "did not widen the gap (0.30 before, 0.10 after)" in takeaways.views(worse, np.array([[0, 0, 0.5]]))
    assert "training did not widen it" in readings.equivariance(worse)
    claims = [{"claim": "c", "metric": "Acc All", "difference": None, "se": None, "holds": "no data", "n_seeds": 0}]
    claims[0] |= {"against": "ce", "part_verdict": "no data"}
    assert "**c**: not judged (no data) (difference from PiCIE: Acc All -: no data)" in takeaways.conclusion(
        [{"loss": "ce", "seed": 0, "acc_all": 50.0, "miou_all": 20.0}], claims
    )
