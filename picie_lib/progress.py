"""Progress bars that read well both in a terminal and in a papermill or CI log."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def progress(iterable: Iterable[T], desc: str, total: int | None = None, leave: bool = False) -> Iterable[T]:
    """A tqdm bar. Off a terminal (papermill, CI) it redraws at most every 30 s as plain ASCII
    lines without cursor movements, so logs stay short and readable; PICIE_PROGRESS=0 turns bars off."""
    if os.environ.get("PICIE_PROGRESS", "1") == "0":
        return iterable
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
