"""The table of ``device_check_dist.sh``: per run (one process; torchrun with 1 process, NCCL on a GPU; with 2
processes, gloo; each named with the backend its training recorded), the seconds of each pass of the trained
epoch and of the evaluation, the exit code, how long the evaluation took to exit after writing its scores, and
the scores side by side.

    python benchmarks/dist_results.py OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# each run's title, and the backend the script asks for (the table names the one its training run recorded)
RUNS = {
    "single": ("one process", None),
    "nccl1": ("torchrun, 1 process", "nccl"),
    "gloo2": ("torchrun, 2 processes", "gloo"),
}


def title(run: Path, name: str, backend: str | None) -> str:
    """``name``, with the backend that joined the run's processes: as its ``environment.json`` recorded it (a
    CPU try of the script runs gloo where a GPU would run NCCL), or the one asked for where none is recorded."""
    env = run / "environment.json"
    if env.is_file():
        backend = json.loads(env.read_text())[-1].get("backend", backend)
    return name if backend is None else f"{name} ({backend})"


def main(out: Path) -> None:
    exits = {}
    for line in (out / "exits.txt").read_text().splitlines():
        name, code, start, end = line.split()
        exits[name] = (int(code), float(start), float(end))
    print(
        "| run | exit train / evaluate | cluster s | label s | train s | train command s | evaluation s |"
        " exit after scores s | All Acc | All mIoU |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, (run_title, asked) in RUNS.items():
        run = out / name
        log = run / "log.jsonl"
        seconds = json.loads(log.read_text().splitlines()[-1])["seconds"] if log.is_file() else {}
        metrics = run / "metrics.json"
        scores = json.loads(metrics.read_text()) if metrics.is_file() else {}
        train, evaluate = exits.get(f"train-{name}"), exits.get(f"evaluate-{name}")
        after = f"{evaluate[2] - metrics.stat().st_mtime:.1f}" if evaluate and metrics.is_file() else "-"

        def cell(value, fmt="{:.1f}"):
            return "-" if value is None else fmt.format(value)

        print(
            f"| {title(run, run_title, asked)} | {train[0] if train else '-'} / {evaluate[0] if evaluate else '-'} "
            f"| {cell(seconds.get('cluster'))} | {cell(seconds.get('label'))} | {cell(seconds.get('train'))} "
            f"| {cell(train[2] - train[1] if train else None)} | {cell(scores.get('seconds'))} | {after} "
            f"| {cell(scores.get('scores', {}).get('acc_all'), '{:.2f}')} "
            f"| {cell(scores.get('scores', {}).get('miou_all'), '{:.2f}')} |"
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
