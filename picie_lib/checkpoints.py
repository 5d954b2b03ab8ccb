"""A training run's files: the checkpoint's format and the checks that read it back, what a score records
about the weights it scored, and the evaluation files that training on makes stale.

``checkpoint.pt`` (rewritten at the end of every epoch) holds ``CHECKPOINT_KEYS`` of the types
``CHECKPOINT_TYPES`` names, and the number of processes that wrote it; ``ce_min.pt`` the weights at the
CE minimum (IB-Focal's ``switch: min_loss``); ``switch.pt`` the weights IB-Focal's phase started from.
All are read with ``weights_only=True``.
"""

from __future__ import annotations

from pathlib import Path

import torch

from picie_lib import distributed
from picie_lib.config import EVALUATION_KEYS, RUNTIME_KEYS, Config, differences, from_dict
from picie_lib.notebook import NOTEBOOK_DIR, absolute_paths
from picie_lib.run_folder import unlink_own
from picie_lib.runs import (
    first_line,
    load_tensors,
    weights_digest,
)

CHECKPOINT_FORMAT = "picie_lib.checkpoint/2"  # 2: the log is kept in the checkpoint

# Parameters that do not change what training computes; a resumed run may differ in them.
TRAINING_RUNTIME_KEYS = RUNTIME_KEYS | {"probe_epochs", *EVALUATION_KEYS}

RUN_FILES = ("log.jsonl", "checkpoint.pt", "ce_min.pt", "switch.pt", "summary.json")

# What an evaluation derives from the weights (``evaluate.write_evaluation``, 06_evaluate's figures): stale once
# training goes on, so removed then.
EVALUATION_FILES = ("metrics.json", "per_class.csv", "confusion.csv", "centroids.pt")

EVALUATION_FIGURES = ("per_class_iou", "oversegmentation", "confusion", "examples")


def invalidate_evaluation(run_dir: Path) -> None:
    """Remove the scores and figures of ``run_dir``'s earlier weights."""
    run_dir = Path(run_dir)
    for name in EVALUATION_FILES:
        unlink_own(run_dir, name)
    for stem in EVALUATION_FIGURES:
        for suffix in (".png", ".reading.md"):
            unlink_own(run_dir, f"figures/{stem}{suffix}")  # nothing through a figures/ that is a link


def checkpoint_record(ckpt: dict) -> dict:
    """What a score must say about the weights it scored: the checkpoint's epoch of the run's epochs, its
    last phase and loss, and the weights' SHA-256 (``runs.weights_digest``)."""
    cfg = from_dict(ckpt["config"], source="checkpoint")
    kept = [r for r in ckpt["history"] if not r.get("discarded")]
    return {
        "epoch": ckpt["epoch"],
        "epochs": cfg.epochs_for(),
        "finished": ckpt["epoch"] >= cfg.epochs_for(),
        "phase": kept[-1]["phase"] if kept else None,
        "loss": kept[-1]["loss"] if kept else None,
        "weights_sha256": weights_digest(ckpt["model"]),
    }


CHECKPOINT_KEYS = ("config", "epoch", "model", "optimizer", "centroids", "schedule", "history")  # checkpoint.pt

CE_MIN_KEYS = ("epoch", "model", "optimizer")  # ce_min.pt: the weights at the CE minimum

SWITCH_KEYS = ("epoch", "model")  # switch.pt: the weights IB-Focal's phase started from


def load_checkpoint(path: Path, keys: tuple[str, ...] = CHECKPOINT_KEYS) -> dict:
    """A checkpoint written by ``train``, holding ``keys`` of the types ``train`` writes; read with
    ``weights_only=True`` (no arbitrary unpickling). Anything else is a ``ValueError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint there (a run writes one at the end of every epoch)")
    ckpt = load_tensors(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a picie_lib checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    damaged = "it is damaged or was edited. Restore it from a copy, or train again with --overwrite"
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: the checkpoint lacks {', '.join(map(repr, missing))}; {damaged}")
    for key, problem in CHECKPOINT_TYPES.items():
        found = problem(ckpt[key]) if key in ckpt else None
        if found:
            raise ValueError(f"{path}: the checkpoint's {key!r} {found}; {damaged}")
    return ckpt


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _history_problem(history) -> str | None:
    """What is wrong with a checkpoint's history (one record per epoch, as ``train.epoch_record`` writes), or None."""
    if not isinstance(history, list):
        return "is not a list of epoch records"
    for i, record in enumerate(history):
        if not isinstance(record, dict):
            return f"record {i + 1} is not a mapping"
        for key, holds, expected in (
            ("epoch", _is_int, "an integer"),
            ("phase", lambda v: v in ("ce", "focal", "ib_focal"), "ce, focal or ib_focal"),
            ("loss", _is_number, "a number"),
        ):
            problem = _field_problem(record, key, holds, expected)
            if problem:
                return f"record {i + 1} {problem}"
    return None


def _schedule_problem(schedule) -> str | None:
    """What is wrong with a checkpoint's schedule (``Schedule.state_dict``), or None."""
    if not isinstance(schedule, dict):
        return "is not a mapping"
    for key, holds, expected in (
        ("best_loss", _is_number, "a number"),
        ("ce_min_epoch", lambda v: v is None or _is_int(v), "an epoch or null"),
        ("switch_epoch", lambda v: v is None or _is_int(v), "an epoch or null"),
        ("ib_alpha", lambda v: v is None or _is_number(v), "a number or null"),
    ):
        if key == "ib_alpha" and key not in schedule:  # a checkpoint from before alpha could be matched
            continue
        problem = _field_problem(schedule, key, holds, expected)
        if problem:
            return problem
    return None


STATE = "a state dict"


def _field_problem(mapping: dict, key: str, holds, expected: str) -> str | None:
    if key not in mapping:
        return f"lacks {key!r}"
    return None if holds(mapping[key]) else f"has {key} = {mapping[key]!r}, expected {expected}"


def _check(holds, expected: str):
    return lambda v: None if holds(v) else f"is not {expected}"


CHECKPOINT_TYPES = {  # what ``train`` writes under each key: a check that says what is wrong, or None
    "epoch": _check(lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "world_size": _check(lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "processes_per_node": _check(lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
    "config": _check(lambda v: isinstance(v, dict), "a mapping of parameters"),
    "model": _check(lambda v: isinstance(v, dict) and all(isinstance(t, torch.Tensor) for t in v.values()), STATE),
    "optimizer": _check(lambda v: isinstance(v, dict) and {"state", "param_groups"} <= set(v), "an optimizer state"),
    "history": _history_problem,
    "schedule": _schedule_problem,
}


def load_state(module, state: dict, path: Path) -> None:
    """``module.load_state_dict(state)``; a mismatch is one line naming the checkpoint."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: does not fit ({first_line(err)}); it is damaged or of another model") from None


def processes_line(world_size: int) -> str:
    return "1 process" if world_size == 1 else f"{world_size} processes (torchrun)"


def check_same_processes(ckpt: dict, path: Path) -> None:
    """A run's steps are split by the number of processes (``distributed.rank_batches``), so a resume with
    another number would change its result: refused, with the command that continues it."""
    saved, now = ckpt.get("world_size"), distributed.world()
    if saved is not None and saved != now:  # a checkpoint from before the count was kept: not known
        raise ValueError(
            f"{path} was written by {processes_line(saved)}; this job is {processes_line(now)}, and the split of "
            f"every step, so the result, depends on it. Continue with: "
            f"{distributed.command_line(saved, ckpt.get('processes_per_node', saved))}"
        )


def check_same_config(saved: dict, cfg: Config, path: Path) -> None:
    diff = differences(saved, cfg, TRAINING_RUNTIME_KEYS, saved_as="checkpoint")
    if diff:
        raise ValueError(f"{path} was written by a different configuration ({'; '.join(diff)})")


def evaluation_asked(run_dir: Path, saved: Config, cfg: Config) -> dict:
    """What ``cfg`` (a notebook's or a comparison's parameters) asks of the run that ``run_dir`` holds, trained
    with ``saved``: the evaluation parameters (``EVALUATION_KEYS``) to score its weights with where they
    differ, or, where a parameter that changes training differs, an error naming it: those weights are not
    the run asked for, and scoring them under the new name would be a silent no-op."""
    root = NOTEBOOK_DIR.parent  # a relative file parameter (`train --preset paper`) is read from there, as notebooks do
    saved, cfg = (c.replace(**absolute_paths(c, root)) for c in (saved, cfg))
    trained = differences(saved.to_dict(), cfg, TRAINING_RUNTIME_KEYS, saved_as="trained with")
    if trained:
        raise ValueError(
            f"{run_dir} holds a run of other training parameters ({'; '.join(trained)}); pick a new folder for "
            "this setting (out_dir or run_dir: it is trained there), or set the parameters back to the folder's"
        )
    return {k: getattr(cfg, k) for k in EVALUATION_KEYS if getattr(saved, k) != getattr(cfg, k)}
