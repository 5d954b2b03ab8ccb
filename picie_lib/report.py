"""``report.md`` of ``python -m picie_lib run``: the comparison table and claims, every figure the notebooks
saved with what to look for in it, the notebooks' seconds; and the runtime line under each notebook's title
(``runtimes.json``, refreshed only by ``python -m picie_lib runtimes DIR``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from picie_lib.config import (
    LOSS_NAMES,
    LOSSES,
    METHOD_NAMES,
    RUNTIME_KEYS,
    Config,
    differences,
    load_config,
    load_preset,
)
from picie_lib.notebook import NOTEBOOK_DIR
from picie_lib.plots import reading_path
from picie_lib.runs import atomic_write_text, read_json, write_json
from picie_lib.takeaways import conclusion

RUNTIMES = NOTEBOOK_DIR / "runtimes.json"  # seconds per notebook on the demo preset, committed (publish_runtimes)
RUNTIME_MARK = "*Runtime on the "


def runtime_line(notebook: str, table: dict) -> str:
    """The line under a notebook's title that says how long it took, from ``runtimes.json``."""
    runs = {name: s for name, s in table["per_notebook"].items() if name.split("-")[0] == notebook}
    if not runs:
        return ""
    if list(runs) == [notebook]:
        took = f"{runs[notebook]:.0f} s"
    else:  # once per method and seed: "05_train-ce-seed0"
        took = ", ".join(f"{LOSS_NAMES.get(name.split('-')[1], name)} {s:.0f} s" for name, s in runs.items())
    return (
        f"{RUNTIME_MARK}`{table['preset']}` preset, {table['machine']}: {took} "
        f"(`python -m picie_lib run`, {table['date']}; whole run {table['wall_seconds'] / 60:.1f} min).*"
    )


def runtimes_table(timings: dict[str, float], wall: float, preset: str, overrides: dict) -> dict:
    """The seconds of one ``run``: per notebook, the whole run, the machine and the date, and what ran
    (``preset``, ``overrides``); ``run`` writes it as ``DIR/runtimes.json``."""
    import datetime

    machine = f"{os.cpu_count()} CPU cores" + (
        f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    )
    return {
        "preset": preset,
        "overrides": overrides,
        "machine": machine,
        "date": datetime.date.today().isoformat(),
        "wall_seconds": wall,
        "per_notebook": timings,
    }


def publish_runtimes(run_dir: Path, folder: Path = NOTEBOOK_DIR) -> dict:
    """``python -m picie_lib runtimes DIR``: make the runtimes of a finished ``run --preset demo`` (without
    -p) the committed ones: ``runtimes.json`` in ``folder`` and the runtime line of every notebook there.
    A deliberate step, never a side effect of a run, so that running the project changes no tracked file."""
    path = Path(run_dir) / RUNTIMES.name
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no runtimes there; a whole `python -m picie_lib run` writes them")
    table = read_json(path)
    ran = differences(load_config(Path(run_dir) / "config.json").to_dict(), load_preset("demo"), RUNTIME_KEYS)
    if ran:  # what the run's own parameters say, not the table's words
        raise ValueError(
            f"{run_dir} ran other parameters than the demo preset's ({'; '.join(ran[:3])}); the notebooks state the "
            "demo preset's runtimes as shipped (`python -m picie_lib run --preset demo`)"
        )
    if table.get("preset") != "demo" or table.get("overrides"):
        raise ValueError(
            f"{path}: a run of preset {table.get('preset')!r} with overrides {table.get('overrides') or {}}; the "
            "notebooks state the demo preset's runtimes as shipped (`python -m picie_lib run --preset demo`)"
        )
    update_runtimes(table, folder)
    return table


def update_runtimes(table: dict, folder: Path = NOTEBOOK_DIR) -> None:
    """Write ``table`` as ``runtimes.json`` in ``folder`` and rewrite every notebook's runtime line there."""
    import nbformat

    write_json(folder / RUNTIMES.name, {k: v for k, v in table.items() if k != "overrides"})
    for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        title = nb.cells[0]
        kept = [line for line in title.source.splitlines() if not line.startswith(RUNTIME_MARK)]
        while kept and not kept[-1].strip():
            kept.pop()
        line = runtime_line(path.stem, table)
        title.source = "\n".join([*kept, "", line] if line else kept)
        atomic_write_text(path, nbformat.writes(nb) + "\n")


CAPTIONS = {  # the figures the notebooks save under DIR/figures, in the report's order
    "07_figure2": "Examples as the paper's Figure 2: image, ground truth, CE, Focal, IB-Focal (07_compare)",
    "07_protocols": "Thing and Stuff by the three protocols, on the same predictions (07_compare)",
    "07_gains_over_ce": "Per-class IoU gain over PiCIE (CE), things and stuff (07_compare)",
    "01_class_frequency": "Pixel frequency per class (01_data)",
    "01_samples": "Samples and their labels (01_data)",
    "02_views": "PiCIE's two views (02_views)",
    "02_equivariant_features": "Equivariance: both views' feature maps, before and after training (02_views)",
    "03_clusters": "Clusters of the reference points, named by the Hungarian matching (03_clustering)",
    "03_confusion": "Confusion of the network before training (03_clustering)",
    "04_losses": "CE, Focal and IB-Focal (04_losses)",
    "04_temperature": "Why cosine logits blunt Focal (04_losses)",
    "04_optimizers": "A constant factor on the loss: SGD's step grows with it, Adam's does not (04_losses)",
}
RUN_FIGURES = {  # what 05_train and 06_evaluate save in each run's figures/
    "loss_curves": "training curves (05_train)",
    "per_class_iou": "IoU per class (06_evaluate)",
    "oversegmentation": "effective clusters per class (06_evaluate)",
    "confusion": "confusion heat map (06_evaluate)",
    "examples": "examples (06_evaluate)",
}


def _figure_lines(out_dir: Path, figure: Path, caption: str) -> list[str]:
    """A figure of the report: caption, image and, when its notebook saved one, what to look for."""
    lines = [f"**{caption}**", "", f"![{figure.stem}]({figure.as_posix()})", ""]
    reading = out_dir / reading_path(figure)
    if reading.is_file():
        lines += [f"*What to look for.* {reading.read_text().strip()}", ""]
    return lines


def report_markdown(out_dir: Path, cfg: Config, wall: float, timings: dict[str, float]) -> str:
    """The report: the comparison table and claims (07_compare's results.md), the figures, each with
    what to look for in it, and the notebooks."""
    results = (out_dir / "results.md").read_text()
    lines = [
        results.replace("# PiCIE with CE, Focal and IB-Focal: results", "# PiCIE with CE, Focal and IB-Focal: report"),
        *_figure_lines(out_dir, Path("results.png"), "Table 2, ours beside the paper's"),
        "## Figures",
        "",
    ]
    saved = {p.stem: p for p in sorted((out_dir / "figures").glob("*.png"))}
    names = [n for n in CAPTIONS if n in saved] + [n for n in saved if n not in CAPTIONS]
    for name in names:
        lines += _figure_lines(out_dir, Path("figures") / saved[name].name, CAPTIONS.get(name, name))
    for stem, caption in RUN_FIGURES.items():
        for loss in LOSSES:
            figure = Path(f"{loss}-seed{cfg.seeds[0]}") / "figures" / f"{stem}.png"
            if (out_dir / figure).is_file():
                lines += _figure_lines(out_dir, figure, f"{METHOD_NAMES[loss]}, seed {cfg.seeds[0]}: {caption}")
    lines += ["## Notebooks (executed)", "", "| Notebook | Seconds | HTML |", "|---|---|---|"]
    lines += [f"| {n} | {s:.0f} | [html](notebooks/{n}.html) |" for n, s in timings.items()]
    lines += [
        "",
        f"Wall time: {wall / 60:.1f} min. Parameters: `config.json` (dataset {cfg.dataset}, res {cfg.res}, "
        f"seeds {cfg.seeds}); versions: `environment.json`; seconds per notebook: `timings.json`.",
        "",
    ]
    if (out_dir / "claims.json").is_file():
        rows, claims = (read_json(out_dir / f"{n}.json", list, "a list") for n in ("results", "claims"))
        lines += ["## Conclusion of this run", "", conclusion(rows, claims), ""]
    return "\n".join(lines)
