"""Progress bars that read well in a terminal, in JupyterLab and in a papermill or CI log."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def in_notebook() -> bool:
    """True inside a Jupyter kernel (JupyterLab, papermill, nbval), False in a terminal or a script."""
    shell = sys.modules.get("IPython") and sys.modules["IPython"].get_ipython()
    return bool(shell) and type(shell).__name__ == "ZMQInteractiveShell"


def progress(iterable: Iterable[T], desc: str, total: int | None = None, leave: bool = False) -> Iterable[T]:
    """A tqdm bar. In a Jupyter kernel a live widget bar; in a terminal a text bar; elsewhere (a CI log)
    plain ASCII lines at most every 30 s. PICIE_PROGRESS=0 turns bars off: ``pipeline.execute`` sets it
    for the notebooks it runs headless, so their saved outputs hold results, not bars."""
    if os.environ.get("PICIE_PROGRESS", "1") == "0" or os.environ.get("RANK", "0") != "0":
        return iterable  # under torchrun only rank 0 draws bars
    if in_notebook():
        from tqdm.notebook import tqdm as notebook_tqdm

        return notebook_tqdm(iterable, desc=desc, total=total, leave=leave)
    tty = sys.stderr.isatty()
    return tqdm(
        iterable,
        desc=desc,
        total=total,
        leave=leave or not tty,
        dynamic_ncols=tty,
        ascii=not tty,
        mininterval=0.2 if tty else 30.0,
        position=None if tty else 0,
        file=sys.stderr,
    )
