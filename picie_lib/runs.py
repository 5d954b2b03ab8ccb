"""Run directories: atomic files, provenance (parameters, versions, git commit) and timings."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


def _temporary_beside(path: Path) -> str:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, FILE_MODE)
    return tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it over: readers never see half a file, and
    the temporary file is removed on any failure (a full disk, an exception, SIGTERM, Ctrl-C). An
    ``OSError`` names ``path`` (``write()`` alone names no file)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temporary_beside(path)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)  # after os.replace there is nothing left to remove


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json_text(obj, indent=2) + "\n")


def json_text(obj: Any, indent: int | None = None) -> str:
    """Strict JSON (RFC 8259): a float that is not finite becomes null, never ``NaN`` or ``Infinity``,
    which Python writes by default and other JSON readers refuse."""
    return json.dumps(_finite(obj), indent=indent, allow_nan=False)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy and torch values
        return _finite(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def csv_text(rows: list[dict]) -> str:
    """Rows of dicts as CSV text; the columns are every key, in order of first appearance."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def atomic_torch_save(obj: Any, path: Path) -> None:
    """``torch.save`` through ``atomic_write_bytes``: serialised in memory first, so that a full disk is
    an ``OSError(ENOSPC)`` naming ``path`` (torch's own writer reports "unexpected pos")."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getbuffer())


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    try:
        with open(path, "a") as fh:
            fh.write(json_text(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    *complete, _unfinished = path.read_text().split("\n")  # a line a kill cut short has no newline yet
    return [json.loads(line) for line in complete if line.strip()]


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment() -> dict[str, Any]:
    """Versions and hardware, recorded next to every result."""
    versions = {"python": sys.version.split()[0], "torch": torch.__version__}
    for name in ("torchvision", "numpy", "scipy", "faiss"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            versions[name] = None
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {
        "versions": versions,
        "git_commit": git_commit(),
        "platform": platform.platform(),
        "cpu_threads": torch.get_num_threads(),
        "gpus": gpus,
    }


LOCK_NAME = ".lock"  # in every output folder a job holds (``exclusive``)
PROBE_PREFIX = ".probe."  # the file ``writable_folder`` writes and removes at once


class FolderInUse(FileExistsError):
    """Another job holds the output folder (``exclusive``)."""


@contextmanager
def exclusive(folder: Path, command: str | None = None) -> Iterator[Path]:
    """Hold ``folder`` for one job: an advisory lock (``fcntl.flock``) on ``folder/.lock``, taken at once
    or refused with the holder's PID and command, and released on any exit, a kill included (the
    operating system drops a dead process's locks). Each job locks the folders it writes into once; a
    second lock of the same folder, from any process, is refused. A forked data-loader worker shares the
    lock while it lives; they end with their epoch's iterator.

    Before anything is computed the folder must be writable (``writable_folder``); once the lock is
    held, the temporary files a killed job left (``remove_stale_temporaries``) are removed."""
    import fcntl

    folder = writable_folder(folder)
    handle = open(folder / LOCK_NAME, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise FolderInUse(f"{folder} is in use by {holder}; wait for it to finish or choose another --out") from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} ({command or ' '.join(['python', *sys.argv])})\n")
        handle.flush()
        remove_stale_temporaries(folder)
        yield folder
    finally:
        handle.close()


def writable_folder(folder: Path) -> Path:
    """Create ``folder`` if needed and prove it writable with a file that is removed at once, so that a
    read-only or full location, or an ``--out`` that is a file, stops a job before its work, not after."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file; expected a folder (choose another --out)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=PROBE_PREFIX, suffix=".tmp")
        try:
            os.write(fd, b"0")
        finally:
            os.close(fd)
            os.unlink(probe)
    except (FileExistsError, NotADirectoryError):  # a parent is a file
        raise NotADirectoryError(f"{folder}: a parent folder is a file; choose another --out") from None
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(folder)) from None
    return folder


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove the ``.NAME.*.tmp`` files of atomic writes that a killed job (SIGKILL, power loss) left in
    ``folder`` and its ``figures/``; the caller holds the folder's lock, so none of them is being written."""
    stale = [*Path(folder).glob(".*.tmp"), *Path(folder).glob("figures/.*.tmp")]
    stale = [p for p in stale if not p.name.startswith(PROBE_PREFIX)]  # another job's probe, gone at once
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def holds_a_run(path: Path) -> bool:
    """Whether ``path`` holds anything but its lock file."""
    path = Path(path)
    return path.is_dir() and any(p.name != LOCK_NAME for p in path.iterdir())


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and bytes: which weights a score belongs to."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def new_run_dir(path: Path, overwrite: bool = False) -> Path:
    """Create ``path`` for a new run. An existing non-empty folder is an error unless ``overwrite``."""
    path = Path(path)
    if holds_a_run(path) and not overwrite:
        raise FileExistsError(
            f"{path} already holds a run; choose a new --out, pass --resume to continue it or --overwrite to replace it"
        )
    path.mkdir(parents=True, exist_ok=True)
    return path


class Timer:
    """Named wall-clock timings: ``with timer("cluster"): ...``; ``timer.totals`` in seconds."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start
