"""The benchmarks' arithmetic: what benchmarks/epoch.py says Table 2 would take, from a run's own numbers."""

import importlib
import json
import sys

import numpy as np
import pytest

from picie_lib.notebook import NOTEBOOK_DIR

sys.path.insert(0, str(NOTEBOOK_DIR.parent / "benchmarks"))
epoch = importlib.import_module("epoch")


def _row(seconds: float, images: int) -> dict:
    return {"seconds": seconds, "images": images}


def test_table2_estimate_is_45_epochs_over_cocos_train_split_and_one_evaluation_per_method():
    results = {
        "cluster": {"e2e": _row(10, 100), "network": _row(1, 100)},
        "label": {"e2e": _row(5, 100), "network": _row(1, 100)},
        "train": {"e2e": _row(20, 100), "network": _row(2, 100)},
        "evaluate": {"e2e": _row(6, 120)},  # network alone not measured for evaluation: no network estimate
    }
    epochs = {"ce": 10, "focal": 15, "ib_focal": 20}
    hours = epoch.table2_hours(results, epochs)
    by_hand = (45 * 49_629 * (0.10 + 0.05 + 0.20) + 3 * (49_629 + 2_175) * 0.05) / 3600
    assert hours == {"e2e": pytest.approx(by_hand)}
    line = epoch.table2_line(hours, epochs)
    assert "(49,629 train / 2,175 val images; 10 + 15 + 20 epochs and one evaluation per method)" in line
    assert f"end to end {by_hand:.2f} h" in line and "network alone" not in line
    results["evaluate"]["network"] = _row(1, 120)
    assert set(epoch.table2_hours(results, epochs)) == {"e2e", "network"}
    assert epoch.table2_hours(results, {"ce": 10})["e2e"] < hours["e2e"]  # fewer epochs, fewer hours


eval_noise = importlib.import_module("eval_noise")
evaluate_parts = importlib.import_module("evaluate_parts")


def test_averaged_evaluations_are_what_evaluations_of_m_draws_on_disjoint_seeds_give():
    from picie_lib.config import load_preset
    from picie_lib.eval_seeds import over_eval_seeds

    draws = {s: float(v) for s, v in enumerate(np.random.default_rng(0).normal(50, 2, 12))}
    values = [draws[s] for s in range(12)]
    cfg = load_preset("smoke").replace(eval_seeds=4)
    scored = [
        over_eval_seeds(lambda s: {"scores": {"acc_all": draws[s]}, "seconds": 0.0}, cfg.replace(seed=i))
        for i in range(3)
    ]
    assert eval_noise.averaged_evaluations(values, 4, 3) == pytest.approx([r["scores"]["acc_all"] for r in scored])
    with pytest.raises(ValueError, match="12 draws: expected at least 5 x 3"):
        eval_noise.averaged_evaluations(values, 5, 3)


def test_the_variance_split_is_the_anova_estimate_and_recovers_known_parts():
    rng = np.random.default_rng(1)
    table = rng.normal(50, 2, (5, 4)) + rng.normal(0, 1, (5, 1))
    orders, starts = table.shape
    grand, row_means = table.mean(), table.mean(axis=1)
    ms_between = starts * sum((m - grand) ** 2 for m in row_means) / (orders - 1)
    ms_within = sum((x - row_means[o]) ** 2 for o in range(orders) for x in table[o]) / (orders * (starts - 1))
    split = eval_noise.variance_split(table)
    assert split["within"] == pytest.approx(np.sqrt(ms_within))
    assert split["between"] == pytest.approx(np.sqrt(max(0.0, (ms_between - ms_within) / starts)))
    assert split["total"] == pytest.approx(np.std(table, ddof=1))
    # known parts: order effects of std 0.5, starts of std 2
    big = rng.normal(0, 0.5, (400, 1)) + rng.normal(0, 2, (400, 30))
    split = eval_noise.variance_split(big)
    assert split["within"] == pytest.approx(2, rel=0.03) and split["between"] == pytest.approx(0.5, rel=0.15)
    no_order_effect = eval_noise.variance_split(np.tile(rng.normal(0, 1, 6), (5, 1)))  # every order alike
    assert no_order_effect["between"] == 0.0 and no_order_effect["within"] > 0.5
    # averaging: one order keeps its effect whole; one order per draw divides it by the draws
    assert eval_noise.mean_std(split, 24, 1) ** 2 == pytest.approx(split["between"] ** 2 + split["within"] ** 2 / 24)
    assert eval_noise.mean_std(split, 24, 24) == pytest.approx(split["total"] / np.sqrt(24), rel=0.05)
    with pytest.raises(ValueError, match="1 x 4: expected at least 2 orders"):
        eval_noise.variance_split(table[:1])


def test_the_speed_checks_table_gives_each_epochs_images_per_second(tmp_path):
    speed_results = importlib.import_module("speed_results")
    (tmp_path / "cli").mkdir()
    log = [{"epoch": 1, "seconds": {"cluster": 40.0, "label": 20.0, "train": 20.0}},
           {"epoch": 2, "seconds": {"cluster": 30.0, "label": 18.0, "train": 16.0}}]  # fmt: skip
    (tmp_path / "cli" / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    rows = speed_results.epoch_rows(tmp_path / "cli" / "log.jsonl", 8192)
    assert [r["images_per_s"] for r in rows] == pytest.approx([8192 / 80, 8192 / 64])
    text = speed_results.markdown(tmp_path, 8192)
    assert "| 1 | 40.0 | 20.0 | 20.0 | 102.4 |" in text and "| 2 | 30.0 | 18.0 | 16.0 | 128.0 |" in text
    assert "no results.md" in text  # the benchmark did not finish: said, not hidden
    assert "**The views on the device against per item on the CPU**\n\nnot measured" in text
    (tmp_path / "views.txt").write_text("view 1, 64 images: max 3\nview 2, 64 images: max 1\n")
    assert "- view 1, 64 images: max 3\n- view 2, 64 images: max 1" in speed_results.markdown(tmp_path, 8192)
    (tmp_path / "epoch").mkdir()
    (tmp_path / "epoch" / "results.md").write_text("| pass | end to end |\n")
    assert speed_results.markdown(tmp_path, 8192).endswith("| pass | end to end |")
    with (tmp_path / "cli" / "log.jsonl").open("a") as log_file:
        log_file.write('{"epoch": 3, "seco')  # a line cut off by a kill
    assert len(speed_results.epoch_rows(tmp_path / "cli" / "log.jsonl", 8192)) == 2
    assert "Exit codes: none recorded." in text
    (tmp_path / "exits.txt").write_text("data 0\ncommand 124\nbenchmark 0\n")
    assert "command 124 (ended by its timeout), benchmark 0" in speed_results.markdown(tmp_path, 8192)
    (tmp_path / "cli" / "log.jsonl").write_text("")
    assert "no epoch finished" in speed_results.markdown(tmp_path, 8192)


def test_the_evaluation_profile_names_every_part():
    from picie_lib.config import load_preset
    from picie_lib.picie import build_model

    cfg = load_preset("smoke").replace(num_workers=0)
    result = evaluate_parts.profile_evaluation(build_model(cfg, "cpu"), cfg)
    parts = result["parts"]
    assert set(parts) == set(evaluate_parts.PARTS)
    assert all(0 <= seconds <= result["seconds"] for seconds in parts.values())
    # the two update methods of metrics.py are told apart, and the network's share is found
    assert parts["network features"] > 0 and parts["fragments per object"] > 0 and parts["confusion matrix"] > 0
    assert parts["fragments per object"] != parts["confusion matrix"]
    assert parts["k-means fit"] > 0 and parts["matching and scores"] > 0
    row = evaluate_parts.fragments_side_by_side(24, 2)  # asserts that the two counts agree
    assert row["per_object_ms"] > 0 and row["pair_map_ms"] > 0


@pytest.mark.slow  # writes its JPEGs from a process pool
@pytest.mark.filterwarnings("ignore::picie_lib.data.base.BadFileWarning")  # the truncated JPEG, on purpose
def test_the_views_check_passes_when_both_ways_agree_and_fails_when_they_do_not(tmp_path, monkeypatch, capsys):
    """On the CPU both ways are the same functions: within the limits, the odd files' verdicts alike. A device
    whose views were flipped the wrong way must fail the check."""
    views_check = importlib.import_module("views_check")
    monkeypatch.setattr("sys.argv", ["views_check.py", str(tmp_path), "--n", "8", "--device", "cpu"])
    assert views_check.main() == 0
    out = capsys.readouterr().out
    assert "train: files left out" in out and "000000000003.jpg" in out and "the same" in out
    assert out.count("within the limits") == 4

    class Mirrored(views_check.Batches):  # the device's images mirrored: what a wrong flip would give
        def __iter__(self):
            for batch in super().__iter__():
                yield (batch[0], batch[1].flip(-1), *batch[2:]) if self.on_device else batch

    monkeypatch.setattr(views_check, "Batches", Mirrored)
    assert views_check.main() == 1
    assert "OUTSIDE the limits" in capsys.readouterr().out


def test_the_demo_data_path_reads_the_whole_set_and_makes_every_view(monkeypatch):
    """Times are not asserted (they are what it measures); what it times is: every item's views, made once per
    repeat, and the photometric ops on them when asked."""
    import torch

    from picie_lib import transforms
    from picie_lib.config import load_preset
    from picie_lib.data import SyntheticScenes
    from picie_lib.transforms import draw_view_params

    demo_data_path = importlib.import_module("demo_data_path")
    cfg = load_preset("demo").replace(num_workers=0, device="cpu", batch_size_cluster=5)
    dataset = SyntheticScenes(12, 48, mode="train", res=32)
    dataset.set_view_params(draw_view_params(len(dataset), cfg, torch.Generator().manual_seed(0)))
    augmented = []

    def counted(views, *args):
        augmented.append(len(views))
        return transforms.augment(views, *args)

    monkeypatch.setattr(demo_data_path, "augment", counted)
    assert demo_data_path.best_ms_per_image(dataset, cfg, photometric=False, repeats=2) > 0 and augmented == []
    assert demo_data_path.best_ms_per_image(dataset, cfg, photometric=True, repeats=2) > 0
    assert augmented == [5, 5, 2] * 2
