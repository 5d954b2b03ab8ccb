"""Several processes (torchrun), tested with 2 local processes and the gloo backend on the CPU
(docs/torchrun.md). What is equal to one process, and how:

- the k-means of a pass split over the processes equals one process's k-means fed each global step
  whole, from the same start: counts exactly, centroids within float tolerance (the sums are added in
  another order);
- the confusion matrix of an evaluation split over the processes equals one process's exactly
  (integer counts; every image scored once, also when the split is uneven);
- a process with no image in a training step takes the other processes' step exactly (the averaged
  gradient) and keeps its BatchNorm statistics exactly;
- a 2-process run repeats its own numbers bit for bit, and a 2-process run killed and resumed gives
  the uninterrupted 2-process run's weights and scores bit for bit;
- torchrun with one process joins a process group of one, takes every collective and scores as a plain
  process (benchmarks/device_check_dist.sh, tried on the CPU).
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from commands import ENV, picie

from picie_lib import distributed
from picie_lib.checkpoints import load_checkpoint
from picie_lib.clustering import MiniBatchKMeans
from picie_lib.config import load_preset
from picie_lib.data import build_dataset
from picie_lib.evaluate import score_predictions
from picie_lib.model import bn_state
from picie_lib.picie import build_model, make_criterion, train_pass
from picie_lib.run_folder import exclusive
from picie_lib.runs import weights_digest
from picie_lib.transforms import draw_view_params

# slow: starts processes or trains, not in the unit tier (pytest -m 'not slow')
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
    pytest.mark.slow,
]
WORLD = 2


def _join(rank: int, store: str) -> None:
    os.environ["RANK"] = str(rank)  # bars off outside rank 0, as under torchrun
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)


def _spawn(worker, tmp_path: Path, *args) -> list[dict]:
    """Run ``worker(rank, store, out, *args)`` in WORLD processes; their saved results, by rank."""
    mp.start_processes(worker, (str(tmp_path / "store"), str(tmp_path), *args), nprocs=WORLD, start_method="spawn")
    return [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


# ---- rank 0 first ------------------------------------------------------------------------------------------
def _main_first_worker(rank: int, store: str, out: str) -> None:
    _join(rank, store)
    with distributed.main_first():
        entered = time.time()
        time.sleep(1.0 if rank == 0 else 0.0)  # rank 0 "downloads" for a second
        left = time.time()
    with distributed.main_first(enabled=False):  # no wait: both enter at once
        unordered = time.time()
    torch.save({"entered": entered, "left": left, "unordered": unordered}, Path(out) / f"rank{rank}.pt")
    dist.destroy_process_group()


def test_main_first_lets_rank_0_finish_the_block_before_the_others_enter(tmp_path):
    first, second = _spawn(_main_first_worker, tmp_path)
    assert second["entered"] >= first["left"]  # rank 1 waited for rank 0's whole block
    assert second["unordered"] < first["unordered"] + 0.5  # disabled: nobody waits for a block


# ---- the k-means -----------------------------------------------------------------------------------------
def _pixels(n_images: int, pixels: int, dim: int) -> torch.Tensor:
    """Features (images, pixels, dim) around a few centres, half of them one repeated point: the random
    start draws it more than once, so Lloyd's empty-cluster rule runs."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(5, dim, generator=gen) * 3
    x = centres[torch.randint(0, 5, (n_images, pixels), generator=gen)] + 0.3 * torch.randn(
        n_images, pixels, dim, generator=gen
    )
    x[:, : pixels // 2] = centres[0]
    return x


KMEANS = {"k": 7, "init_batches": 2, "n_iter": 10, "seed": 5, "backend": "torch"}


def _kmeans_worker(rank: int, store: str, out: str, data: torch.Tensor, batch: int) -> None:
    _join(rank, store)
    km = MiniBatchKMeans(**KMEANS)
    shares = distributed.rank_batches(list(range(len(data))), batch)
    for share in shares:
        km.update(data[share].reshape(-1, data.shape[-1]) if share else None)
    centroids = km.finish()
    torch.save(
        {"centroids": centroids, "counts": km.counts, "loss": km.mean_distance, "items": shares},
        Path(out) / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


def test_distributed_kmeans_equals_one_process_fed_the_whole_steps(tmp_path):
    data, batch = _pixels(13, 20, 8), 3  # steps of 2 x 3 images: 6, 6, 6 and a last step of 1 (one share empty)
    ranks = _spawn(_kmeans_worker, tmp_path, data, batch)

    items = [i for r in ranks for share in r["items"] for i in share]
    assert sorted(items) == list(range(13))  # every image in one share, none twice, none dropped
    assert [len(r["items"]) for r in ranks] == [3, 3]  # one batch per step in every process
    assert ranks[0]["items"][-1] == [] and ranks[1]["items"][-1] == [12]

    single = MiniBatchKMeans(**KMEANS)
    for start in range(0, 13, WORLD * batch):
        single.update(data[start : start + WORLD * batch].reshape(-1, 8))
    expected = single.finish()
    assert int((single.counts == 0).sum()) == 0 and len(expected) == 7
    for r in ranks:
        assert torch.equal(r["centroids"], ranks[0]["centroids"])  # every process holds the same centroids
        assert torch.allclose(r["centroids"], expected, atol=1e-5)
        assert torch.equal(r["counts"], single.counts)
        # ||x||^2 - 2 x.c + ||c||^2 in float32 cancels to a small distance: other blockings of the matrix
        # product move it by ~1e-5 of itself
        assert r["loss"] == pytest.approx(single.mean_distance, rel=1e-4)


# ---- the confusion matrix ---------------------------------------------------------------------------------
def _quantised(images: torch.Tensor, size) -> torch.Tensor:
    """A fixed prediction: the mean intensity in 8 bins, at the label size."""
    grey = images.float().mean(1, keepdim=True)
    return torch.nn.functional.interpolate(grey, size=size).squeeze(1).div(32).long().clamp(0, 7)


def _confusion_worker(rank: int, store: str, out: str) -> None:
    _join(rank, store)
    cfg = load_preset("smoke", n_val=7, eval_batch_size=3)  # 7 images in batches of 3: an uneven split
    result = score_predictions(_quantised, build_dataset(cfg, "val", mode="eval"), cfg, 8)
    torch.save(
        {"confusion": torch.tensor(result["confusion"]), "scores": result["scores"]}, Path(out) / f"rank{rank}.pt"
    )
    dist.destroy_process_group()


def test_distributed_confusion_matrix_equals_one_process(tmp_path):
    ranks = _spawn(_confusion_worker, tmp_path)
    cfg = load_preset("smoke", n_val=7, eval_batch_size=3)
    val_set = build_dataset(cfg, "val", mode="eval")
    single = score_predictions(_quantised, val_set, cfg, 8)
    for r in ranks:
        assert np.array_equal(r["confusion"].numpy(), np.asarray(single["confusion"]))
        np.testing.assert_equal(r["scores"], single["scores"])  # NaN (no thing matched) equals NaN
    labelled = sum(int((val_set[i][2] >= 0).sum()) for i in range(len(val_set)))
    assert int(ranks[0]["confusion"].sum()) == labelled  # every labelled pixel of the 7 images, once


# ---- a training step in which a process has no image ------------------------------------------------------
def _empty_share_worker(rank: int, store: str, out: str) -> None:
    _join(rank, store)
    cfg = load_preset("smoke", device="cpu")
    dataset = build_dataset(cfg, "train", mode="train")
    dataset.set_view_params(draw_view_params(len(dataset), cfg, torch.Generator().manual_seed(0)))
    model = build_model(cfg, torch.device("cpu"))
    before = bn_state(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    labels = torch.randint(0, cfg.n_clusters, (2, len(dataset), 16, 16), generator=torch.Generator().manual_seed(1))
    centroids = torch.nn.functional.normalize(torch.randn(2, cfg.n_clusters, 128), dim=2)
    stats = train_pass(
        distributed.data_parallel(model, torch.device("cpu")), optimizer, dataset, [5], labels.to(torch.uint8),
        centroids, [None, None], make_criterion(cfg, "ce"), cfg, 1,
    )  # fmt: skip
    torch.save(
        {"before": before, "after": bn_state(model), "weights": model.state_dict(), "loss": stats["loss"]},
        Path(out) / f"rank{rank}.pt",
    )
    dist.destroy_process_group()


def test_a_process_with_no_image_in_a_step_takes_the_same_step_and_keeps_its_batchnorm(tmp_path):
    """One image in a step of 2 x 8: process 0 has none; it steps on the averaged gradient (its zero one
    and process 1's), and the blank images it ran forward leave no trace in its BatchNorm statistics."""
    empty, full = _spawn(_empty_share_worker, tmp_path)
    assert all(torch.equal(empty["after"][k], empty["before"][k]) for k in empty["before"])
    assert not all(torch.equal(full["after"][k], full["before"][k]) for k in full["before"])  # it saw an image
    params = [k for k in empty["weights"] if k not in empty["before"]]
    assert all(torch.equal(empty["weights"][k], full["weights"][k]) for k in params)  # the same step everywhere
    assert empty["loss"] == full["loss"] and np.isfinite(full["loss"])  # the pass's loss is over its one image


# ---- train and evaluate under torchrun -------------------------------------------------------------------
SMOKE = ["--preset", "smoke", "-p", "n_train=48"]


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={WORLD}", *args]


def _kill_job(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and every process under it: its workers lead sessions of their own, so a
    signal to torchrun's process group does not reach them, nor their data-loader workers."""
    with contextlib.suppress(psutil.NoSuchProcess):
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signal.SIGKILL)
    proc.kill()


def _run(
    *args: str, ok: bool = True, launcher: tuple[str, ...] = (), env: dict | None = None
) -> subprocess.CompletedProcess:
    """torchrun (with the options ``launcher``), killed with everything under it if it outlives the
    timeout (a process waiting in a collective for another would otherwise outlive torchrun); ``ok``:
    it must succeed; ``env``: variables added to the processes' environment."""
    proc = subprocess.Popen(
        torchrun(*launcher, "-m", "picie_lib", *args),
        env={**ENV, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        _kill_job(proc)
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun {' '.join(args)} did not finish in 600 s: {stderr[-2000:]}")
    assert proc.returncode == 0 or not ok, stderr[-3000:]
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_two_processes_train_evaluate_repeat_and_resume_after_a_kill(tmp_path):
    first, again, killed = tmp_path / "first", tmp_path / "again", tmp_path / "killed"
    for out in (first, again):
        _run("train", *SMOKE, "--loss", "ce", "--out", str(out))
        printed = _run("evaluate", str(out)).stdout
        assert printed.count("wrote") == 1  # rank 0 speaks for both
    weights = [load_checkpoint(d / "checkpoint.pt")["model"] for d in (first, again)]
    assert weights_digest(weights[0]) == weights_digest(weights[1])  # a 2-process run repeats itself
    scores = [json.loads((d / "metrics.json").read_text())["scores"] for d in (first, again)]
    assert scores[0] == scores[1]
    log = [json.loads(line) for line in (first / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]  # one writer: no line twice
    (session,) = json.loads((first / "environment.json").read_text())
    assert session["world_size"] == WORLD and session["backend"] == "gloo"  # what joined the processes, recorded

    proc = subprocess.Popen(
        torchrun("-m", "picie_lib", "train", *SMOKE, "--loss", "ce", "--out", str(killed)),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not (killed / "checkpoint.pt").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)  # into epoch 2
    _kill_job(proc)  # as a machine that goes down: nothing of the job gets to clean up
    proc.wait()
    ckpt = load_checkpoint(killed / "checkpoint.pt")
    assert ckpt["epoch"] == 1 and ckpt["world_size"] == WORLD
    # resumed by one process, the steps would be split otherwise: refused, with the command that continues it
    alone = picie("train", *SMOKE, "--loss", "ce", "--out", str(killed), "--resume", timeout=300)
    assert alone.returncode == 2 and alone.stderr.strip().splitlines() == [
        f"error: {killed / 'checkpoint.pt'} was written by {WORLD} processes (torchrun); this job is 1 process, and "
        "the split of every step, so the result, depends on it. Continue with: torchrun --standalone "
        f"--nproc-per-node {WORLD} -m picie_lib train {' '.join(SMOKE)} --loss ce --out {killed} --resume"
    ]
    _run("train", *SMOKE, "--loss", "ce", "--out", str(killed), "--resume")
    _run("evaluate", str(killed))
    assert weights_digest(load_checkpoint(killed / "checkpoint.pt")["model"]) == weights_digest(weights[0])
    assert json.loads((killed / "metrics.json").read_text())["scores"] == scores[0]


def test_an_uneven_split_with_an_empty_share_trains_and_scores(tmp_path):
    """17 images in training steps of 2 x 8: the last step gives process 0 nothing (a zero-gradient step)
    and the clustering steps of 2 x 12 split 8 / 9; IB-Focal's switch and a data-loader worker too."""
    out = tmp_path / "uneven"
    uneven = ["-p", "n_train=17", "-p", "num_workers=1"]
    _run("train", "--preset", "smoke", *uneven, "--loss", "ib_focal", "--out", str(out))
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if not r.get("discarded")] == [1, 2, 3, 4]
    assert all(np.isfinite([r["loss"], *r["kmeans_loss"]]).all() for r in log)
    stderr = _run("evaluate", str(out), env={"PICIE_DIST_DEBUG": "1"}).stderr
    assert json.loads((out / "metrics.json").read_text())["checkpoint"]["finished"]
    # PICIE_DIST_DEBUG=1: each rank says where it is; both reach their exit after rank 0 wrote the scores
    traces = [line for line in stderr.splitlines() if line.startswith("[trace rank")]
    for rank in (0, 1):
        phases = [line.split("] ", 1)[1] for line in traces if line.startswith(f"[trace rank {rank} ")]
        assert phases[:2] == ["joining the process group (gloo)", "joined"], stderr[-2000:]
        assert phases[-3:] == ["leaving the process group", "left", "exiting"], stderr[-2000:]
        assert "evaluation: fresh k-means on train" in phases and "evaluation: scoring val" in phases
    assert sum("evaluation: scores written" in line for line in traces) == 1  # rank 0 writes


def test_a_refusal_by_rank_0_is_one_error_line(tmp_path):
    """Rank 0 alone checks the output folder; the other process, left without it, says so in short and
    does not add gloo's connection error as an error of its own."""
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    # torchrun looks at its processes every 30 s, not 0.1 s: rank 1 meets rank 0's end before it is
    # stopped (both end on their own, well within the first look)
    launcher = ("--monitor-interval", "30")
    stderr = _run("train", *SMOKE, "--loss", "ce", "--out", str(taken), ok=False, launcher=launcher).stderr
    errors = [line for line in stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith(f"error: {taken} already holds a run"), stderr[-2000:]
    rank_1 = [line for line in stderr.splitlines() if line.startswith("[rank 1]")]
    assert rank_1 and all("stopped: lost another process" in line for line in rank_1), stderr[-2000:]
    assert (taken / "notes.txt").read_text() == "mine"
    # then torchrun's own report, as docs/torchrun.md describes it: rank 0 the root cause, exit code 2
    report = stderr[stderr.index(errors[0]) :]
    assert "ChildFailedError" in report and "picie_lib FAILED" in report, stderr[-2000:]
    root_cause = report.split("Root Cause (first observed failure)", 1)[1]
    assert "rank      : 0" in root_cause and "exitcode  : 2" in root_cause, root_cause


def test_processes_end_with_a_killed_launcher_and_free_the_folder(tmp_path):
    """SIGKILL to torchrun alone (as a lost terminal or a scheduler may send): its processes, which lead
    sessions of their own, end too (parent-death signal) and the output folder's lock is free again. The
    run has 40 epochs of a few seconds: processes left to themselves would still be training long after."""
    out = tmp_path / "orphaned"
    proc = subprocess.Popen(
        torchrun("-m", "picie_lib", "train", *SMOKE, "--loss", "ce", "--epochs", "40", "--out", str(out)),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (out / "checkpoint.pt").is_file() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len(workers) >= WORLD
        proc.kill()  # torchrun alone
        proc.wait()
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, [p.pid for p in alive]
        with exclusive(out):  # the lock went with rank 0
            pass
        assert not (out / "summary.json").exists() and load_checkpoint(out / "checkpoint.pt")["epoch"] < 40
    finally:
        _kill_job(proc)
        proc.stderr.close()


GLOO = "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] "


@pytest.mark.parametrize(
    ("err", "lost"),
    [
        (RuntimeError(GLOO + "Connection closed by peer [127.0.0.1]:5847"), True),
        (RuntimeError(GLOO + "Read error [127.0.0.1]:3355: Connection reset by peer"), True),
        (RuntimeError(GLOO + "Timed out waiting 1800000ms for recv operation to complete"), True),
        (RuntimeError(GLOO + "Application timeout caused pair closure"), True),
        (dist.DistBackendError("NCCL error in: x.cpp:1970, remote process exited or there was a network error"), True),
        (
            dist.DistBackendError(
                "[Rank 1] Watchdog caught collective operation timeout: ran 600000 milliseconds before timing out."
            ),
            True,
        ),
        (
            dist.DistNetworkError(
                "Failed to recv, got 0 bytes. Connection was likely closed. Did the remote server shutdown or crash?"
            ),
            True,
        ),
        (dist.DistStoreError("Socket Timeout"), True),
        (dist.DistStoreError("wait timeout after 300000ms, keys: /rank1"), True),
        (RuntimeError(GLOO + "Invalid argument: sizes differ"), False),  # gloo's own error, not a lost peer
        (dist.DistBackendError("NCCL error in: x.cpp:1970, unhandled cuda error"), False),
        (RuntimeError("the run stopped: timed out waiting for a reader"), False),  # not the backend's
        (ValueError(GLOO + "Connection closed by peer"), False),
    ],
)
def test_only_the_loss_of_a_peer_is_told_as_one(monkeypatch, err, lost):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert distributed.lost_another_process(err) is lost
    monkeypatch.setenv("WORLD_SIZE", "1")  # one process has no other to lose
    assert not distributed.lost_another_process(err)
    if lost:
        line = distributed.lost_process_line(err)
        assert "third_party" not in line and str(err).split("] ", 1)[-1] in line  # the cause, whole


def test_the_phase_trace_is_silent_unless_asked_for(monkeypatch, capfd):
    monkeypatch.delenv(distributed.DEBUG_ENV, raising=False)
    distributed.trace("cluster starts")
    assert capfd.readouterr().err == ""
    monkeypatch.setenv(distributed.DEBUG_ENV, "1")
    monkeypatch.setenv("RANK", "3")
    distributed.trace("cluster starts")
    line = capfd.readouterr().err
    assert line.startswith("[trace rank 3 +") and line.endswith(" s] cluster starts\n"), line


def test_the_gpu_check_of_torchrun_runs_whole_on_a_cpu(tmp_path):
    """benchmarks/device_check_dist.sh as its header says to try it on a CPU: every run exits 0, each row names the
    backend its run recorded (gloo here, where a GPU gives NCCL), and one process under torchrun scores as one
    process alone (the same k-means, the same reading; on the CPU bit for bit)."""
    repo = Path(__file__).resolve().parents[1]
    env = {
        **ENV,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # python3 and torchrun with torch
        "DEVICE": "cpu",
        "EXTRA": "-p res=64 -p base_res=96 -p batch_size_cluster=8 -p eval_batch_size=8",
    }
    out = tmp_path / "check"
    done = subprocess.run(
        ["bash", "benchmarks/device_check_dist.sh", str(out), "16"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split(" | ") for line in (out / "results.md").read_text().splitlines()[2:]]
    assert [row[0] for row in rows] == [
        "| one process",
        "| torchrun, 1 process (gloo)",
        "| torchrun, 2 processes (gloo)",
    ]
    assert [row[1] for row in rows] == ["0 / 0"] * 3
    assert rows[0][-2:] == rows[1][-2:]  # All Acc and mIoU
    assert "[trace rank 1 +" in done.stderr and "evaluate done" in done.stderr
