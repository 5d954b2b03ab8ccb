"""What the benchmarks measure with: wall time (waiting for the GPU), peak host and GPU memory."""

from __future__ import annotations

import contextlib
import resource
import time
from pathlib import Path

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


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Peaks:
    """Peak resident memory of this process (Linux ``VmHWM``, reset on entry through
    ``/proc/self/clear_refs``), of its finished child processes (data-loader workers), and peak GPU
    memory allocated by torch, over a ``with`` block; each in GiB (None where unmeasurable)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.host_gib = self.children_gib = self.gpu_gib = None

    def __enter__(self) -> Peaks:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc) -> None:
        synchronize(self.device)
        self.host_gib = _status_kib("VmHWM") / 2**20 or None
        # ru_maxrss of children: the largest finished child so far (KiB on Linux)
        self.children_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20 or None
        if self.device.type == "cuda":
            self.gpu_gib = torch.cuda.max_memory_allocated(self.device) / 2**30


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU, {torch.get_num_threads()} threads"
