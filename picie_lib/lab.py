"""JupyterLab on working copies, never on the tracked notebooks: ``make lab RUN=DIR`` opens the executed notebooks
of the run in DIR, copied once into ``DIR/lab/``; ``make lab`` alone a scratch copy of the templates in
``outputs/lab/``. JupyterLab's root is that folder, so its autosave writes there and nowhere else."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from picie_lib.notebook import NOTEBOOK_DIR
from picie_lib.run_folder import exclusive

SCRATCH = NOTEBOOK_DIR.parent / "outputs" / "lab"


def working_copy(run: Path | None = None, scratch: Path = SCRATCH) -> Path:
    """The folder JupyterLab opens: ``run/lab`` holding the run's executed notebooks (``run/notebooks``), or the
    templates where the run kept none; without a run, ``scratch`` holding the templates. A notebook already
    there is the student's and is kept as it is: only the missing ones are copied."""
    if run is not None and not (Path(run) / "config.json").is_file():
        raise FileNotFoundError(f"{run}: no config.json; expected the folder of a finished run (`make demo`, `run`)")
    folder = Path(run) / "lab" if run is not None else Path(scratch)
    executed = sorted((Path(run) / "notebooks").glob("[0-9][0-9]_*.ipynb")) if run is not None else []
    sources = executed or sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    with exclusive(folder):
        for source in sources:
            if not (folder / source.name).exists():
                shutil.copyfile(source, folder / source.name)
    return folder


def lab_command(folder: Path, root: bool | None = None) -> list[str]:
    """``jupyter lab`` on ``folder`` alone (its root: the tracked notebooks are out of its reach); as root, with
    ``--allow-root``."""
    root = os.getuid() == 0 if root is None else root
    lab = [sys.executable, "-m", "jupyter", "lab", f"--ServerApp.root_dir={Path(folder).resolve()}"]
    return lab + (["--allow-root"] if root else [])
