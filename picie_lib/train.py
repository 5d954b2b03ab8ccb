"""Training one run (``python -m picie_lib train``): the run's folder, resume, the epochs, the IB-Focal
switch and a checkpoint at the end of every epoch. The epoch itself is ``picie.run_epoch``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from picie_lib import distributed
from picie_lib.checkpoints import (
    CE_MIN_KEYS,
    CHECKPOINT_FORMAT,
    RUN_FILES,
    SWITCH_KEYS,
    check_same_config,
    check_same_processes,
    invalidate_evaluation,
    load_checkpoint,
    load_state,
)
from picie_lib.config import Config, load_config, save_config
from picie_lib.data import SceneDataset, build_dataset
from picie_lib.data.base import warn_skipped
from picie_lib.distributed import resolve_device
from picie_lib.model import load_backbone_state_dict
from picie_lib.picie import build_model, run_epoch
from picie_lib.pretext import resolve_pretrained
from picie_lib.progress import progress
from picie_lib.run_folder import discard_run, exclusive, new_run_dir, unlink_own
from picie_lib.runs import append_jsonl, atomic_torch_save, atomic_write_text, json_text, record_session, write_json
from picie_lib.schedule import Schedule, set_phase


def _record_session(out_dir: Path, trains: bool) -> None:
    """Add this session to ``environment.json``; when it will train, warn if the git commit or torch
    version changed since the last session (the epochs from here may then not repeat the numbers)."""
    changed = record_session(out_dir, **distributed.session_facts())
    if changed and trains:
        warnings.warn(
            f"{out_dir}: resuming with {'; '.join(changed)}: the epochs from here may not repeat the numbers an "
            "uninterrupted run would give (environment.json keeps every session's versions)",
            stacklevel=3,
        )


def train(
    cfg: Config,
    out_dir: Path,
    resume: bool = False,
    overwrite: bool = False,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Train one run into ``out_dir``: config.json, environment.json, log.jsonl (one line per
    epoch), checkpoint.pt (rewritten atomically at the end of every epoch) and summary.json.
    ``on_epoch(record)`` is called after every epoch's checkpoint (e.g. to draw live curves).
    The folder is this job's alone while it runs (``run_folder.exclusive``); training that goes on removes
    the scores of earlier weights (``invalidate_evaluation``)."""
    cfg.check_runnable()  # a bad device, data set or backbone stops here, before --out exists or is cleared
    device = resolve_device(cfg.device)
    dataset = build_dataset(cfg, "train", mode="train")
    check_data(cfg, dataset)
    model = build_model(cfg, device)
    out_dir, main = Path(out_dir), distributed.is_main()
    with exclusive(out_dir) if main else contextlib.nullcontext():  # rank 0 writes
        from_checkpoint = resume and (out_dir / "checkpoint.pt").exists()
        made_here = not from_checkpoint and _start_run_folder(cfg, out_dir, resume, overwrite)
        try:
            return _train(cfg, dataset, model, out_dir, from_checkpoint, on_epoch)
        except ValueError:  # bad input found on the way (every image unreadable): the run could never run
            if made_here and main and not (out_dir / "checkpoint.pt").is_file():
                discard_run(out_dir)  # nothing worth keeping: the corrected command may use the same --out
            raise  # a full disk or a non-finite loss keeps the folder: --resume starts it again


def _start_run_folder(cfg: Config, out_dir: Path, resume: bool, overwrite: bool) -> bool:
    """Make ``out_dir`` a new run's folder (``new_run_dir``) and return True; or, for ``--resume`` before
    the run's first checkpoint (same configuration), start that run again in its folder and return False."""
    if resume and (out_dir / "config.json").is_file():
        if any(p.is_dir() and (p / "config.json").is_file() for p in out_dir.iterdir()):
            raise ValueError(
                f"{out_dir} holds the runs of a comparison or of the notebooks, not one training run; continue it "
                "with the command that made it (`compare` or `run` with --resume), or choose another --out"
            )
        check_same_config(load_config(out_dir / "config.json").to_dict(), cfg, out_dir / "config.json")
        if distributed.is_main():
            for name in RUN_FILES:
                unlink_own(out_dir, name)
        return False
    if distributed.is_main():
        new_run_dir(out_dir, overwrite=overwrite)
    return True


def check_before_writing(cfg: Config, losses: tuple[str, ...]) -> None:
    """What would stop a training of ``losses`` on ``cfg``, checked before a job that trains several (``compare``,
    ``run``) clears or writes its folder: the joined parameters, the data, the backbone."""
    cfg.check_runnable(losses)
    check_data(cfg, build_dataset(cfg, "train", mode="eval"))
    check_backbone(cfg)


def check_backbone(cfg: Config) -> None:
    """The backbone weights ``pretrained`` names load (a file that is there and holds a ResNet-18, the
    ImageNet weights downloadable or cached): checked before a job clears or writes its folder. Rank 0
    alone, which trains the pretext backbone once if it is not cached yet."""
    if cfg.pretrained is not None and distributed.is_main():
        load_backbone_state_dict(resolve_pretrained(cfg.pretrained))


def check_data(cfg: Config, dataset) -> None:
    """What a run's data must allow, checked before anything is written: images to train on, and at
    least ``n_clusters`` pixels in the k-means' initial fit (training's, and the evaluation's, which
    takes the same number of batches of the same size from the train split)."""
    if len(dataset) == 0:
        raise ValueError(f"dataset={cfg.dataset}: its train split holds no image ({cfg.data_root or 'built in'})")
    images = min(cfg.kmeans_init_batches * cfg.batch_size_cluster * distributed.world(), len(dataset))
    points = images * (cfg.res // 4) ** 2
    if cfg.kmeans_max_init_points is not None:
        points = min(points, cfg.kmeans_max_init_points)
    if points < cfg.n_clusters:
        raise ValueError(
            f"n_clusters={cfg.n_clusters}: the k-means' initial fit holds {points} pixels ({images} images of "
            f"{cfg.res // 4} x {cfg.res // 4} features), fewer than the clusters; expected n_clusters <= {points}, "
            "or more kmeans_init_batches, batch_size_cluster or res"
        )


def _train(cfg: Config, dataset: SceneDataset, model, out_dir: Path, from_checkpoint: bool, on_epoch) -> dict:
    """The epochs from the first one not yet done to the last, each ending in a log line and a checkpoint.
    With IB-Focal's ``switch: min_loss`` (or ``global_min``), the CE epochs past the minimum are discarded and
    training goes on from the minimum's weights (``Schedule``): the loop goes back to the epoch after it."""
    main, epochs = distributed.is_main(), cfg.epochs_for()
    run = {"optimizer": torch.optim.Adam(model.parameters(), lr=cfg.lr), "schedule": Schedule(cfg, epochs)}
    # history: log.jsonl's lines, also kept in every checkpoint; at_switch: the weights IB-Focal started from
    run.update(start=1, history=[], ce_min=None, at_switch=None)
    if from_checkpoint:
        _restore(run, model, cfg, out_dir)
    if main:
        if run["start"] <= epochs:  # these weights will change: no score of the earlier ones may stay beside them
            invalidate_evaluation(out_dir)
        save_config(cfg, out_dir / "config.json")
        _record_session(out_dir, trains=run["start"] <= epochs)
    # the training step goes through DDP (gradients averaged over the processes); the other passes use the
    # model itself, and BatchNorm's statistics are averaged after every pass that moves them
    trained = distributed.data_parallel(model, next(model.parameters()).device) if distributed.joined() else model
    run_start, epoch = time.perf_counter(), run["start"]
    bar = progress(None, f"{cfg.loss} epochs run", total=epochs - run["start"] + 1)
    while epoch <= epochs:
        record, next_epoch, centroids = _epoch(run, model, trained, dataset, cfg, epoch, out_dir)
        if bar is not None and record.get("discarded"):  # the loop goes back to the epoch after the minimum
            bar.total += epoch - run["schedule"].ce_min_epoch
        if main:
            _write_epoch(cfg, model, run, record, next_epoch - 1, centroids, out_dir)
            if on_epoch is not None:
                on_epoch(record)
        if bar is not None:
            bar.update()
        epoch = next_epoch
    if bar is not None:
        bar.close()
    return _finish(cfg, out_dir, run, time.perf_counter() - run_start)


def _epoch(run: dict, model, trained, dataset: SceneDataset, cfg: Config, epoch: int, out_dir: Path):
    """One epoch in its phase, then the schedule's step (``Schedule.end_of_epoch``): the weights at the CE minimum
    kept, or, past it, restored with every CE epoch after it discarded. Returns the epoch's log record, the
    next epoch and the epoch's centroids."""
    schedule = run["schedule"]
    phase, lr, run["optimizer"] = set_phase(run["optimizer"], model, cfg, schedule, epoch)
    if phase == "ib_focal" and epoch == schedule.switch_epoch:
        _keep_switch_weights(run, model, epoch, out_dir)
    start_weights = _parameters(model)
    result = run_epoch(model, trained, run["optimizer"], dataset, cfg, epoch, phase, schedule.ib_alpha)
    result["moved"] = relative_change(model, start_weights)
    if phase == "ib_focal":
        schedule.ib_alpha = result["ib_alpha"]
        if run["at_switch"] is not None:
            result["moved_since_switch"] = relative_change(model, run["at_switch"]["model"])
    action = schedule.end_of_epoch(epoch, result["stats"]["loss"])
    next_epoch = epoch + 1
    if action == "new_min":  # the weights at the CE minimum so far, for the switch
        run["ce_min"] = _snapshot(model, run["optimizer"], epoch)
        if distributed.is_main():
            atomic_torch_save(run["ce_min"], out_dir / "ce_min.pt")
    elif action == "restore":  # the minimum has passed: its weights go on with IB-Focal
        model.load_state_dict(run["ce_min"]["model"])
        run["optimizer"].load_state_dict(run["ce_min"]["optimizer"])
        next_epoch = schedule.switch_epoch
        for earlier in run["history"]:  # global_min: the CE epochs between the minimum and this one
            if earlier["phase"] == "ce" and earlier["epoch"] > schedule.ce_min_epoch:
                earlier["discarded"] = True
    record = epoch_record(epoch, phase, lr, result, schedule, discarded=action == "restore")
    run["history"].append(record)
    return record, next_epoch, result["centroids"]


def _write_epoch(cfg: Config, model, run: dict, record: dict, epoch: int, centroids, out_dir: Path) -> None:
    """The epoch's log line, then the checkpoint after ``epoch`` (the log first: a run killed in between redoes
    the epoch). A restore rewrites the log, whose earlier epochs it discarded."""
    if record.get("discarded"):
        atomic_write_text(out_dir / "log.jsonl", "".join(json_text(r) + "\n" for r in run["history"]))
    else:
        append_jsonl(out_dir / "log.jsonl", record)
    atomic_torch_save(_checkpoint(cfg, model, run, epoch, centroids), out_dir / "checkpoint.pt")


def _restore(run: dict, model, cfg: Config, out_dir: Path) -> None:
    """Continue from ``checkpoint.pt``: the weights, Adam's state, the schedule, the log (lines of an epoch
    that did not finish are dropped) and, for the min_loss switch, the weights at the CE minimum."""
    path, epochs = out_dir / "checkpoint.pt", cfg.epochs_for()
    ckpt = load_checkpoint(path)
    check_same_config(ckpt["config"], cfg, path)
    run["start"] = ckpt["epoch"] + 1
    if run["start"] <= epochs:  # a finished run trains no more, whatever the number of processes
        check_same_processes(ckpt, path)
    load_state(model, ckpt["model"], path)
    load_state(run["optimizer"], ckpt["optimizer"], path)
    run["schedule"].load_state_dict(ckpt["schedule"])
    if (out_dir / "ce_min.pt").exists():
        run["ce_min"] = load_checkpoint(out_dir / "ce_min.pt", CE_MIN_KEYS)
    if (out_dir / "switch.pt").exists():
        run["at_switch"] = load_checkpoint(out_dir / "switch.pt", SWITCH_KEYS)
    run["history"] = list(ckpt["history"])
    if distributed.is_main():
        atomic_write_text(out_dir / "log.jsonl", "".join(json_text(r) + "\n" for r in run["history"]))


def _snapshot(model, optimizer, epoch: int) -> dict:
    """``ce_min.pt``: the weights and Adam's state at the end of ``epoch``."""
    return {
        "format": CHECKPOINT_FORMAT,
        "epoch": epoch,
        "model": copy.deepcopy(model.state_dict()),
        "optimizer": copy.deepcopy(optimizer.state_dict()),
    }


def _keep_switch_weights(run: dict, model, epoch: int, out_dir: Path) -> None:
    """``switch.pt``: the weights IB-Focal's first epoch starts from, to measure how far its phase moves them."""
    run["at_switch"] = {"format": CHECKPOINT_FORMAT, "epoch": epoch - 1, "model": copy.deepcopy(model.state_dict())}
    if distributed.is_main():
        atomic_torch_save(run["at_switch"], out_dir / "switch.pt")


def _parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's parameters (the weights ``relative_change`` measures from)."""
    return {name: weight.detach().clone() for name, weight in model.named_parameters()}


def relative_change(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> float:
    """||w - w_before|| / ||w_before|| over the model's parameters (all of them as one vector): how far
    training has moved the weights since ``before`` (a state dict)."""
    moved = total = 0.0
    for name, weight in model.named_parameters():
        old = before[name].to(weight.device, torch.float64)
        moved += float((weight.detach().double() - old).pow(2).sum())
        total += float(old.pow(2).sum())
    return math.sqrt(moved / total) if total > 0 else math.nan


def _checkpoint(cfg: Config, model, run: dict, epoch: int, centroids: torch.Tensor) -> dict:
    """``checkpoint.pt`` after ``epoch`` (the epoch whose weights these are)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "config": cfg.to_dict(),
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": run["optimizer"].state_dict(),
        "centroids": centroids.cpu(),
        "schedule": run["schedule"].state_dict(),
        "history": run["history"],
        "world_size": distributed.world(),
        "processes_per_node": distributed.processes_per_node(),
    }


def epoch_record(epoch: int, phase: str, lr: float, result: dict, schedule: Schedule, discarded: bool) -> dict:
    """The epoch's line of ``log.jsonl``: losses, k-means losses, cluster sizes, the learning rate, seconds
    per pass, files left out, and where the IB-Focal switch stands."""
    counts = result["counts"]
    record = {
        "epoch": epoch,
        "phase": phase,
        **result["stats"],
        "kmeans_loss": result["kmeans_loss"],
        "empty_clusters": [int((c == 0).sum()) for c in counts],
        "largest_cluster_share": [float(c.max() / c.sum()) for c in counts],
        "lr": lr,
        "weights_moved": result["moved"],  # relative L2 change over the epoch: does the phase train?
        "seconds": result["seconds"],
    }
    if result.get("ib_alpha") is not None:
        record["ib_alpha"] = result["ib_alpha"]
    if result["skipped"]:
        record["skipped_files"] = result["skipped"]
    if discarded:
        record["discarded"] = True  # its weights were dropped for the minimum's
    if "moved_since_switch" in result:  # relative L2 change of the weights since the switch
        record["weights_moved_since_switch"] = result["moved_since_switch"]
    if phase == "ce" and schedule.switch_epoch is not None:
        record["switch"] = {
            "ib_focal_from_epoch": schedule.switch_epoch,
            "weights_from_epoch": schedule.switch_epoch - 1,
        }
    return record


def movement_per_epoch(history: list[dict]) -> dict[str, float]:
    """Per phase, the mean relative L2 change of the weights over one of its kept epochs (``weights_moved``)."""
    kept = [r for r in history if not r.get("discarded") and "weights_moved" in r]
    return {
        phase: float(np.mean([r["weights_moved"] for r in kept if r["phase"] == phase]))
        for phase in dict.fromkeys(r["phase"] for r in kept)
    }


def _finish(cfg: Config, out_dir: Path, run: dict, seconds: float) -> dict:
    """``summary.json``: the epochs, the switch, seconds per pass and the files left out as bad."""
    history, main = run["history"], distributed.is_main()
    skipped = sorted({name for r in history for name in r.get("skipped_files", [])})
    if main:
        warn_skipped(skipped, "were left out of training (each epoch's are in log.jsonl)")
    summary = {
        "loss": cfg.loss,
        "seed": cfg.seed,
        "epochs": cfg.epochs_for(),
        **run["schedule"].state_dict(),
        "train_seconds_this_session": seconds,
        "seconds_per_pass": {k: sum(r["seconds"].get(k, 0.0) for r in history) for k in ("cluster", "label", "train")},
        "skipped_files": skipped,
    }
    moved = [r["weights_moved_since_switch"] for r in history if "weights_moved_since_switch" in r]
    if moved:  # IB-Focal: how far its phase moved the weights it started from (relative L2)
        summary["weights_moved_after_switch"] = moved[-1]
    summary["weights_moved_per_epoch"] = movement_per_epoch(history)
    if main:
        write_json(out_dir / "summary.json", summary)
    distributed.barrier()  # what rank 0 wrote is there for every process (evaluate reads it next)
    return summary
