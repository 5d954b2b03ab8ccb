"""What the notebooks call besides the library's modules: their parameters cell as a ``Config``
(``notebook_config``) and 00_setup's table of what this machine has (``setup_report``)."""

from __future__ import annotations

import math
import os
import platform
from pathlib import Path

import torch

from picie_lib.clustering import faiss, faiss_gpu_count, resolve_backend
from picie_lib.config import LOSS_NAMES, Config, load_config, load_preset
from picie_lib.distributed import resolve_device

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"


def absolute_paths(cfg: Config, base: Path) -> dict:
    """The file parameters of ``cfg`` that are relative paths, made absolute against ``base``."""
    paths = {}
    for key in ("data_root", "class_table", "pretrained"):
        value = getattr(cfg, key)
        named = key == "pretrained" and value in ("imagenet", "pretext")
        if value is not None and not named and not Path(value).is_absolute():
            paths[key] = str((base / value).resolve())
    return paths


def saved_config_of(folders: tuple[Path | str | None, ...]) -> Path | None:
    """The first ``config.json`` among ``folders``, then ``PICIE_NOTEBOOK_OUT`` (a run's or a comparison's, as
    `run`, `train` and `compare` save it; so a fresh ``out_dir`` in JupyterLab on a finished run keeps that run's
    parameters), None where none holds one."""
    for folder in (*folders, os.environ.get("PICIE_NOTEBOOK_OUT")):
        if folder is not None and (Path(folder) / "config.json").is_file():
            return Path(folder) / "config.json"
    return None


def parameters_source(preset: str | None, *folders: Path | str | None) -> str:
    """Where a notebook's parameters come from, in words: the preset named, else a folder's saved run."""
    saved = saved_config_of(folders) if preset is None else None
    return f"`{preset or 'smoke'}` preset" if saved is None else f"run saved in `{saved}`"


def notebook_config(preset: str | None, params: dict | None = None, *folders: Path | str | None, **fixed) -> Config:
    """The parameters cell's ``preset`` and ``params`` as a Config (``fixed`` = the notebook's own). With
    ``preset = None`` the base is the configuration saved in the first of ``folders`` that holds one (a finished
    run opened in JupyterLab: ``out_dir``, ``run_dir``), else the smoke preset; ``params`` change the base.
    Relative paths (a preset's ``data_root: data/cocostuff``) are read from the repository's root, where the
    commands run, not from notebooks/ where the kernel runs."""
    overrides = {**(params or {}), **{k: v for k, v in fixed.items() if v is not None}}
    saved = saved_config_of(folders) if preset is None else None
    cfg = load_config(saved).replace(**overrides) if saved is not None else load_preset(preset or "smoke", **overrides)
    return cfg.replace(**absolute_paths(cfg, NOTEBOOK_DIR.parent))


def outputs_folder(out_dir: Path | str, params: dict | None = None) -> Path:
    """Where a notebook writes: ``out_dir``, or, where ``params`` change a finished run saved there (its
    config.json; a "Try this" in JupyterLab on a run), a folder of that try's own, ``out_dir/tries/NAME`` named by
    what changed (``eval_seeds=8``): a try writes beside the run, never over its scores, figures or report."""
    out_dir = Path(out_dir)
    saved = out_dir / "config.json"
    if not params or not saved.is_file():
        return out_dir
    run = load_config(saved).to_dict()
    changed = {k: v for k, v in sorted(params.items()) if run.get(k) != (list(v) if isinstance(v, tuple) else v)}
    if not changed:
        return out_dir
    name = ",".join(f"{k}={v}" for k, v in changed.items())
    return out_dir / "tries" / "".join(c if c.isalnum() or c in "=,.-_" else "_" for c in name)


def scored_folders(out_dir: Path | str, params: dict | None, loss: str, seed: int, run_dir=None) -> tuple[Path, Path]:
    """06's two folders: the run whose weights it scores (``run_dir``, default ``out_dir/<loss>-seed<seed>``) and
    where its scores and figures go: the run's own folder, or the try's (``outputs_folder``) when ``params``
    change the finished run in ``out_dir`` and no ``run_dir`` of its own was given."""
    run = Path(run_dir) if run_dir is not None else Path(out_dir) / f"{loss}-seed{seed}"
    return run, run if run_dir is not None else outputs_folder(out_dir, params) / run.name


def setup_report(cfg: Config) -> list[dict]:
    """What 00_setup shows: each need, what was found, whether this preset needs it (``status``: ok,
    optional, missing) and what to do when it is missing."""
    cuda = torch.cuda.is_available()
    gpu_needed = cfg.dataset != "synthetic" or cfg.device == "cuda"  # real data takes hours on a CPU
    rows = [
        {"item": "python", "found": platform.python_version(), "status": "ok", "todo": ""},
        {"item": "torch", "found": torch.__version__, "status": "ok", "todo": ""},
        {
            "item": "GPU (CUDA)",
            "found": torch.cuda.get_device_name(0) if cuda else "none",
            "status": "ok" if cuda else ("missing" if gpu_needed else "optional"),
            "todo": "" if cuda else "the smoke and demo presets run on a CPU; real data needs a GPU",
        },
        {
            "item": "faiss",
            "found": f"{faiss.__version__}, {faiss_gpu_count()} GPU(s)" if faiss else "not installed",
            "status": "ok" if faiss else "optional",
            "todo": "" if faiss else "the torch k-means is used instead (pip install faiss-gpu)",
        },
    ]
    try:
        device = resolve_device(cfg.device)
        found, status, todo = f"{device} / {resolve_backend(cfg.kmeans_backend, device)}", "ok", ""
    except (RuntimeError, ImportError) as err:
        found, status, todo = "unusable", "missing", str(err)
    rows.append({"item": "device / k-means", "found": found, "status": status, "todo": todo})
    if cfg.dataset == "synthetic":
        rows.append(
            {"item": "data set", "found": "synthetic (built in, generated from the seed)", "status": "ok", "todo": ""}
        )
    else:
        root = Path(cfg.data_root or "")
        kind = {"cocostuff27": "cocostuff", "cityscapes27": "cityscapes"}.get(cfg.dataset, cfg.dataset)
        found = root.is_dir() and any(root.iterdir())
        rows.append(
            {
                "item": f"data set {cfg.dataset}",
                "found": f"{root}" if found else f"missing: {root}",
                "status": "ok" if found else "missing",
                "todo": "" if found else f"see docs/real-data.md; then python -m picie_lib prepare {kind} {root}",
            }
        )
    return rows


def setup_summary(rows: list[dict]) -> str:
    """One line under 00_setup's table: what this preset still needs."""
    missing = [r["item"] for r in rows if r["status"] == "missing"]
    optional = [r["item"] for r in rows if r["status"] == "optional"]
    if missing:
        return f"missing for this preset: {', '.join(missing)} (see the 'todo' column)"
    return "all set for this preset" + (f"; optional and absent: {', '.join(optional)}" if optional else "")


def training_summary(summary: dict) -> dict[str, str]:
    """``summary.json`` as 05_train shows it: each entry a phrase, no raw floats or dicts, nothing that only
    means "not applicable" (a CE run's infinite best loss, an absent switch)."""
    seconds = summary.get("seconds_per_pass", {})
    rows = {
        "method": LOSS_NAMES.get(summary.get("loss"), str(summary.get("loss"))),
        "seed": str(summary.get("seed")),
        "epochs": str(summary.get("epochs")),
        "seconds per pass": ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
        + f" ({sum(seconds.values()) / 60:.1f} min)",
    }
    if summary.get("switch_epoch") is not None:
        rows["IB-Focal from epoch"] = str(summary["switch_epoch"])
    if summary.get("ce_min_epoch") is not None and math.isfinite(summary.get("best_loss") or math.inf):
        rows["CE minimum"] = f"epoch {summary['ce_min_epoch']}, loss {summary['best_loss']:.3g}"
    if summary.get("weights_moved_after_switch") is not None:
        rows["weights moved after the switch"] = f"{100 * summary['weights_moved_after_switch']:.2g} % (relative L2)"
    for phase, moved in summary.get("weights_moved_per_epoch", {}).items():
        rows[f"weights moved per {LOSS_NAMES.get(phase, phase)} epoch"] = f"{100 * moved:.2g} % (relative L2)"
    skipped = summary.get("skipped_files") or []
    rows["files left out"] = f"{len(skipped)} (summary.json lists them)" if skipped else "none"
    return rows
