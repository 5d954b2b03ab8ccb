"""Training: the four-term loss, the IB-Focal switch, determinism, checkpoints, guards."""

import contextlib
import json
import subprocess
import sys
import threading
import types

import psutil
import pytest
import torch
import torch.nn.functional as F

from picie_lib import loader, picie
from picie_lib.checkpoints import CE_MIN_KEYS, SWITCH_KEYS, load_checkpoint
from picie_lib.clustering import MiniBatchKMeans, assign_labels
from picie_lib.config import load_preset
from picie_lib.data import build_dataset
from picie_lib.losses import cross_entropy
from picie_lib.model import batch_statistics
from picie_lib.picie import NonFiniteLoss, picie_loss
from picie_lib.runs import read_jsonl
from picie_lib.train import train
from picie_lib.transforms import draw_view_params

# slow: starts processes or trains, not in the unit tier (pytest -m 'not slow')
pytestmark = pytest.mark.slow


def _cfg(**kw):
    return load_preset("smoke", **{"device": "cpu", **kw})  # "same seed, same numbers" is a CPU promise


# ---- the loss ----------------------------------------------------------------------------------
def test_picie_loss_is_half_across_plus_half_within():
    g = torch.Generator().manual_seed(0)
    f1 = F.normalize(torch.randn(2, 8, 5, 6, generator=g), dim=1)
    f2 = F.normalize(torch.randn(2, 8, 5, 6, generator=g), dim=1)
    y1, y2 = torch.randint(0, 4, (2, 5, 6), generator=g), torch.randint(0, 4, (2, 5, 6), generator=g)
    c = torch.randn(2, 4, 8, generator=g)
    w = [torch.rand(4, generator=g) + 0.1 for _ in range(2)]
    loss, terms = picie_loss(f1, f2, y1, y2, c, w, lambda z, t, f, wt: cross_entropy(z, t, wt), 1.0)

    def ce(f, cent, y, wt):  # an independent route: a 1x1 conv and the 4-D cross-entropy
        return F.cross_entropy(F.conv2d(f, cent[:, :, None, None]), y, weight=wt)

    across = (ce(f1, c[1], y2, w[1]) + ce(f2, c[0], y1, w[0])) / 2
    within = (ce(f1, c[0], y1, w[0]) + ce(f2, c[1], y2, w[1])) / 2
    assert torch.allclose(loss, (across + within) / 2, atol=1e-6)
    assert torch.allclose(terms["across_1"], ce(f1, c[1], y2, w[1]), atol=1e-6)


def test_ib_feature_norms_come_from_the_maps_given_for_them():
    """``ib_feature: raw``: the IB factor's h is the feature before normalisation; the logits still take
    the normalised one (the classifier's input)."""
    g = torch.Generator().manual_seed(1)
    r1, r2 = torch.randn(2, 8, 3, 4, generator=g) * 5, torch.randn(2, 8, 3, 4, generator=g) * 5
    f1, f2 = F.normalize(r1, dim=1), F.normalize(r2, dim=1)
    y1, y2 = torch.randint(0, 4, (2, 3, 4), generator=g), torch.randint(0, 4, (2, 3, 4), generator=g)
    c = F.normalize(torch.randn(2, 4, 8, generator=g), dim=2)
    seen = []

    def spy(z, t, h, w):
        seen.append((z, h))
        return h.abs().sum(1).mean()

    loss_raw, _ = picie_loss(f1, f2, y1, y2, c, [None, None], spy, 1.0, ib_features=(r1, r2))
    assert all(torch.equal(h, picie._flat(r)) for (_, h), r in zip(seen, (r1, r2, r1, r2), strict=True))
    assert torch.allclose(seen[0][0], picie._flat(torch.einsum("bdhw,kd->bkhw", f1, c[1])))
    loss_unit, _ = picie_loss(f1, f2, y1, y2, c, [None, None], spy, 1.0)
    assert loss_raw > 3 * loss_unit  # the raw maps are 5x larger


# ---- end to end on the smoke preset ---------------------------------------------------------------
@pytest.fixture(scope="module")
def ce_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ce")
    summary = train(_cfg(loss="ce"), out)
    return out, summary


def test_a_run_writes_its_log_checkpoint_and_provenance(ce_run):
    out, summary = ce_run
    log = read_jsonl(out / "log.jsonl")
    assert [r["epoch"] for r in log] == [1, 2] and all(r["phase"] == "ce" for r in log)
    for key in ("loss", "across_1", "across_2", "within_1", "within_2", "kmeans_loss", "seconds"):
        assert key in log[0]
    ckpt = load_checkpoint(out / "checkpoint.pt")  # weights_only=True inside
    assert ckpt["epoch"] == 2 and ckpt["centroids"].shape == (2, 27, 128)
    assert json.loads((out / "config.json").read_text())["loss"] == "ce"
    (env,) = json.loads((out / "environment.json").read_text())  # one session
    assert env["versions"]["torch"] == torch.__version__ and env["command"]
    assert env["world_size"] == 1 and env["backend"] is None  # a plain process joins no process group
    assert summary["epochs"] == 2 and set(summary["seconds_per_pass"]) == {"cluster", "label", "train"}


def test_same_seed_same_weights_on_cpu(ce_run, tmp_path):
    out, _ = ce_run
    train(_cfg(loss="ce"), tmp_path)
    a, b = load_checkpoint(out / "checkpoint.pt")["model"], load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert read_jsonl(out / "log.jsonl")[-1]["loss"] == read_jsonl(tmp_path / "log.jsonl")[-1]["loss"]


def test_two_data_workers_give_the_same_run_as_none(ce_run, tmp_path):
    """Batches are cut into chunks that the workers make at once and joined in order: same numbers."""
    out, _ = ce_run
    train(_cfg(loss="ce", num_workers=2), tmp_path)
    a, b = load_checkpoint(out / "checkpoint.pt")["model"], load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in read_jsonl(out / "log.jsonl")] == [r["loss"] for r in read_jsonl(tmp_path / "log.jsonl")]


def test_batches_are_the_same_with_and_without_workers_and_every_worker_has_a_share():
    cfg = _cfg(n_train=22)
    dataset = build_dataset(cfg, "train", "train")
    dataset.set_view_params(draw_view_params(len(dataset), cfg, torch.Generator().manual_seed(0)))
    order = picie.permutation(len(dataset), 3)
    alone = list(loader.Batches(dataset, order, 8, cfg))
    workers = loader.Batches(dataset, order, 8, cfg.replace(num_workers=2))
    assert workers.chunks_per_batch == [4, 4, 3]  # chunks of 2 items: both workers work on every batch
    shared = list(workers)
    assert [b[0].tolist() for b in alone] == [order[0:8], order[8:16], order[16:22]]
    assert all(torch.equal(x, y) for a, b in zip(alone, shared, strict=True) for x, y in zip(a, b, strict=True))


LOCK_OF_ANOTHER_THREAD = threading.Lock()


class NeedsTheLock(torch.utils.data.Dataset):
    """Items that take a lock which, in this process, another thread holds throughout the pass."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int):
        with LOCK_OF_ANOTHER_THREAD:
            return index, torch.full((2,), float(index))


@pytest.mark.timeout(60)  # a worker that inherited the lock waits for ever
def test_workers_do_not_inherit_a_lock_that_another_thread_holds():
    """A worker forked from this process would start with the lock held and wait for it forever (as a
    worker of a torchrun process did on a lock of one of its threads); started by the fork server, it
    has its own."""
    held, done = threading.Event(), threading.Event()

    def hold() -> None:
        with LOCK_OF_ANOTHER_THREAD:
            held.set()
            done.wait()

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    try:
        batches = list(loader.Batches(NeedsTheLock(), [3, 1, 0, 2], 2, _cfg(num_workers=1)))
    finally:
        done.set()
        holder.join()
    assert [b[0].tolist() for b in batches] == [[3, 1], [0, 2]]
    assert torch.equal(batches[1][1], torch.tensor([[0.0, 0.0], [2.0, 2.0]]))


WORKER_OF_A_RUN_THAT_IS_KILLED = """
import os, sys, time
import torch
from picie_lib.config import load_preset
from picie_lib.loader import Batches


class Slow(torch.utils.data.Dataset):
    def __len__(self):
        return 1000

    def __getitem__(self, index):
        time.sleep(0.2)
        return index, torch.tensor([os.getpid(), os.getppid()])


if __name__ == "__main__":
    cfg = load_preset("smoke", device="cpu", num_workers=1)
    for index, pids in Batches(Slow(), list(range(1000)), 2, cfg):
        print(*pids[0].tolist(), flush=True)
"""


@pytest.mark.timeout(90)
def test_the_workers_of_a_killed_training_process_end_with_it(tmp_path):
    """SIGKILL leaves a process no last word: its workers (children of the fork server, which lives
    as long as they do) must notice on their own that it is gone, rather than wait for work forever."""
    script = tmp_path / "run.py"
    script.write_text(WORKER_OF_A_RUN_THAT_IS_KILLED)
    run = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    left = []
    try:
        worker, parent = map(int, run.stdout.readline().split())
        # a fork server's worker is not the training process's child (where only spawn exists, it is)
        left = [psutil.Process(pid) for pid in (worker, parent) if pid != run.pid]
        run.kill()
        run.wait(timeout=10)
        _, left = psutil.wait_procs(left, timeout=20)
        assert not left, f"still running after the training process was killed: {left}"
    finally:
        for process in [run, *left]:
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
        run.stdout.close()


def test_a_data_set_class_of_a_notebook_with_workers_is_a_clear_error(monkeypatch):
    """A notebook's ``__main__`` has no file for the workers to import the class from: say so and name
    the parameter, rather than let a worker die with an unpickling error."""
    notebook_class = type("CellDataset", (NeedsTheLock,), {"__module__": "__main__"})
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))  # as in a kernel: no __file__
    with pytest.raises(ValueError, match=r"num_workers=1: the data set class CellDataset .* notebook"):
        loader.Batches(notebook_class(), [0, 1], 2, _cfg(num_workers=1))
    batches = list(loader.Batches(notebook_class(), [0, 1], 2, _cfg(num_workers=0)))  # no worker: fine
    assert batches[0][0].tolist() == [0, 1]


def test_the_cluster_pass_equals_one_joint_pass_over_both_views():
    """It reads the initial batches once per view (one view's pixels in memory at a time); each
    k-means must still see the same pixels in the same order as when both views are fed together."""
    cfg = _cfg(batch_size_cluster=6, kmeans_init_batches=2)
    model = picie.build_model(cfg, torch.device("cpu"))
    dataset = build_dataset(cfg, "train", "train")
    dataset.set_view_params(draw_view_params(len(dataset), cfg, torch.Generator().manual_seed(1)))
    order = picie.permutation(len(dataset), 2)
    centroids, losses, _ = picie.cluster_pass(model, dataset, order, cfg, seed=7)
    joint = [MiniBatchKMeans.from_config(cfg, picie.derive_seed(7, view)) for view in (1, 2)]
    with torch.no_grad(), batch_statistics(model):
        for idx, views in loader.Batches(dataset, order, 6, cfg):
            for km, f in zip(joint, picie.batch_features(model, dataset, idx, views, cfg), strict=True):
                km.update(f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]))
    assert torch.equal(centroids, torch.stack([km.finish() for km in joint]))
    assert losses == [km.mean_distance for km in joint]


@pytest.mark.parametrize("reset", [False, True])
def test_the_learning_rate_drops_at_the_switch_and_adams_moments_reset_if_asked(tmp_path, reset):
    cfg = _cfg(loss="ib_focal", switch=1, ib_reset_optimizer=reset, ib_lr_factor=0.01)  # CE, then 3 of IB-Focal
    train(cfg, tmp_path)
    log = read_jsonl(tmp_path / "log.jsonl")
    assert [r["phase"] for r in log] == ["ce"] + ["ib_focal"] * 3
    assert [r["lr"] for r in log] == [cfg.lr] + [cfg.lr * cfg.ib_lr_factor] * 3
    optimizer = load_checkpoint(tmp_path / "checkpoint.pt")["optimizer"]
    assert optimizer["param_groups"][0]["lr"] == pytest.approx(cfg.lr * 0.01)
    steps_per_epoch = -(-cfg.n_train // cfg.batch_size_train)
    steps = {int(state["step"]) for state in optimizer["state"].values()}
    assert steps == {steps_per_epoch * (3 if reset else 4)}  # a reset Adam counts only the IB-Focal steps


def test_bn_running_clusters_in_train_mode_and_labels_in_eval_mode():
    """``bn_eval: running`` (PiCIE's code): the clustering pass moves the running statistics, the
    labelling pass uses them and leaves them; ``batch`` leaves them alone in both."""
    for mode in ("running", "batch"):
        cfg = _cfg(bn_eval=mode)
        model = picie.build_model(cfg, torch.device("cpu"))
        dataset = build_dataset(cfg, "train", "train")
        dataset.set_view_params(draw_view_params(len(dataset), cfg, torch.Generator().manual_seed(1)))
        order = list(range(len(dataset)))
        before = model.backbone.bn1.running_mean.clone()
        centroids, _, _ = picie.cluster_pass(model, dataset, order, cfg, seed=3)
        after_cluster = model.backbone.bn1.running_mean.clone()
        labels, _ = picie.label_pass(model, dataset, order, centroids, cfg)
        assert torch.equal(model.backbone.bn1.running_mean, after_cluster)  # labelling never moves them
        assert torch.equal(after_cluster, before) == (mode == "batch")
        if mode == "running":  # the labels are the nearest centroids of eval()-mode features
            model.eval()
            with torch.no_grad():
                views = torch.stack([dataset[i][1] for i in order[:4]])
                f1, _ = picie.batch_features(model, dataset, torch.tensor(order[:4]), views, cfg)
            expected = assign_labels(f1, centroids[0])
            assert torch.equal(labels[0, :4].long(), expected)


def test_an_existing_run_is_not_overwritten(ce_run):
    out, _ = ce_run
    with pytest.raises(FileExistsError, match="--resume.*--overwrite"):
        train(_cfg(loss="ce"), out)


def test_ib_focal_records_its_switch(tmp_path):
    summary = train(_cfg(loss="ib_focal", switch=1), tmp_path)
    log = read_jsonl(tmp_path / "log.jsonl")
    assert [r["phase"] for r in log] == ["ce", "ib_focal", "ib_focal", "ib_focal"]
    assert summary["switch_epoch"] == 2 and log[0]["switch"] == {"ib_focal_from_epoch": 2, "weights_from_epoch": 1}


def _scripted_training(monkeypatch, losses):
    scripted = iter(losses)

    def fake_train_pass(model, *args, **kwargs):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)  # the weights move every epoch
        return {"loss": next(scripted)}

    monkeypatch.setattr(picie, "train_pass", fake_train_pass)


def test_min_loss_restores_the_minimum_epochs_weights(tmp_path, monkeypatch):
    _scripted_training(monkeypatch, [2.0, 2.5, 1.0, 1.0, 1.0])
    summary = train(_cfg(loss="ib_focal"), tmp_path)
    assert summary["ce_min_epoch"] == 1 and summary["switch_epoch"] == 2
    log = read_jsonl(tmp_path / "log.jsonl")
    assert [(r["epoch"], r["phase"], r.get("discarded", False)) for r in log] == [
        (1, "ce", False),
        (2, "ce", True),
        (2, "ib_focal", False),
        (3, "ib_focal", False),
        (4, "ib_focal", False),
    ]
    assert log[1]["switch"] == {"ib_focal_from_epoch": 2, "weights_from_epoch": 1}
    ce_min = load_checkpoint(tmp_path / "ce_min.pt", CE_MIN_KEYS)
    final = load_checkpoint(tmp_path / "checkpoint.pt")
    # three IB-Focal epochs after going back to epoch 1's weights: epoch-1 weights + 3 * 0.01
    key = "decoder.layer1.weight"
    assert final["epoch"] == 4 and torch.allclose(final["model"][key], ce_min["model"][key] + 0.03, atol=1e-6)


def test_the_ib_focal_phase_records_how_far_it_moved_the_weights(tmp_path, monkeypatch):
    _scripted_training(monkeypatch, [2.0, 2.5, 1.0, 1.0, 1.0])
    summary = train(_cfg(loss="ib_focal"), tmp_path)
    at_switch = load_checkpoint(tmp_path / "switch.pt", SWITCH_KEYS)
    ce_min = load_checkpoint(tmp_path / "ce_min.pt", CE_MIN_KEYS)
    assert at_switch["epoch"] == 1  # IB-Focal started from the CE minimum's weights
    assert all(torch.equal(at_switch["model"][k], v) for k, v in ce_min["model"].items())
    final = load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    names = [n for n, _ in picie.build_model(_cfg(), "cpu").named_parameters()]
    before = torch.cat([at_switch["model"][n].flatten().double() for n in names])
    after = torch.cat([final[n].flatten().double() for n in names])
    moved = [r.get("weights_moved_since_switch") for r in read_jsonl(tmp_path / "log.jsonl")]
    assert moved[:2] == [None, None] and moved[2] < moved[3] < moved[4]
    assert summary["weights_moved_after_switch"] == pytest.approx(float((after - before).norm() / before.norm()))


def test_global_min_discards_every_ce_epoch_after_the_minimum(tmp_path, monkeypatch):
    _scripted_training(monkeypatch, [2.0, 2.5, 2.2] + [1.0] * 5)
    train(_cfg(loss="ib_focal", switch="global_min", epochs_ib_focal=6), tmp_path)  # cap: 3 CE epochs
    log = read_jsonl(tmp_path / "log.jsonl")
    assert [(r["epoch"], r["phase"], r.get("discarded", False)) for r in log] == [
        (1, "ce", False),
        (2, "ce", True),
        (3, "ce", True),
        *[(e, "ib_focal", False) for e in range(2, 7)],
    ]
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["history"] == log and ckpt["epoch"] == 6
    ce_min = load_checkpoint(tmp_path / "ce_min.pt", CE_MIN_KEYS)["model"]
    key = "decoder.layer1.weight"  # five IB-Focal epochs of + 0.01 from epoch 1's weights
    assert torch.allclose(ckpt["model"][key], ce_min[key] + 0.05, atol=1e-6)


def test_every_epoch_logs_how_far_it_moved_the_weights(tmp_path, monkeypatch):
    """``weights_moved``: ||w_end - w_start|| / ||w_start|| over the epoch's parameters, against a direct
    computation from copies taken at each training pass (CE epochs, the discarded one and IB epochs alike)."""
    _scripted_training(monkeypatch, [2.0, 2.5, 1.0, 1.0, 1.0])
    scripted, starts = picie.train_pass, []

    def recording(model, *args, **kwargs):
        starts.append(torch.cat([p.detach().flatten().double().clone() for p in model.parameters()]))
        return scripted(model, *args, **kwargs)

    monkeypatch.setattr(picie, "train_pass", recording)
    model = picie.build_model(_cfg(), "cpu")
    summary = train(_cfg(loss="ib_focal"), tmp_path)
    log = read_jsonl(tmp_path / "log.jsonl")
    shift = torch.full_like(starts[0], 0.01)  # what each scripted epoch adds to every parameter
    expected = [float(shift.norm() / w.norm()) for w in starts]
    assert [r["weights_moved"] for r in log] == pytest.approx(expected, rel=1e-6)
    assert len(starts) == len(log) == 5 and sum(p.numel() for p in model.parameters()) == len(shift)
    assert summary["weights_moved_per_epoch"]["ce"] == pytest.approx(expected[0])  # the discarded epoch left out
    assert summary["weights_moved_per_epoch"]["ib_focal"] == pytest.approx(sum(expected[2:]) / 3)


def test_the_default_ib_phase_trains_where_the_literal_rate_drop_freezes_it(tmp_path):
    """Adam's rate kept and its moments restarted (the defaults): an IB-Focal epoch moves the weights about as far
    as a CE epoch; the IB authors' 100x drop carried over to Adam (factor 0.01, moments kept) moves them far less."""
    ratios = {}
    for name, changes in {"default": {}, "literal": {"ib_lr_factor": 0.01, "ib_reset_optimizer": False}}.items():
        summary = train(_cfg(loss="ib_focal", switch=1, **changes), tmp_path / name)
        moved = summary["weights_moved_per_epoch"]
        ratios[name] = moved["ib_focal"] / moved["ce"]
    assert ratios["default"] > 0.25 and ratios["literal"] < ratios["default"] / 10


def test_min_loss_ends_where_a_switch_at_the_minimum_ends(tmp_path, monkeypatch):
    _scripted_training(monkeypatch, [2.0, 1.5, 1.7, 1.0, 1.0])
    train(_cfg(loss="ib_focal"), tmp_path / "min_loss")
    _scripted_training(monkeypatch, [2.0, 1.5, 1.0, 1.0])
    train(_cfg(loss="ib_focal", switch=2), tmp_path / "fixed")
    a = load_checkpoint(tmp_path / "min_loss" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "fixed" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    phases = [r["phase"] for r in read_jsonl(tmp_path / "fixed" / "log.jsonl")]
    assert phases == ["ce", "ce", "ib_focal", "ib_focal"]


def test_non_finite_loss_stops_with_a_named_term_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    real = picie.make_criterion
    calls = {"n": 0}

    def poisoned(cfg, phase, ib_alpha=None):
        calls["n"] += 1
        crit = real(cfg, phase, ib_alpha)
        return (lambda z, t, f, w: crit(z, t, f, w) * float("nan")) if calls["n"] == 2 else crit

    monkeypatch.setattr(picie, "make_criterion", poisoned)
    with pytest.raises(NonFiniteLoss, match="epoch 2, batch 1, term\\(s\\) across_1, across_2, within_1, within_2"):
        train(_cfg(loss="ce"), tmp_path)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1


def test_resume_ends_where_an_uninterrupted_run_ends(ce_run, tmp_path, monkeypatch):
    out, _ = ce_run
    real = picie.cluster_pass
    calls = {"n": 0}

    def dies_in_epoch_2(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(picie, "cluster_pass", dies_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(loss="ce"), tmp_path)
    monkeypatch.setattr(picie, "cluster_pass", real)
    train(_cfg(loss="ce"), tmp_path, resume=True)
    a, b = load_checkpoint(out / "checkpoint.pt")["model"], load_checkpoint(tmp_path / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in read_jsonl(tmp_path / "log.jsonl")] == [1, 2]


def test_resume_before_the_first_checkpoint_starts_again(tmp_path, monkeypatch):
    real = picie.cluster_pass

    def dies(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(picie, "cluster_pass", dies)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(loss="ce", epochs_ce=1), tmp_path)
    assert (tmp_path / "config.json").is_file() and not (tmp_path / "checkpoint.pt").exists()
    monkeypatch.setattr(picie, "cluster_pass", real)
    with pytest.raises(ValueError, match="different configuration"):
        train(_cfg(loss="ce", epochs_ce=1, lr=0.5), tmp_path, resume=True)
    train(_cfg(loss="ce", epochs_ce=1), tmp_path, resume=True)
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 1


def test_resume_refuses_a_different_configuration(ce_run, tmp_path):
    out, _ = ce_run
    import shutil

    shutil.copytree(out, tmp_path / "run")
    with pytest.raises(ValueError, match="different configuration.*lr"):
        train(_cfg(loss="ce", lr=0.5), tmp_path / "run", resume=True)


def test_focal_uses_its_own_class_weights(tmp_path):
    # Focal ignores `balance` (the CE weights); `focal_balance` (default none) is what it uses
    train(_cfg(loss="focal", epochs_focal=1, balance="picie"), tmp_path / "a")
    train(_cfg(loss="focal", epochs_focal=1, balance="none"), tmp_path / "b")
    train(_cfg(loss="focal", epochs_focal=1, focal_balance="inverse"), tmp_path / "c")
    a, b, c = (load_checkpoint(tmp_path / n / "checkpoint.pt")["model"] for n in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_a_matched_alpha_makes_the_ib_focal_loss_equal_ces_on_the_first_step(tmp_path):
    """``ib_alpha_match``: the alpha chosen at the switch puts IB-Focal's loss on the IB phase's first training
    batch at CE's, both computed here from the losses themselves on that batch's features; the run keeps it."""
    from picie_lib.losses import class_weights, ib_focal_loss
    from picie_lib.model import bn_mode

    cfg = _cfg(loss="ib_focal", switch=1, ib_alpha_match=True)
    train(cfg, tmp_path)
    log = read_jsonl(tmp_path / "log.jsonl")
    alphas = {r["ib_alpha"] for r in log if r["phase"] == "ib_focal"}
    assert len(alphas) == 1 and "ib_alpha" not in log[0]
    alpha = alphas.pop()
    # the first IB epoch (2) as the run drew it: the switch's weights, the epoch's views, clusters and labels
    model = picie.build_model(cfg, "cpu")
    model.load_state_dict(load_checkpoint(tmp_path / "switch.pt", SWITCH_KEYS)["model"])
    dataset = build_dataset(cfg, "train", mode="train")
    views = torch.Generator().manual_seed(picie.derive_seed(cfg.seed, 2, picie.STREAM_VIEWS))
    dataset.set_view_params(draw_view_params(len(dataset), cfg, views))
    order = picie.permutation(len(dataset), picie.derive_seed(cfg.seed, 2, picie.STREAM_CLUSTER_ORDER))
    centroids, _, _ = picie.cluster_pass(
        model, dataset, order, cfg, picie.derive_seed(cfg.seed, 2, picie.STREAM_KMEANS)
    )
    labels, counts = picie.label_pass(model, dataset, order, centroids, cfg)
    train_order = picie.permutation(len(dataset), picie.derive_seed(cfg.seed, 2, picie.STREAM_TRAIN_ORDER))
    idx, views = next(iter(loader.Batches(dataset, train_order[: cfg.batch_size_train], cfg.batch_size_train, cfg)))
    with torch.no_grad(), bn_mode(model, "batch"):
        features = picie.batch_features(model, dataset, idx, views, cfg)
    targets = [labels[v, idx].long().reshape(-1) for v in (0, 1)]

    def four_terms(loss, balance):  # across_1, across_2, within_1, within_2: (features' view, clusters' view)
        weights = [class_weights(c, balance) for c in counts]
        terms = []
        for f, v in ((features[0], 1), (features[1], 0), (features[0], 0), (features[1], 1)):
            logits = torch.einsum("bdhw,kd->bhwk", f, centroids[v]).reshape(-1, cfg.n_clusters) / cfg.temperature
            terms.append(loss(logits, targets[v], f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]), weights[v]))
        return float(sum(terms) / 4)

    ce = four_terms(lambda z, t, h, w: cross_entropy(z, t, weight=w), cfg.balance)
    ib = four_terms(
        lambda z, t, h, w: ib_focal_loss(z, t, h, alpha=alpha, gamma=cfg.ib_gamma, weight=w), cfg.ib_balance
    )
    assert ib == pytest.approx(ce, rel=1e-4) and alpha != cfg.ib_alpha
