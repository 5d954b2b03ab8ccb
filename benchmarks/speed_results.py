"""The table of ``device_check_speed.sh``: each step's exit code, the training command's seconds per pass and
images/s per epoch (from its log.jsonl), the views made on the device against those made per item on the CPU
(``views_check.py``'s lines), then the benchmark's own results.md (every pass three ways, float32 and bf16,
and the Table 2 estimate).

    python benchmarks/speed_results.py OUT_DIR N_IMAGES
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PASSES = ("cluster", "label", "train")


def epoch_rows(log: Path, images: int) -> list[dict]:
    """Per finished epoch of a run's log.jsonl (a line cut off by a kill is left out): the seconds of each
    pass and the images per second of the whole epoch."""
    rows = []
    for line in log.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        seconds = {name: record["seconds"].get(name, 0.0) for name in PASSES}
        rows.append({"epoch": record["epoch"], **seconds, "images_per_s": images / sum(seconds.values())})
    return rows


def exit_line(out: Path) -> str:
    """``exits.txt``'s steps and codes in a line; 124 is a step its timeout ended."""
    path = out / "exits.txt"
    steps = [line.split() for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    named = [f"{name} {code}" + (" (ended by its timeout)" if code == "124" else "") for name, code in steps]
    return "Exit codes: " + (", ".join(named) if named else "none recorded") + "."


def markdown(out: Path, images: int) -> str:
    log = out / "cli" / "log.jsonl"
    rows = epoch_rows(log, images) if log.is_file() else []
    lines = [exit_line(out), "", f"**The training command** (paper preset, CE, {images:,} images; `{out / 'cli'}`)", ""]
    if rows:
        lines += ["| epoch | cluster s | label s | train s | images/s per epoch |", "|---|---|---|---|---|"]
        for r in rows:
            cells = [f"{r[name]:.1f}" for name in PASSES]
            lines.append(f"| {r['epoch']} | {' | '.join(cells)} | {r['images_per_s']:.1f} |")
    else:
        lines.append("no epoch finished (no line in log.jsonl)")
    views = out / "views.txt"
    lines += ["", "**The views on the device against per item on the CPU**", ""]
    lines += [f"- {line}" for line in views.read_text().splitlines()] if views.is_file() else ["not measured"]
    bench = out / "epoch" / "results.md"
    lines += ["", "**benchmarks/epoch.py**", "", bench.read_text().strip() if bench.is_file() else "no results.md"]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(Path(sys.argv[1]), int(sys.argv[2])))
