"""A run's folder is its own (docs/faults.md): ``--overwrite`` removes only what a
run wrote there (its manifest), no file is written through a symbolic link, a resume that would change the
result is refused, and what a run can be refused for is refused before its first byte."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from commands import picie

from picie_lib import run_folder, runs
from picie_lib.checkpoints import load_checkpoint
from picie_lib.cli import main
from picie_lib.config import load_preset
from picie_lib.run_folder import MANIFEST_NAME, clear_run, manifest_entries, new_run_dir, record_in_manifest
from picie_lib.train import train

# slow: starts processes or trains, not in the unit tier (pytest -m 'not slow')
pytestmark = pytest.mark.slow

ONE_EPOCH = ["train", "--preset", "smoke", "--loss", "ce", "--epochs", "1"]


def one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (links as their target's path) by its relative path; the lock file,
    which names its latest holder, aside."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.name == run_folder.LOCK_NAME:
            continue
        if path.is_symlink():
            out[str(path.relative_to(folder))] = os.readlink(path).encode()
        elif path.is_file():
            out[str(path.relative_to(folder))] = path.read_bytes()
    return out


# ---- 1. --overwrite removes what a run wrote, and nothing else ------------------------------------------------
def test_overwrite_refuses_a_folder_no_run_made_and_touches_none_of_it(tmp_path, capsys):
    clone = tmp_path / "clone"  # `run --out . --overwrite` inside a clone of the repository
    (clone / "notebooks").mkdir(parents=True)
    (clone / "notebooks" / "05_train.ipynb").write_text("{}")
    (clone / "README.md").write_text("readme")
    mine = tmp_path / "mine"  # a researcher's folder whose names look like a run's
    for name in ("exp-seed42", "my-seed-data", "figures"):
        (mine / name).mkdir(parents=True)
        (mine / name / "data.txt").write_text(name)
    for name in ("results.txt", "report.docx", "claims.xlsx", "timings.csv"):
        (mine / name).write_text(name)
    for folder in (clone, mine):
        before = tree(folder)
        for command in (["run", "--preset", "smoke"], ["compare", "--preset", "smoke"], list(ONE_EPOCH)):
            assert main([*command, "--out", str(folder), "--overwrite"]) == 2, command
            line = one_line(capsys.readouterr().err)
            assert line == (
                f"error: {folder} holds files no picie_lib run wrote (no {MANIFEST_NAME} there); --overwrite "
                "replaces only a folder a run made: choose a new --out, or move those files away yourself"
            )
            assert tree(folder) == before  # not even a lock file is left
            assert not (folder / ".lock").exists()


def test_overwrite_of_a_run_keeps_what_someone_else_put_there(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*ONE_EPOCH, "--out", str(out)]) == 0
    written = set(manifest_entries(out))
    assert {"config.json", "environment.json", "log.jsonl", "checkpoint.pt", "summary.json"} <= written
    assert main(["evaluate", str(out)]) == 0
    assert {"metrics.json", "per_class.csv", "confusion.csv"} <= set(manifest_entries(out))
    (out / "notes.txt").write_text("my notes")  # the researcher's own files, beside and inside the run's
    (out / "figures").mkdir(exist_ok=True)
    (out / "figures" / "mine.png").write_bytes(b"mine")
    capsys.readouterr()
    assert main([*ONE_EPOCH, "-p", "seed=1", "--out", str(out), "--overwrite"]) == 0
    assert "--overwrite kept 2 file(s)" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "my notes" and (out / "figures" / "mine.png").read_bytes() == b"mine"
    assert not (out / "metrics.json").exists()  # the earlier run's scores went with it
    assert json.loads((out / "config.json").read_text())["seed"] == 1
    assert len(json.loads((out / "environment.json").read_text())) == 1  # a new run: its own session only
    # a replacement that cannot start (a backbone file that is not there) is refused before it clears anything
    before = tree(out)
    assert main([*ONE_EPOCH, "-p", "pretrained=absent.pt", "--out", str(out), "--overwrite"]) == 2
    assert "pretrained='absent.pt': no such file" in capsys.readouterr().err
    assert tree(out) == before


def test_clear_run_follows_the_manifest_into_its_own_runs_only(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not the run's")
    top = new_run_dir(tmp_path / "compare")
    runs.write_json(top / "results.json", [])
    runs.write_json(top / "rgb_kmeans-seed0" / "metrics.json", {})  # a folder no job made: its files are listed
    record_in_manifest(top, "ce-seed0")
    sub = new_run_dir(top / "ce-seed0")
    runs.atomic_write_text(sub / "figures" / "curves.png", "png")
    (sub / "mine.txt").write_text("kept")
    (top / "link.txt").symlink_to(outside)  # a listed link: the link goes, never its target
    record_in_manifest(top, "link.txt")
    with open(top / MANIFEST_NAME, "a") as fh:  # a hand-edited manifest cannot reach outside the folder
        fh.write("../outside.txt\n" + str(outside) + "\n")
    assert manifest_entries(top) == ["results.json", "rgb_kmeans-seed0/metrics.json", "ce-seed0", "link.txt"]
    assert manifest_entries(sub) == ["figures/curves.png"]
    kept = clear_run(top)
    assert kept == [sub / "mine.txt"]
    assert outside.read_text() == "not the run's"
    assert sorted(p.name for p in top.iterdir()) == [MANIFEST_NAME, "ce-seed0"]
    # the file stayed, and so the folder stays a run's (its manifest, emptied): a later --overwrite may clear it
    assert sorted(p.name for p in sub.iterdir()) == [".lock", MANIFEST_NAME, "mine.txt"]
    assert manifest_entries(sub) == []


def test_clear_run_reaches_nothing_through_a_folder_replaced_by_a_link(tmp_path):
    run, elsewhere = new_run_dir(tmp_path / "run"), tmp_path / "paper_figs"
    runs.atomic_write_text(run / "figures" / "curves.png", "the run's")
    (run / "figures").rename(elsewhere)  # the researcher moved the figures away and linked them back
    (run / "figures").symlink_to(elsewhere)
    clear_run(run)
    assert (elsewhere / "curves.png").read_text() == "the run's"


def test_a_folder_made_before_manifests_gets_no_manifest_entries(tmp_path):
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    record_in_manifest(legacy, "ce-seed0")  # compare --resume / run --resume of such a folder
    runs.write_json(legacy / "results.json", [])
    assert sorted(p.name for p in legacy.iterdir()) == ["results.json"]


def test_a_run_that_failed_before_its_first_epoch_leaves_nothing(tmp_path, capsys, monkeypatch):
    """As with a folder of images that are all bad: the failure comes after the folder was made."""
    out = tmp_path / "run"

    def broken(*args, **kwargs):
        raise ValueError("no usable item among the 24 of SyntheticScenes")

    monkeypatch.setattr("picie_lib.picie.cluster_pass", broken)
    assert main([*ONE_EPOCH, "--out", str(out)]) == 2
    assert "no usable item" in capsys.readouterr().err
    assert not out.exists()  # so the corrected command may use the same --out
    monkeypatch.undo()
    assert main([*ONE_EPOCH, "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")  # a failed replacement keeps someone's file, and the folder a run's
    monkeypatch.setattr("picie_lib.picie.cluster_pass", broken)
    assert main([*ONE_EPOCH, "--out", str(out), "--overwrite"]) == 2
    assert sorted(p.name for p in out.iterdir()) == [".lock", MANIFEST_NAME, "notes.txt"]
    monkeypatch.undo()
    assert main([*ONE_EPOCH, "--out", str(out), "--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "checkpoint.pt").is_file()


# ---- 2. nothing is written through a symbolic link ---------------------------------------------------------
def test_a_lock_that_is_a_link_is_refused_and_its_target_untouched(tmp_path):
    out, victim = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    victim.write_text("precious")
    (out / ".lock").symlink_to(victim)
    result = picie(*ONE_EPOCH, "--out", str(out), timeout=300)
    assert result.returncode == 1
    assert one_line(result.stderr) == (
        f"error: {out / '.lock'} is a symbolic link; a run writes its own files, never through a link: remove the link"
    )
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_appends_and_a_runs_subfolders_never_follow_a_link(tmp_path):
    run, victim = new_run_dir(tmp_path / "run"), tmp_path / "victim.txt"
    victim.write_text("precious")
    (run / "log.jsonl").symlink_to(victim)
    with pytest.raises(OSError) as caught:
        runs.append_jsonl(run / "log.jsonl", {"epoch": 1})
    assert caught.value.filename == str(run / "log.jsonl")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (run / "figures").symlink_to(elsewhere)
    with pytest.raises(OSError, match="a folder of the run is a symbolic link"):
        runs.atomic_write_text(run / "figures" / "x.png", "png")
    assert victim.read_text() == "precious" and not any(elsewhere.iterdir())
    runs.atomic_write_text(run / "config.json", "{}")  # a link at a file's own name is replaced, not followed
    (run / "summary.json").symlink_to(victim)
    runs.write_json(run / "summary.json", {})
    assert victim.read_text() == "precious" and not (run / "summary.json").is_symlink()


def test_an_out_that_is_a_link_loop_is_named_as_one(tmp_path, capsys):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert main([*ONE_EPOCH, "--out", str(loop)]) == 2
    assert one_line(capsys.readouterr().err) == (
        f"error: {loop} is a symbolic link that leads nowhere (a loop or a missing target)"
    )


# ---- 3. a resume with another number of processes is refused -----------------------------------------------
def test_resuming_with_another_number_of_processes_is_refused(tmp_path):
    out = tmp_path / "run"
    assert main([*ONE_EPOCH[:-1], "2", "--out", str(out)]) == 0
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt["world_size"] == 1 and ckpt["processes_per_node"] == 1
    ckpt.update(epoch=1, world_size=2, processes_per_node=2)  # as a 2-process torchrun run stopped after epoch 1
    torch.save(ckpt, out / "checkpoint.pt")
    before = tree(out)
    result = picie("train", "--preset", "smoke", "--loss", "ce", "--out", str(out), "--resume", timeout=300)
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        f"error: {out / 'checkpoint.pt'} was written by 2 processes (torchrun); this job is 1 process, and the "
        "split of every step, so the result, depends on it. Continue with: torchrun --standalone --nproc-per-node 2 "
        f"-m picie_lib train --preset smoke --loss ce --out {out} --resume"
    )
    assert tree(out) == before


def test_the_continue_line_under_torchrun_names_torchrun(monkeypatch, tmp_path):
    from picie_lib.cli import build_parser, what_was_saved

    out = new_run_dir(tmp_path / "run")
    (out / "config.json").write_text("{}")
    argv = ["train", "--preset", "smoke", "--loss", "ce", "--out", str(out)]
    args = build_parser().parse_args(argv)
    args.argv = argv
    monkeypatch.setenv("RANK", "0")  # what torchrun sets: rank, world size, processes on this node
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert what_was_saved(args).endswith(
        f"continue with: torchrun --nnodes 2 --nproc-per-node 2 -m picie_lib {' '.join(argv)} --resume "
        "(on every node, with its rendezvous options)"
    )
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert what_was_saved(args).endswith(f"continue with: python -m picie_lib {' '.join(argv)} --resume")


# ---- 4 and 5. refused before the first byte ------------------------------------------------------------------
@pytest.mark.parametrize(
    "params, message",
    [
        (
            ["--loss", "ib_focal", "--epochs", "4", "-p", "switch=10"],
            "error: switch=10 with epochs_ib_focal=4: IB-Focal would start at epoch 11, after the last; expected a "
            "switch below 4 (or min_loss)",
        ),
        (
            ["--loss", "ib_focal", "--epochs", "1"],
            "error: epochs_ib_focal=1 with switch=min_loss: IB-Focal would never train",
        ),
        (
            ["--loss", "ce", "-p", "n_clusters=5000"],
            "error: n_clusters=5000: the k-means' initial fit holds 3072 pixels (12 images of 16 x 16 features), "
            "fewer than the clusters; expected n_clusters <= 3072",
        ),
        (
            ["--loss", "ce", "-p", "kmeans_max_init_points=1"],
            "error: kmeans_max_init_points=1: expected at least n_clusters=27 points",
        ),
        (
            ["--loss", "ce", "-p", "res=32", "-p", "n_train=25"],
            "error: res=32: expected a multiple of 32 >= 64 (at 32 the backbone's last stage is 1 x 1",
        ),
        (
            ["--loss", "ce", "-p", "seed=99999999999999999999999"],
            "error: -p seed=99999999999999999999999: expected an integer in [0, 4294967295]",
        ),
    ],
)
def test_what_cannot_run_is_refused_before_the_first_byte(tmp_path, capsys, params, message):
    out = tmp_path / "out"
    assert main(["train", "--preset", "smoke", *params, "--out", str(out)]) == 2
    assert one_line(capsys.readouterr().err).startswith(message)
    assert not out.exists()


def test_a_switch_within_the_epochs_still_trains_ib_focal(tmp_path):
    cfg = load_preset("smoke", loss="ib_focal", switch=3)  # the last of its 4 epochs is IB-Focal
    summary = train(cfg, tmp_path / "run")
    assert summary["switch_epoch"] == 4
    log = runs.read_jsonl(tmp_path / "run" / "log.jsonl")
    assert [r["phase"] for r in log] == ["ce", "ce", "ce", "ib_focal"]


# ---- 7. damaged inputs are one line naming the file ---------------------------------------------------------
@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "one-epoch"
    assert main([*ONE_EPOCH, "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize(
    "change, message",
    [
        ({"epoch": "2"}, "the checkpoint's 'epoch' is not an integer >= 0"),
        ({"epoch": -1}, "the checkpoint's 'epoch' is not an integer >= 0"),
        ({"history": {}}, "the checkpoint's 'history' is not a list of epoch records"),
        ({"config": [1]}, "the checkpoint's 'config' is not a mapping of parameters"),
        ({"schedule": {"best_loss": 1.0}}, "the checkpoint's 'schedule' lacks 'ce_min_epoch'"),
        ({"model": {"conv.weight": torch.zeros(3)}}, "does not fit (Error(s) in loading state_dict"),
    ],
)
def test_a_damaged_checkpoint_is_one_line_naming_it(tmp_path, one_epoch_run, change, message):
    out = tmp_path / "run"
    shutil.copytree(one_epoch_run, out)
    ckpt = load_checkpoint(out / "checkpoint.pt")
    ckpt.update(change)
    torch.save(ckpt, out / "checkpoint.pt")
    result = picie(*ONE_EPOCH, "--out", str(out), "--resume", timeout=300)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith(f"error: {out / 'checkpoint.pt'}: ") and message in line, line


def test_damaged_files_beside_a_run_are_named(tmp_path, one_epoch_run, capsys):
    import pickle

    out = tmp_path / "run"
    shutil.copytree(one_epoch_run, out)
    (out / "config.json").write_text('{"seed": ')
    assert main(["evaluate", str(out)]) == 2
    assert one_line(capsys.readouterr().err).startswith(f"error: {out / 'config.json'}: not valid JSON")
    pickled = tmp_path / "weights.pt"
    pickled.write_bytes(pickle.dumps(subprocess.CompletedProcess([], 0)))  # an object, not tensors
    assert main([*ONE_EPOCH, "-p", f"pretrained={pickled}", "--out", str(tmp_path / "p")]) == 2
    assert one_line(capsys.readouterr().err).startswith(f"error: {pickled}: ")
    binary = tmp_path / "preset.yaml"
    binary.write_bytes(bytes(range(256)))
    assert main(["train", "--preset", str(binary), "--loss", "ce", "--out", str(tmp_path / "b")]) == 2
    assert one_line(capsys.readouterr().err) == f"error: {binary}: not a text file; expected a YAML file of parameters"
