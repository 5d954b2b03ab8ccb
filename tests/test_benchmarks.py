"""The benchmarks' arithmetic: what benchmarks/epoch.py says Table 2 would take, from a run's own numbers."""

import importlib
import sys

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
