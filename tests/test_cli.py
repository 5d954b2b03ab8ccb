"""The command line, end to end on the smoke preset, as a user runs it."""

import json

import numpy as np
import pytest
from commands import picie

from picie_lib.cli import main

# slow: starts processes or trains, not in the unit tier (pytest -m 'not slow')
pytestmark = pytest.mark.slow

KEYS = {"loss", "seed", "acc_all", "miou_all", "acc_thing", "miou_thing", "acc_stuff", "miou_stuff"}


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "smoke"
    proc = picie("compare", "--preset", "smoke", "--out", str(out), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_compare_writes_table_2_and_its_rows(compared):
    out, proc = compared
    rows = json.loads((out / "results.json").read_text())
    methods = {"rgb_kmeans", "untrained", "ce", "focal", "ib_focal", "linear_probe"}
    assert {r["loss"] for r in rows} == methods | {"ib_focal_at_switch"}  # IB-Focal's weights at its switch too
    assert all(KEYS <= set(r) for r in rows)
    assert all(r["seed"] == 0 for r in rows)
    header = (out / "results.csv").read_text().splitlines()[0].split(",")
    assert KEYS <= set(header)
    table = (out / "results.md").read_text()
    assert "49.99" in table and "Method 2: IB-Focal, ours" in table and "global protocol" in table
    assert "PiCIE without +H (Cho et al. 2021) | 48.09 | 13.84 |  |  |  |  |" in table  # no cited Thing / Stuff
    assert "as PiCIE's code prints it" in table and "Each method against PiCIE (CE)" in table
    assert (out / "results.png").stat().st_size > 1000 and (out / "protocols.png").stat().st_size > 1000
    epochs = {r["loss"]: r.get("epochs") for r in rows}
    assert (epochs["ce"], epochs["focal"], epochs["ib_focal"]) == (2, 3, 4)  # 10 : 15 : 20, scaled
    for method in ("ce", "focal", "ib_focal"):
        assert (out / f"{method}-seed0" / "checkpoint.pt").is_file()
        assert (out / f"{method}-seed0" / "metrics.json").is_file()
    assert "PiCIE, the paper's row (= PiCIE + H, Cho et al. 2021)" in proc.stdout


def test_compare_resume_keeps_every_finished_run_and_score(compared):
    out, _ = compared
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*-seed0/*") if p.suffix in (".pt", ".json", ".csv")}
    before = json.loads((out / "results.json").read_text())
    proc = picie("compare", "--preset", "smoke", "--out", str(out), "--resume", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    kept = {
        p: p.stat().st_mtime_ns for p in stamps if p.name not in ("summary.json", "config.json", "environment.json")
    }
    assert kept == {p: stamps[p] for p in kept}  # no checkpoint retrained, no score recomputed
    after = json.loads((out / "results.json").read_text())
    assert [{k: r[k] for k in KEYS} for r in after] == [{k: r[k] for k in KEYS} for r in before]
    other = picie("compare", "--preset", "smoke", "--out", str(out), "--resume", "-p", "lr=0.5", timeout=300)
    assert other.returncode == 2 and "another configuration (lr: saved 0.001, now 0.5)" in other.stderr


def test_train_and_evaluate_commands(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "smoke", "--loss", "focal", "--epochs", "1", "--out", str(out)]) == 0
    assert main(["evaluate", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "focal" and "acc_all" in metrics["scores"]
    assert (out / "per_class.csv").read_text().startswith("class,kind,pixels,iou_all")
    assert "acc_all=" in capsys.readouterr().out
    assert metrics["config"]["eval_seeds"] == 1 and metrics["eval_spread"]["seeds"] == [0]
    # the same weights under three k-means seeds: the spread recorded, the score their mean
    assert main(["evaluate", str(out), "--eval-seeds", "3", "--restarts", "2", "--init-batches", "3"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["config"]["eval_seeds"] == 3 and again["config"]["eval_kmeans_restarts"] == 2
    assert again["config"]["eval_kmeans_init_batches"] == 3
    assert again["eval_spread"]["seeds"] == [0, 1, 2] and len(again["eval_spread"]["acc_all"]["values"]) == 3
    assert np.mean(again["eval_spread"]["acc_all"]["values"]) == pytest.approx(again["scores"]["acc_all"])
    assert "the mean of 3 k-means seeds on these weights: one draw's All Acc spreads" in capsys.readouterr().out


def test_bad_input_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    assert main(["train", "--preset", "smoke", "--loss", "ce", "--out", str(tmp_path / "x"), "-p", "bogus=1"]) == 2
    assert "unknown key(s) bogus" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "nothing")]) == 2
    assert "no config.json" in capsys.readouterr().err and not (tmp_path / "nothing").exists()
    with pytest.raises(SystemExit):
        main(["train", "--preset", "smoke", "--loss", "dice", "--out", str(tmp_path / "y")])
