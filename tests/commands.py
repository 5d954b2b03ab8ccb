"""``python -m picie_lib ...`` in a child process, as a user runs it (progress bars off)."""

import os
import subprocess
import sys

ENV = {**os.environ, "PICIE_PROGRESS": "0"}


def command(*args: str) -> list[str]:
    return [sys.executable, "-m", "picie_lib", *args]


def picie(*args: str, timeout: float, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command(*args), env=ENV, capture_output=True, text=True, timeout=timeout, **kwargs)
