"""What a run writes: atomic files, logs, provenance (parameters, versions, git commit) and timings.
The folder itself (lock, manifest, ``--overwrite``) is ``run_folder``."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pickle
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from picie_lib.distributed import trace
from picie_lib.run_folder import FILE_MODE, own_fd, record_written


def temporary_beside(path: Path) -> str:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    os.chmod(tmp, FILE_MODE)
    return tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path`` and rename it over: readers never see half a file, and
    the temporary file is removed on any failure (a full disk, an exception, SIGTERM, Ctrl-C). An
    ``OSError`` names ``path`` (``write()`` alone names no file). The rename replaces a symbolic link at
    ``path`` itself, never the file it points to; the file is listed in its run's manifest first
    (``record_written``)."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        record_written(path)
        tmp = temporary_beside(path)
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
    """Append one line to ``path``, never through a symbolic link nor into a hard link (``run_folder.own_fd``)."""
    path = Path(path)
    try:
        record_written(path)
        fd = own_fd(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        with os.fdopen(fd, "a") as fh:
            fh.write(json_text(record) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(path)) from None


def first_line(err: BaseException) -> str:
    """The first line of an exception's text (torch's are often several, with a stack), without terminal
    colour codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err)).strip()
    return (text.splitlines() or [type(err).__name__])[0]


def load_tensors(path: Path) -> Any:
    """``torch.load(path)`` with ``weights_only=True`` (tensors and plain containers, never arbitrary
    objects); a refused or unreadable file is a ``ValueError`` of one line naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refuses anything but tensors and plain containers
        raise ValueError(
            f"{path}: refused, it holds objects other than tensors and plain data (weights_only loading: "
            f"{first_line(err)})"
        ) from None
    except (RuntimeError, EOFError, ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: unreadable, truncated or not a torch file ({first_line(err)})") from None


def read_json(path: Path, expected: type = dict, what: str = "a mapping") -> Any:
    """A JSON file a run wrote (metrics, summary, environment, timings), read whole: invalid JSON, text that is
    not UTF-8, or a value that is not of the ``expected`` type is a ``ValueError`` of one line naming the file."""
    path = Path(path)
    try:
        value = json.loads(path.read_bytes().decode())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); restore it from a copy, or compute it again") from None
    if not isinstance(value, expected):
        raise ValueError(f"{path}: holds {type(value).__name__}, expected {what}; restore it or compute it again")
    return value


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
        "cpu_bf16": bool(BF16_FLAGS & cpu_flags()),  # amp on the CPU runs bf16 only then
        "gpus": gpus,
    }


ENVIRONMENT_FILE = "environment.json"


def record_session(folder: Path, **facts: Any) -> list[str]:
    """Append this job's ``environment()`` (with the time, the command line, ``facts`` and what changed since
    the last session, ``environment_changes``) to ``folder/environment.json``, a list with one entry per
    session that worked on the folder: a resumed run keeps the versions its first part ran with. Returns
    what changed."""
    path = Path(folder) / ENVIRONMENT_FILE
    earlier = read_sessions(path)
    now = environment()
    versioned = [e for e in earlier if "versions" in e]
    changed = environment_changes(versioned[-1], now) if versioned else []
    entry = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": " ".join(["python", *sys.argv]),
        **facts,
        "changed_since_last_session": changed,
        **now,
    }
    write_json(path, [*earlier, entry])
    return changed


def read_sessions(path: Path) -> list[dict[str, Any]]:
    """The sessions ``environment.json`` records; one written before sessions were kept is one session."""
    path = Path(path)
    if not path.is_file():
        return []
    saved = read_json(path, (dict, list), "a list of sessions")
    sessions = saved if isinstance(saved, list) else [saved]
    if not all(isinstance(s, dict) for s in sessions):
        raise ValueError(f"{path}: expected a list of sessions (mappings); remove it or restore it from a copy")
    return sessions


def environment_changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What differs between two sessions in what may change the numbers: the git commit, torch's version."""
    changed = []
    if before.get("git_commit") != now.get("git_commit"):
        changed.append(f"git commit {before.get('git_commit')} -> {now.get('git_commit')}")
    torch_before, torch_now = (e.get("versions", {}).get("torch") for e in (before, now))
    if torch_before != torch_now:
        changed.append(f"torch {torch_before} -> {torch_now}")
    return changed


BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # a CPU with bfloat16 instructions has one of these


def cpu_flags() -> set[str]:
    """The instruction-set flags of this machine's CPU (Linux's /proc/cpuinfo); empty where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith(("flags", "Features"))), "")
    return set(line.partition(":")[2].split())


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of a state dict's names, dtypes, shapes and bytes: which weights a score belongs to."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class Timer:
    """Named wall-clock timings: ``with timer("cluster"): ...``; ``timer.totals`` in seconds."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        trace(f"{name} starts")
        try:
            yield
        finally:
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - start
            trace(f"{name} ends")
