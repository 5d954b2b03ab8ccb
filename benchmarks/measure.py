"""What the benchmarks measure with: wall time (waiting for the GPU), peak host and GPU memory."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path

import psutil
import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_seconds(step, device: torch.device, repeats: int) -> float:
    """The fastest of ``repeats`` timed calls of ``step`` (waiting for the GPU to finish each)."""
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def _peak_kib(pid: int | str = "self") -> int:
    """A process's peak resident memory (Linux ``VmHWM``) in KiB; 0 if it ended or cannot be read."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


class Peaks:
    """Peak resident memory of this process (Linux ``VmHWM``, reset on entry through
    ``/proc/self/clear_refs``), of the largest of its descendant processes (data-loader workers, which
    a fork server starts: grandchildren; sampled every 0.1 s), and peak GPU memory allocated by torch,
    over a ``with`` block; each in GiB (None where unmeasurable)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.host_gib = self.children_gib = self.gpu_gib = None
        self._stop = threading.Event()
        self._worker_kib = 0

    def _watch_descendants(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.1):
            for child in me.children(recursive=True):
                with contextlib.suppress(psutil.Error, OSError):  # a worker may end while it is read
                    command = " ".join(child.cmdline())  # a worker has its fork server's command line
                    helper = child.ppid() == me.pid and ("forkserver" in command or "resource_tracker" in command)
                    if not helper:
                        self._worker_kib = max(self._worker_kib, _peak_kib(child.pid))

    def __enter__(self) -> Peaks:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self._watcher = threading.Thread(target=self._watch_descendants, daemon=True)
        self._watcher.start()
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self._stop.set()
        self._watcher.join()
        self.host_gib = _peak_kib() / 2**20 or None
        self.children_gib = self._worker_kib / 2**20 or None
        if self.device.type == "cuda":
            self.gpu_gib = torch.cuda.max_memory_allocated(self.device) / 2**30


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"
