"""Method 2's own phase in the report: the draws' paired differences against numpy, the at-switch rows, the IB
phase's claim and its sentence, each flipped by numbers that should flip it."""

import math

import numpy as np
import pytest

from picie_lib.claims import IB_PHASE_CLAIM, claims_markdown, paper_claims
from picie_lib.eval_seeds import paired_effect
from picie_lib.ib_phase import at_switch_row, class_effects, ib_effect, ib_phase_markdown, ib_phase_sentence
from picie_lib.runs import write_json

CLASSES = [("person", "thing"), ("sky", "stuff"), ("wall", "stuff")]


def _evaluation(acc_draws, iou_draws):
    """What ``over_eval_seeds`` returns, reduced to what the IB phase reads: every score's draws, per-class IoU."""
    acc = np.asarray(acc_draws, dtype=float)
    iou = np.asarray(iou_draws, dtype=float)  # (draws, classes)
    spread = {"seeds": list(range(len(acc)))}
    for key in ("acc_all", "miou_all", "acc_thing", "miou_thing", "acc_stuff", "miou_stuff"):
        values = acc if key == "acc_all" else acc / 2
        std = float(values.std(ddof=1))
        spread[key] = {"values": values.tolist(), "mean": values.mean(), "std": std, "se": std / math.sqrt(len(values))}
    return {
        "scores": {k: float(np.mean(v["values"])) for k, v in spread.items() if k != "seeds"},
        "eval_spread": spread,
        "per_class": [{"class": c, "kind": k, "iou_all": float(iou[:, i].mean())} for i, (c, k) in enumerate(CLASSES)],
        "per_class_draws": {"iou_all": iou.tolist(), "iou_subset": iou.tolist()},
    }


def test_the_paired_effect_is_the_mean_of_the_draws_differences_and_their_standard_error():
    rng = np.random.default_rng(0)
    start = rng.normal(50, 2, 6)
    final = start + 1.0 + rng.normal(0, 0.3, 6)  # the same draws: the shared noise cancels
    iou_start, iou_final = rng.normal(30, 3, (6, 3)), rng.normal(31, 3, (6, 3))
    iou_final[2, 1] = np.nan  # a class one draw's matching left out
    effect = paired_effect(_evaluation(final, iou_final), _evaluation(start, iou_start))
    assert effect["draws"] == 6
    assert effect["scores"]["acc_all"]["difference"] == pytest.approx(np.mean(final - start))
    assert effect["scores"]["acc_all"]["se"] == pytest.approx(np.std(final - start, ddof=1) / math.sqrt(6))
    assert effect["scores"]["acc_all"]["se"] < np.std(final, ddof=1) / math.sqrt(6)  # pairing removes the shared part
    kept = (iou_final - iou_start)[:, 1][~np.isnan(iou_final[:, 1])]
    assert effect["per_class"]["iou_all"][1]["difference"] == pytest.approx(kept.mean())
    assert effect["per_class"]["iou_all"][1]["se"] == pytest.approx(np.std(kept, ddof=1) / math.sqrt(5))
    with pytest.raises(ValueError, match="the same"):
        paired_effect(_evaluation(final, iou_final), _evaluation(start[:5], iou_start[:5]))


def _write_run(folder, seed, start, final, iou_start, iou_final):
    """An IB-Focal run's metrics.json as ``evaluate_run`` writes it (the parts the report reads)."""
    after, before = _evaluation(final, iou_final), _evaluation(start, iou_start)
    effect = paired_effect(after, before)
    effect["per_class"] = [
        {"class": c, "kind": k, **{key: effect["per_class"][key][i] for key in effect["per_class"]}}
        for i, (c, k) in enumerate(CLASSES)
    ]
    at = {"checkpoint": {"file": "switch.pt", "epoch": 3, "weights_sha256": "x"}, **before}
    metrics = {"method": "ib_focal", "seed": seed, **after, "at_switch": at, "ib_phase_effect": effect}
    write_json(folder / f"ib_focal-seed{seed}" / "metrics.json", metrics)
    return metrics


def _comparison(tmp_path, shift, noise=0.2, class_shift=(0.0, 0.0, 0.0), seeds=(0, 1, 2), ratio=1.0):
    """Rows and run folders of a comparison whose IB phase adds ``shift`` to All Acc (and half to the rest) and
    ``class_shift`` to the classes' IoU, each draw with ``noise`` of its own."""
    rng = np.random.default_rng(1)
    rows = []
    for seed in seeds:
        start = rng.normal(50, 2, 8)
        final = start + shift + rng.normal(0, noise, 8)
        iou = rng.normal(30, 2, (8, 3))
        _write_run(tmp_path, seed, start, final, iou, iou + np.asarray(class_shift) + rng.normal(0, noise, (8, 3)))
        rows.append(at_switch_row(tmp_path / f"ib_focal-seed{seed}", seed))
        rows.append({"loss": "ib_focal", "seed": seed, "moved_ratio": ratio, **_evaluation(final, iou)["scores"]})
    return rows


def test_the_at_switch_row_carries_the_switchs_scores_and_the_paired_noise(tmp_path):
    rows = _comparison(tmp_path, shift=1.0, seeds=(0,))
    at, ib = rows
    assert at["loss"] == "ib_focal_at_switch" and at["switch_weights_epoch"] == 3 and at["eval_seeds"] == 8
    assert ib["acc_all"] - at["acc_all"] == pytest.approx(1.0, abs=0.3)
    assert 0 < at["paired_eval_se_acc_all"] < at["eval_se_acc_all"]  # the pairing's gain
    write_json(tmp_path / "plain" / "metrics.json", {"method": "ib_focal", "scores": {}})
    assert at_switch_row(tmp_path / "plain", 0) is None  # scored without the switch's weights


def test_the_ib_phase_claim_and_sentence_follow_the_numbers(tmp_path):
    rows = _comparison(tmp_path / "up", shift=3.0)
    assert ib_effect(rows, "acc_all")["verdict"] == "yes"
    text = ib_phase_sentence(rows, class_effects(tmp_path / "up", [0, 1, 2]))
    assert "1.00 times as far as a CE epoch" in text and "barely" not in text and "All Acc +2.98 ± 0.02" in text
    assert ": holds" in text and "no class's IoU changed beyond the noise" in text
    claim = [p for p in paper_claims(rows, tmp_path / "up") if p["claim"] == IB_PHASE_CLAIM]
    assert [p["part_verdict"] for p in claim] == ["yes", "yes"] and claim[0]["holds"] == "yes"

    rows = _comparison(tmp_path / "down", shift=-3.0, ratio=0.03)
    assert ib_effect(rows, "acc_all")["verdict"] == "no"
    text = ib_phase_sentence(rows, class_effects(tmp_path / "down", [0, 1, 2]))
    assert "barely trained: an IB epoch moved the weights 0.03 times" in text and ": fails" in text

    rows = _comparison(tmp_path / "flat", shift=0.0, noise=2.0)  # nothing beyond the draws' own noise
    verdicts = {ib_effect(rows, c)["verdict"] for c in ("acc_all", "miou_all")}
    assert verdicts <= {"within evaluation noise", "within noise"}
    assert "holds" not in ib_phase_sentence(rows, [])


def test_the_classes_named_are_those_beyond_both_noises(tmp_path):
    rows = _comparison(tmp_path, shift=0.0, class_shift=(6.0, 0.0, -0.05))
    classes = {c["class"]: c for c in class_effects(tmp_path, [0, 1, 2])}
    assert classes["person"]["beyond_noise"] and not classes["wall"]["beyond_noise"]
    assert classes["person"]["difference"] == pytest.approx(6.0, abs=0.3) and classes["person"]["seeds"] == 3
    text = ib_phase_sentence(rows, list(classes.values()))
    assert "the IoU of person +5.9 changed beyond the noise" in text and "wall" not in text
    section = ib_phase_markdown(rows, tmp_path)
    assert "| person | thing | +5.9" in section and section.count("| yes |") == 1


def test_each_part_of_a_claim_shows_its_own_verdict_beside_its_number(tmp_path):
    """07's contradiction: a claim "within the evaluation's noise" beside a part two standard errors out. Each part
    now carries its own verdict, and the rule that combines them is stated."""
    parts = [
        {"claim": "Focal helps things", "metric": "Acc Thing", "against": "ce", "ours_method": 38.0, "ours_ce": 37.1,
         "difference": 0.92, "se": 0.2, "eval_se": 0.34, "n_seeds": 3, "part_verdict": "yes",
         "holds": "within evaluation noise", "paper_method": 77.17, "paper_picie_h": 69.39, "paper_plain_picie": None},
        {"claim": "Focal helps things", "metric": "mIoU Thing", "against": "ce", "ours_method": 20.0, "ours_ce": 19.9,
         "difference": 0.1, "se": 0.2, "eval_se": 0.3, "n_seeds": 3, "part_verdict": "within evaluation noise",
         "holds": "within evaluation noise", "paper_method": 33.68, "paper_picie_h": 23.83, "paper_plain_picie": None},
    ]  # fmt: skip
    text = claims_markdown(parts)
    assert "Acc Thing 38.00 vs 37.10, +0.92 ± 0.20 (3), evaluation ± 0.34: holds" in text
    assert "mIoU Thing 20.00 vs 19.90, +0.10 ± 0.20 (3), evaluation ± 0.30: within evaluation noise" in text
    assert "holds when every part holds" in text
