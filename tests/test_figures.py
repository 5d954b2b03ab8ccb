"""What the notebooks draw and check: colours, feature projections, widgets, the paper's claims,
the cosine-logit bound, the pixel statistics. Each against an independent computation."""

import json

import numpy as np
import pytest
import scipy.stats
import torch

from picie_lib import plots
from picie_lib.compare import CLAIMS, COLUMNS, GLOBAL_COLUMNS, PAPER_TABLE, paired_difference, paper_claims, verdict
from picie_lib.data import SyntheticScenes
from picie_lib.explore import browse, failure_map
from picie_lib.losses import cosine_logit_max_probability
from picie_lib.metrics import class_pixel_counts


def test_colourise_gives_each_class_its_colour_and_ignore_black():
    label = np.array([[0, 1], [-1, 26]])
    colours = plots.colourise(label, 27)
    assert colours.shape == (2, 2, 3)
    assert np.array_equal(colours[1, 0], [0, 0, 0])
    assert len({tuple(c) for c in plots.class_colours(27)[:27]}) == 27
    image = np.full((2, 2, 3), 0.5)
    mixed = plots.overlay(image, label, 27, alpha=0.5)
    assert np.array_equal(mixed[1, 0], image[1, 0])  # ignored pixels keep the image
    assert np.allclose(mixed[0, 0], 0.5 * image[0, 0] + 0.5 * colours[0, 0])


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
    label = np.array([[3, 3, 1, -1]])
    pred = np.array([[3, 0, 3, 3]])
    colours = failure_map(pred, label, 3)
    assert colours[0, 0, 1] > 0.5 and colours[0, 1, 0] > 0.5 and colours[0, 2, 2] > 0.5  # green, red, blue
    assert np.allclose(colours[0, 3], 0.85)  # an ignored pixel is not a false positive


def test_the_widget_builds_and_redraws_without_a_frontend():
    pytest.importorskip("ipywidgets")
    scenes = SyntheticScenes(3, 32, seed=0, split="val", mode="eval", res=32)
    calls = []

    def predictor(images, size):
        calls.append((len(images), *size))
        return torch.zeros((len(images), *size), dtype=torch.int64)

    per_class = [{"iou_all": 12.5}] * scenes.n_classes
    box = browse(scenes, {"ce": predictor}, {"ce": per_class})
    slider, picker = box.children[0].children
    slider.value = 2
    picker.value = 5  # same image: its predictions are reused
    assert calls == [(1, 32, 32)] * 2
    calls.clear()
    box = browse(scenes, {"ce": predictor}, batch_size=3)  # the evaluation's batches: one call for all three
    box.children[0].children[0].value = 2
    assert calls == [(3, 32, 32)]


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
