"""Runs survive interruption and bad input, and lose nothing (docs/faults.md)."""

import json
import pickle
import signal
import subprocess
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from commands import ENV, command, picie
from layouts import write_cocostuff
from PIL import Image

from picie_lib.checkpoints import CHECKPOINT_FORMAT, load_checkpoint
from picie_lib.cli import main
from picie_lib.config import Config
from picie_lib.data.base import BadFile, BadFileWarning
from picie_lib.runs import read_jsonl
from picie_lib.scores import evaluate_run
from picie_lib.train import train

# slow: starts processes or trains, not in the unit tier (pytest -m 'not slow')
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
    pytest.mark.slow,
]
SMOKE = ["--preset", "smoke", "-p", "n_train=48"]  # epochs of a few seconds, to kill one midway


@pytest.mark.parametrize("loss", ["ce", "ib_focal"])  # ib_focal: the min_loss switch state and ce_min.pt resume too
def test_sigkill_mid_epoch_then_resume_gives_the_uninterrupted_metrics(tmp_path, loss):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    smoke = [*SMOKE, "--loss", loss]
    assert picie("train", *smoke, "--out", str(whole), timeout=600).returncode == 0
    assert picie("evaluate", str(whole), timeout=600).returncode == 0

    proc = subprocess.Popen(
        command("train", *smoke, "--out", str(killed)),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not (killed / "checkpoint.pt").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the checkpoint is renamed into place whole: once it is there, epoch 1 is done
    time.sleep(0.3)  # into epoch 2's passes
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert [r["epoch"] for r in read_jsonl(killed / "log.jsonl")] == [1], "the kill must land inside epoch 2"
    assert load_checkpoint(killed / "checkpoint.pt")["epoch"] == 1
    assert not list(killed.glob(".*.tmp"))  # no half-written file left behind by the atomic writes

    resumed = picie("train", *smoke, "--out", str(killed), "--resume", timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert picie("evaluate", str(killed), timeout=600).returncode == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (whole, killed))
    assert a["scores"] == b["scores"] and a["confusion"] == b["confusion"]
    wa, wb = load_checkpoint(whole / "checkpoint.pt")["model"], load_checkpoint(killed / "checkpoint.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert read_jsonl(killed / "log.jsonl") != [] and [
        {k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(killed / "log.jsonl")
    ] == [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(whole / "log.jsonl")]


def _smoke(**overrides) -> Config:
    from picie_lib.config import load_preset

    return load_preset("smoke", **overrides)


def test_the_checkpoint_holds_the_log_and_resume_restores_it(tmp_path):
    cfg = _smoke(loss="ce", epochs_ce=2)
    train(cfg, tmp_path)
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["format"] == CHECKPOINT_FORMAT and ckpt["history"] == read_jsonl(tmp_path / "log.jsonl")
    assert set(ckpt) >= {"model", "optimizer", "centroids", "schedule", "config", "epoch"}
    # a log damaged after the checkpoint (a line of an epoch that never finished, a line cut short)
    with open(tmp_path / "log.jsonl", "a") as fh:
        fh.write('{"epoch": 3, "phase": "ce", "loss": 1.0}\n{"epoch": 4, "lo')
    assert [r["epoch"] for r in read_jsonl(tmp_path / "log.jsonl")] == [1, 2, 3]  # the cut-short line is not read
    train(cfg, tmp_path, resume=True)  # nothing left to train: the log is rebuilt from the checkpoint
    assert read_jsonl(tmp_path / "log.jsonl") == ckpt["history"]
    (tmp_path / "log.jsonl").unlink()
    train(cfg, tmp_path, resume=True)
    assert read_jsonl(tmp_path / "log.jsonl") == ckpt["history"]


class Payload:
    """An arbitrary object: what a malicious checkpoint would carry."""

    def __reduce__(self):
        return (print, ("this must never run",))


def test_checkpoints_never_unpickle_objects_and_bad_ones_are_named(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": Payload()}, evil)
    with pytest.raises(ValueError, match="evil.pt: refused, it holds objects other than tensors"):
        load_checkpoint(evil)
    assert "this must never run" not in capsys.readouterr().out
    good = tmp_path / "good.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": {"w": torch.ones(1000)}}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ValueError, match="cut.pt: unreadable, truncated"):
        load_checkpoint(cut)
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a picie_lib checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_bad_file_survives_a_worker_process():
    original = BadFile("a/b.jpg", "unreadable", "a JPEG")
    err = pickle.loads(pickle.dumps(original))
    assert (err.path, err.problem, err.expected) == ("a/b.jpg", "unreadable", "a JPEG")
    assert str(err) == str(original) == "a/b.jpg: unreadable; expected a JPEG"


@pytest.fixture
def coco_with_bad_files(tmp_path):
    layout = write_cocostuff(tmp_path / "coco")
    root = layout.root
    train_ids, val_ids = layout.ids["train2017"], layout.ids["val2017"]
    corrupt = root / "images" / "train2017" / f"{train_ids[1]}.jpg"
    corrupt.write_bytes(corrupt.read_bytes()[:1500])  # truncated
    bad_values = root / "annotations" / "val2017" / f"{val_ids[1]}.png"
    Image.fromarray(np.full((500, 375), 200, np.uint8)).save(bad_values)  # 200 is no COCO-Stuff id
    wrong_size = root / "annotations" / "val2017" / f"{val_ids[3]}.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(wrong_size)
    cfg = Config(
        dataset="cocostuff27", data_root=str(root), curated=False, res=64, base_res=96, n_clusters=6,
        batch_size_train=2, batch_size_cluster=3, eval_batch_size=2, kmeans_init_batches=1, kmeans_iters=5,
        epochs_ce=2, lr=1e-3, balance="none", device="cpu",
    )  # fmt: skip
    return cfg, corrupt, bad_values, wrong_size


@pytest.mark.parametrize("workers", [0, 1])
def test_bad_files_are_skipped_with_a_warning_and_counted(tmp_path, coco_with_bad_files, workers):
    cfg, corrupt, bad_values, wrong_size = coco_with_bad_files
    cfg = cfg.replace(num_workers=workers)
    with pytest.warns(BadFileWarning, match=rf"1 bad file\(s\) were left out of training.*{corrupt.name}"):
        summary = train(cfg, tmp_path / "run")
    assert summary["skipped_files"] == [str(corrupt)]
    assert all(r["skipped_files"] == [str(corrupt)] for r in read_jsonl(tmp_path / "run" / "log.jsonl"))
    with pytest.warns(BadFileWarning, match=r"3 bad file\(s\) left out of the evaluation"):
        result = evaluate_run(tmp_path / "run")
    assert result["skipped_files"] == [str(corrupt), str(bad_values), str(wrong_size)]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["skipped_files"] == result["skipped_files"]
    # the scores cover the two good val images exactly: their labelled pixels are the confusion's total
    from picie_lib.data import build_dataset

    val = build_dataset(cfg, "val", "eval")
    good = [0, 2]  # val images 1 and 3 have the bad label maps
    assert np.asarray(result["confusion"]).sum() == sum(int((val[i][2] >= 0).sum()) for i in good)


def test_a_data_set_with_no_usable_file_stops_with_a_clear_error(tmp_path, coco_with_bad_files):
    cfg = coco_with_bad_files[0]
    images = Path(cfg.data_root) / "images" / "train2017"
    for image in images.glob("*.jpg"):
        image.write_bytes(b"not a jpeg")
    with pytest.warns(BadFileWarning), pytest.raises(ValueError, match=r"no usable item among the 6 of CocoStuff27"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # it could never have run: nothing is left to refuse the next one


@pytest.mark.parametrize(
    "args, message",
    [
        (["-p", "bogus=1"], "unknown key(s) bogus"),
        (["-p", "gamma=two"], "gamma"),
        (["-p", "dataset=cocostuff27", "-p", "data_root=/nowhere"], "/nowhere"),
        (["--preset", "no_such_preset"], "no_such_preset"),
    ],
)
def test_what_stops_a_run_stops_it_before_anything_is_written(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    argv = ["train", "--preset", "smoke", "--loss", "ce", "--out", str(out), *args]
    if "--preset" in args:
        argv = ["train", "--loss", "ce", "--out", str(out), *args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_an_unknown_key_in_a_preset_file_is_named_with_the_file(tmp_path, capsys):
    preset = tmp_path / "mine.yaml"
    preset.write_text("epochs_ce: 2\nepoch_focal: 3  # a typo\n")
    assert main(["compare", "--preset", str(preset), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "mine.yaml" in err and "unknown key(s) epoch_focal" in err and not (tmp_path / "r").exists()


def test_a_wrong_loss_name_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["train", "--preset", "smoke", "--loss", "dice", "--out", str(tmp_path / "r")])
    assert "invalid choice: 'dice'" in capsys.readouterr().err
    assert main(["compare", "--preset", "smoke", "-p", "loss=dice", "--out", str(tmp_path / "r")]) == 2
    assert "-p loss=dice: expected one of ce, focal, ib_focal" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_checkpoint_of_another_configuration_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--preset", "smoke", "--loss", "ce", "--epochs", "1", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    argv = ["train", "--preset", "smoke", "--loss", "ce", "--epochs", "1", "--out", str(out), "--resume"]
    assert main([*argv, "-p", "lr=0.5"]) == 2
    assert "different configuration (lr: checkpoint 0.001, now 0.5)" in capsys.readouterr().err
    assert main(argv[:-1]) == 2  # without --resume: no silent overwrite either
    assert "--overwrite" in capsys.readouterr().err
    assert before == {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


def test_an_evaluation_of_another_configuration_is_recomputed_not_reused(tmp_path):
    from picie_lib.compare import result_row

    cfg = _smoke()
    first = result_row("rgb_kmeans", 0, cfg, tmp_path)
    metrics = tmp_path / "rgb_kmeans-seed0" / "metrics.json"
    saved = json.loads(metrics.read_text())
    saved["scores"]["acc_all"] = -1.0  # a marker: is this file read again?
    metrics.write_text(json.dumps(saved))
    assert result_row("rgb_kmeans", 0, cfg.replace(device="cpu"), tmp_path)["acc_all"] == -1.0  # same results: reused
    again = result_row("rgb_kmeans", 0, cfg.replace(n_clusters=5), tmp_path)
    assert again["acc_all"] != -1.0 and json.loads(metrics.read_text())["config"]["n_clusters"] == 5
    assert first["acc_all"] > 0


# ---- scores bound to the weights they score ----------------------------------------------------------
class _Stop(Exception):
    pass


def _stop_after_epoch(n):
    def on_epoch(record):
        if record["epoch"] == n:
            raise _Stop

    return on_epoch


def test_scores_name_the_weights_they_scored_and_training_on_removes_them(tmp_path):
    from picie_lib.compare import result_row
    from picie_lib.runs import weights_digest

    cfg, out = _smoke().replace(loss="ce", epochs_ce=2), tmp_path / "ce-seed0"
    with pytest.raises(_Stop):
        train(cfg, out, on_epoch=_stop_after_epoch(1))  # as a kill after epoch 1 leaves it
    with pytest.raises(ValueError, match="stopped after epoch 1 of 2.*--resume.*--force"):
        evaluate_run(out)
    assert not (out / "metrics.json").exists()
    early = evaluate_run(out, force=True)["checkpoint"]
    assert (early["epoch"], early["epochs"], early["finished"], early["phase"]) == (1, 2, False, "ce")
    (out / "figures").mkdir()
    (out / "figures" / "examples.png").write_bytes(b"drawn from epoch 1")
    train(cfg, out, resume=True)
    assert not (out / "metrics.json").exists() and not (out / "centroids.pt").exists()  # stale scores removed
    assert not (out / "figures" / "examples.png").exists()
    evaluate_run(out)
    saved = json.loads((out / "metrics.json").read_text())["checkpoint"]
    weights = load_checkpoint(out / "checkpoint.pt")["model"]
    assert saved["epoch"] == 2 and saved["finished"] and saved["weights_sha256"] == weights_digest(weights)
    assert saved["loss"] == read_jsonl(out / "log.jsonl")[-1]["loss"]
    # compare reads a score only while it matches the weights: a marker survives only if it is reused
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["scores"]["acc_all"] = -1.0
    (out / "metrics.json").write_text(json.dumps(metrics))
    assert result_row("ce", 0, cfg, tmp_path)["acc_all"] == -1.0
    metrics["checkpoint"]["weights_sha256"] = "0" * 64  # the weights changed since
    (out / "metrics.json").write_text(json.dumps(metrics))
    assert result_row("ce", 0, cfg, tmp_path)["acc_all"] > 0


def test_the_digest_tells_apart_weights_that_differ_in_one_value():
    from picie_lib.runs import weights_digest

    state = {"a": torch.zeros(3), "b": torch.ones(2, dtype=torch.bfloat16), "n": torch.tensor(0)}
    same = {k: v.clone() for k, v in reversed(state.items())}
    assert weights_digest(state) == weights_digest(same)  # content, not order or identity
    changed = {**state, "a": torch.tensor([0.0, 0.0, 1e-30])}
    assert weights_digest(changed) != weights_digest(state)
    assert weights_digest({**state, "a": torch.zeros(3, dtype=torch.float64)}) != weights_digest(state)


def test_evaluate_refuses_a_checkpoint_of_another_configuration(tmp_path, capsys):
    cfg = _smoke().replace(epochs_ce=1, epochs_focal=1)
    train(cfg.replace(loss="ce"), tmp_path / "ce")
    train(cfg.replace(loss="focal"), tmp_path / "focal")
    (tmp_path / "ce" / "checkpoint.pt").write_bytes((tmp_path / "focal" / "checkpoint.pt").read_bytes())
    assert main(["evaluate", str(tmp_path / "ce")]) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "loss: checkpoint 'focal', now 'ce'" in err and "--force" in err
    assert not (tmp_path / "ce" / "metrics.json").exists()


def test_resuming_with_another_torch_version_says_so(tmp_path):
    cfg, out = _smoke().replace(loss="ce", epochs_ce=2), tmp_path / "run"
    with pytest.raises(_Stop):
        train(cfg, out, on_epoch=_stop_after_epoch(1))
    (first,) = json.loads((out / "environment.json").read_text())
    first["versions"]["torch"], first["git_commit"] = "1.0.0", "0123abc"
    (out / "environment.json").write_text(json.dumps([first]))
    with pytest.warns(UserWarning, match=r"git commit 0123abc -> .*; torch 1.0.0 -> "):
        train(cfg, out, resume=True)
    sessions = json.loads((out / "environment.json").read_text())  # each session's versions are kept
    assert [s["versions"]["torch"] for s in sessions] == ["1.0.0", torch.__version__]
    assert sessions[1]["changed_since_last_session"][1] == f"torch 1.0.0 -> {torch.__version__}"
    with warnings.catch_warnings():  # a finished run that trains no more: no warning
        warnings.simplefilter("error")
        sessions[-1]["versions"]["torch"] = "2.0.0"
        (out / "environment.json").write_text(json.dumps(sessions))
        train(cfg, out, resume=True)
    assert len(json.loads((out / "environment.json").read_text())) == 3


# ---- one writer per output folder ---------------------------------------------------------------------
@contextmanager
def _held(folder: Path, command_line: str):
    """Another process holding ``folder`` (``run_folder.exclusive``) until the block ends."""
    code = (
        "import time\nfrom picie_lib.run_folder import exclusive\n"
        f"with exclusive({str(folder)!r}, {command_line!r}):\n    print('held', flush=True)\n    time.sleep(120)"
    )
    holder = subprocess.Popen([*command()[:1], "-c", code], stdout=subprocess.PIPE, text=True, env=ENV)
    try:
        assert holder.stdout.readline().strip() == "held"
        yield holder
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()


def test_a_second_job_on_a_held_folder_stops_at_once_and_touches_nothing(tmp_path, capsys):
    out = tmp_path / "held"
    out.mkdir()
    (out / "keep.txt").write_text("the other job's")
    with _held(out, "train --out held") as holder:
        for argv in (
            ["train", "--preset", "smoke", "--loss", "ce", "--out", str(out), "--overwrite"],
            ["compare", "--preset", "smoke", "--out", str(out), "--overwrite"],
            ["run", "--preset", "smoke", "--out", str(out), "--overwrite"],
        ):
            start = time.monotonic()
            assert main(argv) == 2, argv
            assert time.monotonic() - start < 10  # at once, without waiting for the holder
            err = capsys.readouterr().err
            assert f"{out} is in use by PID {holder.pid} (train --out held)" in err, (argv, err)
        assert (out / "keep.txt").read_text() == "the other job's"
        assert sorted(p.name for p in out.iterdir()) == [".lock", "keep.txt"]
    argv = ["train", "--preset", "smoke", "--loss", "ce", "--epochs", "1", "--out", str(out), "--overwrite"]
    assert main(argv) == 2  # the holder is gone, its lock with it; but keep.txt is no run's to replace
    assert "holds files no picie_lib run wrote" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "the other job's"
    (out / "keep.txt").unlink()
    assert main(argv) == 0
    with _held(out, "evaluate held") as holder:
        assert main(["evaluate", str(out)]) == 2
        assert f"in use by PID {holder.pid} (evaluate held)" in capsys.readouterr().err
    assert not (out / "metrics.json").exists()
