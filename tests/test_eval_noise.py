"""The evaluation's noise: scores over several k-means seeds, the verdicts that count it, the IB-Focal
phase's move after the switch, each sentence flipped by contrary numbers."""

import math

import numpy as np
import pytest
import torch

from picie_lib.claims import combined_verdict, evaluation_se, noise_markdown, verdict
from picie_lib.config import load_preset
from picie_lib.eval_seeds import eval_seed_list, over_eval_seeds, score_standard_error
from picie_lib.train import relative_change


def test_over_eval_seeds_scores_the_mean_of_the_draws_and_records_every_draw():
    cfg = load_preset("smoke").replace(seed=1, eval_seeds=3)
    assert eval_seed_list(cfg) == [3, 4, 5]  # training seed 1's own block of draws
    acc = {3: 50.0, 4: 53.0, 5: 47.5}
    miou = {3: 20.0, 4: math.nan, 5: 22.0}  # a score that was not a number for one seed is left out
    iou = {3: [10.0, math.nan], 4: [20.0, math.nan], 5: [60.0, 5.0]}  # class 1 matched in one draw only

    def fake(seed):
        return {
            "scores": {"acc_all": acc[seed], "miou_all": miou[seed]},
            "per_class": [{"class": f"c{c}", "cluster": seed, "iou_all": iou[seed][c]} for c in range(2)],
            "oversegmentation": {"thing": {"effective_clusters": float(seed)}},
            "confusion": [[seed]],
            "seconds": 1.5,
        }

    result = over_eval_seeds(fake, cfg)
    assert result["scores"]["acc_all"] == pytest.approx(np.mean([50, 53, 47.5]))  # the mean of the draws
    assert result["scores"]["miou_all"] == pytest.approx(21.0)  # the draws that are numbers
    assert [r["iou_all"] for r in result["per_class"]] == [pytest.approx(30.0), 5.0]
    assert [r["cluster"] for r in result["per_class"]] == [3, 3] and result["confusion"] == [[3]]  # the first draw's
    assert result["oversegmentation"]["thing"]["effective_clusters"] == pytest.approx(4.0)
    assert result["seconds"] == pytest.approx(4.5)
    spread = result["eval_spread"]
    assert spread["seeds"] == [3, 4, 5] and spread["acc_all"]["values"] == [50.0, 53.0, 47.5]
    assert spread["acc_all"]["mean"] == pytest.approx(result["scores"]["acc_all"])
    assert spread["acc_all"]["std"] == pytest.approx(np.std([50, 53, 47.5], ddof=1))
    assert spread["acc_all"]["se"] == pytest.approx(np.std([50, 53, 47.5], ddof=1) / math.sqrt(3))
    assert spread["acc_all"]["range"] == pytest.approx(5.5)
    assert spread["miou_all"]["std"] == pytest.approx(np.std([20, 22], ddof=1))
    assert spread["miou_all"]["se"] == pytest.approx(np.std([20, 22], ddof=1) / math.sqrt(2))


def test_training_seeds_never_share_a_kmeans_draw():
    cfg = load_preset("smoke").replace(eval_seeds=24)
    blocks = [set(eval_seed_list(cfg.replace(seed=s))) for s in range(6)]
    assert all(len(b) == 24 for b in blocks) and len(set().union(*blocks)) == 24 * len(blocks)
    assert eval_seed_list(cfg.replace(seed=7, eval_seeds=1)) == [7]  # one draw: the run's seed, PiCIE's protocol


def test_a_score_of_m_draws_is_as_noisy_as_one_draw_over_root_m():
    # many evaluations of fixed "weights" whose single draws scatter with std 2: the mean of 16 draws has std 0.5,
    # and the recorded standard error says so
    rng = np.random.default_rng(1)
    draws = dict(enumerate(rng.normal(50.0, 2.0, 16 * 400)))
    cfg = load_preset("smoke").replace(eval_seeds=16)
    results = [
        over_eval_seeds(lambda s: {"scores": {"acc_all": draws[s]}, "seconds": 0.0}, cfg.replace(seed=i))
        for i in range(400)
    ]
    scores = np.array([r["scores"]["acc_all"] for r in results])
    assert scores.std(ddof=1) == pytest.approx(0.5, rel=0.1)
    assert np.mean([r["eval_spread"]["acc_all"]["se"] for r in results]) == pytest.approx(0.5, rel=0.1)


def test_an_older_metrics_file_scored_its_first_draw_alone():
    old = {"acc_all": {"values": [50.0, 52.0], "std": 1.41}}  # written before scores averaged the draws
    assert score_standard_error(old, "acc_all") == 1.41
    new = {"acc_all": {"values": [50.0, 52.0], "std": 1.41, "se": 1.0}}
    assert score_standard_error(new, "acc_all") == 1.0 and score_standard_error(new, "miou_all") is None


def test_one_evaluation_seed_has_no_spread():
    result = over_eval_seeds(lambda s: {"scores": {"acc_all": 1.0}, "seconds": 1.0}, load_preset("smoke"))
    assert result["eval_spread"]["seeds"] == [0] and math.isnan(result["eval_spread"]["acc_all"]["std"])
    assert math.isnan(result["eval_spread"]["acc_all"]["se"]) and result["scores"]["acc_all"] == 1.0


def test_evaluation_standard_error_of_a_mean_paired_difference():
    a, b = {0: 1.0, 1: 2.0, 2: None}, {0: 0.5, 1: 1.0, 3: 4.0}
    # seeds 0 and 1 have both: sqrt(1 + .25 + 4 + 1) / 2
    assert evaluation_se(a, b) == pytest.approx(math.sqrt(6.25) / 2)
    assert math.isnan(evaluation_se({0: None}, {0: 1.0})) and math.isnan(evaluation_se({}, {}))
    # by simulation: the std of the mean of n differences of single draws
    rng = np.random.default_rng(0)
    draws = (rng.normal(0, 1.0, (20000, 3)) - rng.normal(0, 2.0, (20000, 3))).mean(1)
    assert evaluation_se({s: 1.0 for s in range(3)}, {s: 2.0 for s in range(3)}) == pytest.approx(draws.std(), rel=0.03)


def test_a_claim_holds_only_beyond_both_noises():
    # beyond the seeds' noise, but the k-means alone could make the difference
    assert verdict(3.0, 1.0, 3, +1, eval_se=1.6) == "within evaluation noise"
    assert verdict(3.0, 1.0, 3, +1, eval_se=1.4) == "yes"
    assert verdict(-3.0, 1.0, 3, +1, eval_se=1.4) == "no"
    assert verdict(3.0, 2.0, 3, +1, eval_se=0.1) == "within noise"
    assert verdict(3.0, math.nan, 1, +1, eval_se=2.0) == "within evaluation noise"  # even on one seed
    assert verdict(3.0, math.nan, 1, +1, eval_se=1.0) == "one seed"
    assert verdict(3.0, 1.0, 3, +1) == "yes"  # not measured: the seeds' noise alone
    assert combined_verdict(["yes", "within evaluation noise"]) == "within evaluation noise"
    assert combined_verdict(["no", "within evaluation noise"]) == "no"
    assert combined_verdict(["one seed", "within evaluation noise"]) == "within evaluation noise"


def _rows(ib_acc, ce_se, ib_se, switch_epoch=7, ce_epochs=6, moved=0.002):
    # each score the mean of 4 draws: one draw's std is twice the score's standard error
    def noise(se):
        return {"eval_se_acc_all": se, "eval_std_acc_all": None if se is None else 2 * se, "eval_seeds": 4}

    return [
        {"loss": "ce", "seed": 0, "acc_all": 57.0, "miou_all": 30.0, **noise(ce_se), "epochs": ce_epochs,
         "switch_epoch": None},
        {"loss": "ib_focal", "seed": 0, "acc_all": ib_acc, "miou_all": 30.0, **noise(ib_se),
         "epochs": 12, "switch_epoch": switch_epoch, "weights_moved_after_switch": moved},
    ]  # fmt: skip


def test_the_noise_table_sets_the_spreads_side_by_side():
    rows = _rows(56.0, 0.3, 0.4)
    rows += [dict(rows[0], seed=1, acc_all=59.0, eval_se_acc_all=0.5, eval_std_acc_all=1.0)]
    table = noise_markdown(rows)
    ce_line = next(line for line in table.splitlines() if line.startswith("| PiCIE (CE)"))
    # seeds' std, then one draw's std and the score's standard error, each averaged over the seeds
    assert f"| {np.std([57.0, 59.0], ddof=1):.2f} | 0.80 | 0.40 |" in ce_line and ce_line.endswith("| 4 |")


def test_relative_change_is_the_relative_l2_of_all_parameters():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert relative_change(model, before) == 0.0
    with torch.no_grad():
        model[0].weight.add_(0.1)
        model[1].running_mean.add_(5.0)  # a buffer, not a weight: not counted
    flat_before = torch.cat([before[k].flatten() for k, _ in model.named_parameters()])
    flat_now = torch.cat([p.detach().flatten() for p in model.parameters()])
    expected = float((flat_now - flat_before).norm() / flat_before.norm())
    assert relative_change(model, before) == pytest.approx(expected)


def test_the_training_summary_reads_as_phrases_without_inf_or_raw_dicts():
    from picie_lib.notebook import training_summary

    ce = {"loss": "ce", "seed": 0, "epochs": 6, "best_loss": math.inf, "ce_min_epoch": None, "switch_epoch": None,
          "seconds_per_pass": {"cluster": 12.4, "label": 5.0, "train": 42.6}, "skipped_files": []}  # fmt: skip
    shown = training_summary(ce)
    assert "inf" not in " ".join(shown.values()) and "{" not in " ".join(shown.values())
    assert shown["seconds per pass"] == "cluster 12 s, label 5 s, train 43 s (1.0 min)"
    assert "IB-Focal from epoch" not in shown and "CE minimum" not in shown and shown["files left out"] == "none"
    ib = {**ce, "loss": "ib_focal", "best_loss": 2.1234, "ce_min_epoch": 5, "switch_epoch": 6,
          "weights_moved_after_switch": 0.0021, "skipped_files": ["a.jpg"]}  # fmt: skip
    shown = training_summary(ib)
    assert shown["method"] == "IB-Focal" and shown["IB-Focal from epoch"] == "6"
    assert shown["CE minimum"] == "epoch 5, loss 2.12" and shown["weights moved after the switch"].startswith("0.21 %")
    assert shown["files left out"] == "1 (summary.json lists them)"
