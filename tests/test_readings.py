"""The sentences under 04's figures, its Takeaways and the confusion readings: each qualitative word chosen by a
rule on the numbers, checked with numbers that flip it."""

import numpy as np
import pytest
import torch

from picie_lib import readings, takeaways
from picie_lib.config import load_preset
from picie_lib.losses import cross_entropy, ib_focal_loss


def _ratio_by_hand(cfg, p: float, h: float) -> float:
    """IB-Focal / CE for one pixel by the formula: (1 - p)^gamma alpha / (2 (1 - p) h + eps)."""
    return (1 - p) ** cfg.ib_gamma * cfg.ib_alpha / (2 * (1 - p) * h + cfg.ib_eps)


def test_the_ratio_of_ib_focal_to_ce_is_the_formulas():
    cfg = load_preset("demo")
    low, high = readings.ib_focal_over_ce(cfg)
    grid = [_ratio_by_hand(cfg, p, h) for p in (0.1, 0.5, 0.9) for h in np.linspace(1, np.sqrt(128), 60)]
    assert low == pytest.approx(min(grid), rel=1e-4) and high == pytest.approx(max(grid), rel=1e-4)
    logits, target = readings.two_class_logits(0.3), torch.tensor([0])
    assert float(torch.softmax(logits, 1)[0, 0]) == pytest.approx(0.3)
    feature = torch.full((1, 128), 2.0 / 128, dtype=torch.float64)
    ib = ib_focal_loss(logits, target, feature, alpha=cfg.ib_alpha, gamma=cfg.ib_gamma, eps=cfg.ib_eps)
    assert float(ib) / float(cross_entropy(logits, target)) == pytest.approx(_ratio_by_hand(cfg, 0.3, 2.0), rel=1e-5)


@pytest.mark.parametrize(
    ("alpha", "reading", "takeaway"),
    [
        (1000, "lies above CE (dashed) everywhere plotted, 4.4 to 450 times", "Adam's step does not grow"),
        (1, "lies below CE (dashed) everywhere plotted", "below CE everywhere plotted"),
        (10, "crosses CE (dashed)", "crossing it"),
    ],
)
def test_ib_focal_is_said_above_below_or_across_ce_as_its_ratio_lies(alpha, reading, takeaway):
    cfg = load_preset("demo", ib_alpha=alpha)
    assert reading in readings.loss_shapes(cfg)
    assert takeaway in takeaways.losses(cfg)
    contrary = {"above", "below", "crosses"} - {reading.split()[1]}
    assert not any(f"lies {w} CE" in readings.loss_shapes(cfg) for w in contrary if w != "crosses")
    assert ("hundreds" not in takeaways.losses(cfg)) and ("far above" not in readings.loss_shapes(cfg))
    assert "times smaller" not in takeaways.losses(cfg)  # the rate is kept at the switch (ib_lr_factor 1)
    if alpha == 1000:  # the IB authors' literal drop carried over to Adam: said to shrink every IB step
        assert "makes every IB step 100 times smaller" in takeaways.losses(cfg.replace(ib_lr_factor=0.01))


def test_focals_reach_is_never_a_degenerate_number():
    sharp, flat = load_preset("demo", temperature=0.1), load_preset("demo", temperature=1.0)
    text = takeaways.losses(sharp)
    assert "p_t = 0.9988" in text and "falls to 1.4e-06" in text and "1.00" not in text and "0.00" not in text
    assert "stays above 0.82" in takeaways.losses(flat) and "close to a rescaled CE" in takeaways.losses(flat)
    assert "p_t = 0.9988 (Focal factor 1.4e-06)" in readings.temperature(flat)
    assert readings.probability(0.5) == "0.50" and readings.probability(0.9988) == "0.9988"
    assert readings.probability(0.99996).startswith("0.99996") and float(readings.probability(0.999996)) < 1


def test_a_class_in_one_other_cluster_is_merged_and_one_spread_out_is_scattered():
    names = [f"c{i}" for i in range(7)]
    confusion = np.diag([100.0] * 7)
    confusion[5] = [0, 90, 0, 0, 0, 10, 0]  # c5: 90% in c1's cluster
    confusion[6] = [20, 20, 20, 20, 0, 0, 20]  # c6: 20% in its own, the rest spread evenly
    text = readings.confusion(confusion, names, list(range(7)), "CE")
    assert "c5 (10%; merged: 90% in c1's cluster)" in text
    assert "c6 (20%; scattered: no other cluster holds more than 20%)" in text
    confusion[6] = [0, 0, 80, 0, 0, 0, 20]  # now merged too
    assert "c6 (20%; merged: 80% in c2's cluster)" in readings.confusion(confusion, names, list(range(7)), "CE")


def test_the_over_segmentation_claim_is_labelled_things_minus_stuff_not_a_difference_from_picie():
    from picie_lib.claims import OVERSEGMENTATION_CLAIM

    row = [{"loss": "ce", "seed": 0, "acc_all": 50.0, "miou_all": 20.0}]
    part = {"metric": "clusters", "difference": 0.5, "se": None, "holds": "no data", "n_seeds": 1}
    part["part_verdict"] = "no data"
    over = {**part, "claim": OVERSEGMENTATION_CLAIM, "against": "things minus stuff"}
    text = takeaways.conclusion(row, [over, {**part, "claim": "Focal helps", "against": "ce"}])
    assert (
        f"**{OVERSEGMENTATION_CLAIM}**: not judged (no data) (things minus stuff in PiCIE's runs: clusters +0.50: "
        "no data)" in text
    )
    assert "**Focal helps**: not judged (no data) (difference from PiCIE: clusters +0.50: no data)" in text


def test_a_claims_sentence_shows_each_parts_verdict_and_the_rule_that_joins_them():
    """A claim "within the evaluation's noise" beside a part two standard errors out read as a contradiction:
    each part's verdict stands beside its number, and a claim of several parts says every part must hold."""
    row = [{"loss": "ce", "seed": 0, "acc_all": 50.0, "miou_all": 20.0}]
    base = {"claim": "Focal helps things", "against": "ce", "n_seeds": 3, "holds": "within evaluation noise"}
    thing_acc = {**base, "metric": "Acc Thing", "difference": 0.92, "se": 0.2, "eval_se": 0.34, "part_verdict": "yes"}
    thing_miou = {**base, "metric": "mIoU Thing", "difference": 0.1, "se": 0.2, "eval_se": 0.3}
    thing_miou["part_verdict"] = "within evaluation noise"
    text = takeaways.conclusion(row, [thing_acc, thing_miou])
    assert "Acc Thing +0.92 ± 0.20 (SE), evaluation ± 0.34: holds" in text
    assert "mIoU Thing +0.10 ± 0.20 (SE), evaluation ± 0.30: within evaluation noise" in text
    assert "every part must hold" in text
    one = takeaways.conclusion(row, [{**thing_acc, "holds": "yes"}])
    assert "**Focal helps things**: holds (difference from PiCIE" in one and "every part" not in one


def test_majority_vote_against_hungarian_is_said_by_the_accuracies_and_the_classes_named():
    confusion = np.array([[50, 40, 0], [10, 0, 30], [0, 0, 5]])  # clusters 0 and 1 both vote class 0
    vote = confusion.argmax(0)
    vote_acc = 100 * confusion.max(0).sum() / confusion.sum()
    from picie_lib.metrics import hungarian

    match = hungarian(confusion)
    match_acc = 100 * confusion[np.arange(3), match].sum() / confusion.sum()
    assert (vote_acc, match_acc, len(set(vote.tolist()))) == pytest.approx((100 * 120 / 135, 100 * 80 / 135, 2))
    text = readings.matching(vote_acc, match_acc, 2, 3)
    assert "names only 2 of the 3 classes present" in text and f"{vote_acc - match_acc:.1f} points" in text
    assert "score the same here (50.0% All Acc)" in readings.matching(50.0, 50.0, 3, 3)
    assert "every class gets a cluster" in readings.matching(60.0, 50.0, 3, 3)


def test_the_evaluation_noise_sentence_follows_what_the_score_averages():
    acc, miou = [57.6, 57.4, 54.2, 55.2], [35.4, 33.7, 30.6, 34.5]
    one = readings.evaluation_noise(acc, miou, "CE", draws_in_score=1)
    assert "All Acc spans 3.40 points (54.20 to 57.60)" in one and "The run's score is one such draw" in one
    averaged = readings.evaluation_noise(acc, miou, "CE", draws_in_score=4)
    se = np.std(acc, ddof=1) / 2
    assert f"standard error of {se:.2f} All Acc" in averaged and f"under about {2 * np.sqrt(2) * se:.2f}" in averaged
    assert "one such draw" not in averaged
    assert "no spread yet" in readings.evaluation_noise([57.6], [35.4], "CE", draws_in_score=1)


def test_the_optimizer_reading_says_which_step_grows_with_the_loss():
    from picie_lib.schedule import first_step_size

    scales = (1.0, 1000.0)
    sizes = {name: {s: first_step_size(name.lower(), s, lr=1e-3) for s in scales} for name in ("SGD", "Adam")}
    text = readings.optimizer_steps(sizes)
    assert "SGD's step grows 1,000 times when the loss is 1000 times larger" in text
    assert "Adam's step stays the same (1.00 times)" in text
    flipped = readings.optimizer_steps({"Adam": {1.0: 1.0, 10.0: 3.0}})
    assert "Adam's step grows 3 times when the loss is 10 times larger" in flipped and "stays the same" not in flipped


def test_the_training_reading_says_whether_the_second_phase_trains():
    log = [
        {
            "epoch": e,
            "phase": "ce",
            "loss": 2.5 - 0.1 * e,
            "kmeans_loss": [0.2, 0.2],
            "weights_moved": 0.012,
            "empty_clusters": [0, 0],
        }
        for e in (1, 2, 3)
    ]
    frozen = log + [
        {
            "epoch": e,
            "phase": "ib_focal",
            "loss": 80.0,
            "kmeans_loss": [0.2, 0.2],
            "weights_moved": 0.0003,
            "empty_clusters": [0, 0],
        }
        for e in (4, 5)
    ]
    text = readings.loss_curves(frozen)
    assert "1.2 % (CE), 0.03 % (IB-Focal): IB-Focal epochs 0.025 times as far as CE ones" in text
    assert "barely trains" in text
    moving = [{**r, "weights_moved": 0.006} if r["phase"] == "ib_focal" else r for r in frozen]
    assert "0.5 times as far" in readings.loss_curves(moving) and "barely" not in readings.loss_curves(moving)
    assert "An epoch moved the weights by 1.2 % (CE) (relative L2" in readings.loss_curves(log)
    summary = {"seconds_per_pass": {"train": 6.0}, "switch_epoch": 4, "ce_min_epoch": None, "epochs": 5}
    assert "barely trains" in takeaways.training(frozen, summary)
