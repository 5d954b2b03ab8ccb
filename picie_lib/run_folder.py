"""A run's folder: the lock a job holds on it (``exclusive``), the manifest of what the run wrote there
(``.picie_lib-run``), and what ``--overwrite`` may remove (``clear_run``): only what the manifest lists."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


LOCK_NAME = ".lock"  # in every output folder a job holds (``exclusive``)
PROBE_PREFIX = ".probe."  # the file ``writable_folder`` writes and removes at once
# In every folder a job made for a run: what it wrote there, one path (relative to the folder) a line,
# listed before the file is written. ``--overwrite`` removes only what is listed (``clear_run``).
MANIFEST_NAME = ".picie_lib-run"
BOOKKEEPING = (LOCK_NAME, MANIFEST_NAME)
MANIFEST_LIMIT = 1 << 20  # bytes: a run lists a few hundred short paths; more is a damaged or foreign file


def own_fd(path: Path, flags: int, mode: int = FILE_MODE) -> int:
    """``os.open(path, flags)`` for a file a job writes in place (its lock, manifest, log), never through a
    symbolic link (``O_NOFOLLOW``) and never into a file that has other names: writing a hard link in place
    would change the file behind its other names, anywhere on the disk. Pass no ``O_TRUNC``: truncate after."""
    import stat

    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    info = os.fstat(fd)
    if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
        os.close(fd)
        raise OSError(errno.EMLINK, f"a hard link ({info.st_nlink} names for one file)", str(path))
    return fd


def unlink_own(folder: Path, relative: str) -> bool:
    """Remove ``folder/relative`` (a file, or a symbolic link itself) unless a folder on the way from ``folder``
    is a symbolic link: what it leads to is not the run's. Returns whether the path was the run's to remove."""
    parts = Path(relative).parts
    if any(Path(folder).joinpath(*parts[:i]).is_symlink() for i in range(1, len(parts))):
        return False
    Path(folder, relative).unlink(missing_ok=True)
    return True


class FolderInUse(FileExistsError):
    """Another job holds the output folder (``exclusive``)."""


class NotARunFolder(FileExistsError):
    """``--overwrite`` on a folder that no picie_lib job made: it is not ours to clear."""


@contextmanager
def exclusive(folder: Path, command: str | None = None) -> Iterator[Path]:
    """Hold ``folder`` for one job: an advisory lock (``fcntl.flock``) on ``folder/.lock``, taken at once
    or refused with the holder's PID and command, and released on any exit, a kill included (the
    operating system drops a dead process's locks). Each job locks the folders it writes into once; a
    second lock of the same folder, from any process, is refused.

    The lock file is opened without following a symbolic link (``O_NOFOLLOW``) and written only once
    the lock is held. Before anything is computed the folder must be writable (``writable_folder``);
    once the lock is held, the temporary files a killed job left (``remove_stale_temporaries``) are
    removed. A job that ends without having made the folder a run (no manifest) leaves it as it found
    it: the lock file it created is removed, and so is the folder if it created it and left it empty."""
    folder = Path(folder)
    made_folder = not os.path.lexists(folder)
    folder = writable_folder(folder)
    handle, made_lock = _take_lock(folder)
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"PID {os.getpid()} ({command or ' '.join(['python', *sys.argv])})\n")
        handle.flush()
        remove_stale_temporaries(folder)
        yield folder
    finally:
        if not is_run_folder(folder):  # never made a run: leave no trace
            if made_lock:
                (folder / LOCK_NAME).unlink(missing_ok=True)
            if made_folder:
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only if empty
        handle.close()


def _take_lock(folder: Path):
    """``(file, made)``: ``folder/.lock`` opened without following a symbolic link and locked, and whether
    this job created it (``O_EXCL``: of two jobs, one did). A lock file that was removed while this job
    waited to lock it (its maker ended without making a run) is opened again."""
    import fcntl
    import stat

    lock = folder / LOCK_NAME
    while True:
        try:
            try:
                fd, made = own_fd(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL), True
            except FileExistsError:
                fd, made = own_fd(lock, os.O_RDWR), False
        except FileNotFoundError:  # removed between the two opens
            continue
        except OSError as err:
            raise OSError(err.errno, err.strerror, str(lock)) from None
        handle = os.fdopen(fd, "r+")
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            handle.close()
            raise FileExistsError(f"{lock} is not a plain file; a job locks its folder with a file of that name")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = handle.read().strip() or "another process"
            handle.close()
            raise FolderInUse(
                f"{folder} is in use by {holder}; wait for it to finish or choose another --out"
            ) from None
        try:
            current = os.lstat(lock).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            return handle, made
        handle.close()


def writable_folder(folder: Path) -> Path:
    """Create ``folder`` if needed and prove it writable with a file that is removed at once, so that a
    read-only or full location, or an ``--out`` that is a file, stops a job before its work, not after."""
    folder = Path(folder)
    if os.path.lexists(folder) and not folder.exists():
        raise NotADirectoryError(f"{folder} is a symbolic link that leads nowhere (a loop or a missing target)")
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
    folder = Path(folder)
    stale = [*folder.glob(".*.tmp"), *([] if (folder / "figures").is_symlink() else folder.glob("figures/.*.tmp"))]
    stale = [p for p in stale if not p.name.startswith(PROBE_PREFIX)]  # another job's probe, gone at once
    for path in stale:
        unlink_own(folder, path.relative_to(folder).as_posix())
    return stale


def holds_a_run(path: Path) -> bool:
    """Whether ``path`` holds anything but a job's bookkeeping (its lock and manifest)."""
    path = Path(path)
    return path.is_dir() and any(p.name not in BOOKKEEPING for p in path.iterdir())


def is_run_folder(path: Path) -> bool:
    """Whether a picie_lib job made ``path`` for a run (it holds a manifest, not a link to one)."""
    manifest = Path(path) / MANIFEST_NAME
    return manifest.is_file() and not manifest.is_symlink()


# ---- what a run wrote (its manifest) --------------------------------------------------------------------------
def _manifest_of(path: Path) -> Path | None:
    """The run folder ``path`` belongs to: its parent or grandparent (``figures/``, ``notebooks/``) if that
    holds a manifest. A file deeper down, or in a folder no job made, belongs to no run."""
    for folder in (path.parent, path.parent.parent):
        if is_run_folder(folder):
            return folder
    return None


def refuse_foreign(path: Path) -> None:
    """``FileExistsError`` naming ``path`` when something is there that no picie_lib job wrote: a job writes over
    its own files only, the ones its run's manifest lists."""
    path = Path(path)
    if not os.path.lexists(path):
        return
    folder = _manifest_of(path)
    if folder is None or path.relative_to(folder).as_posix() not in manifest_entries(folder):
        raise FileExistsError(f"{path} exists and no picie_lib run wrote it; choose another path, or move it away")


def record_written(path: Path) -> None:
    """List ``path`` in its run's manifest (``_manifest_of``) before it is written, so that a file cut
    short by a kill is listed too. Refuses to write into a folder of the run that is a symbolic link
    (the run's files stay in the run's folder)."""
    path = Path(path)
    folder = _manifest_of(path)
    if folder is None:
        return
    if path.parent != folder and path.parent.is_symlink():
        raise OSError(errno.ELOOP, "a folder of the run is a symbolic link", str(path.parent))
    record_in_manifest(folder, path.relative_to(folder).as_posix())


def record_in_manifest(folder: Path, relative: str) -> None:
    """Add ``relative`` (a file, or a run folder inside ``folder`` made by a job of this run) to
    ``folder``'s manifest, once. Appends of one short line: safe from several processes."""
    manifest = Path(folder) / MANIFEST_NAME
    if not is_run_folder(folder) or relative in manifest_entries(folder):
        return  # a folder made before manifests: nothing to add to
    fd = own_fd(manifest, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, (relative + "\n").encode())
    finally:
        os.close(fd)


def manifest_entries(folder: Path) -> list[str]:
    """The paths ``folder``'s manifest lists, in order, once each. An entry that would leave the folder (absolute,
    ``..``), name the folder itself or its bookkeeping (the lock another job may hold), or hold a control
    character is ignored: a hand-edited manifest cannot send ``--overwrite`` elsewhere. A manifest over
    ``MANIFEST_LIMIT`` bytes is refused, named."""
    manifest = Path(folder) / MANIFEST_NAME
    if not is_run_folder(folder):
        return []
    if manifest.stat().st_nlink > 1:  # its other names lie outside the run: clearing or appending would change them
        raise OSError(errno.EMLINK, f"a hard link ({manifest.stat().st_nlink} names for one file)", str(manifest))
    if manifest.stat().st_size > MANIFEST_LIMIT:
        raise ValueError(
            f"{manifest}: {manifest.stat().st_size} bytes, more than a run writes ({MANIFEST_LIMIT}); it is damaged "
            "or not a picie_lib manifest: remove it, and the folder's files are no run's to replace"
        )
    entries = {}
    for line in manifest.read_bytes().decode(errors="replace").splitlines():
        path = Path(line)
        if not line or path.is_absolute() or ".." in path.parts or not path.parts or path.parts[0] in BOOKKEEPING:
            continue
        if any(ord(c) < 32 or c == "\ufffd" for c in line):
            continue
        entries.setdefault(path.as_posix(), None)
    return [e for e in entries if e != "."]


def start_manifest(folder: Path) -> None:
    """Make ``folder`` a run folder: an empty manifest (kept if there is one)."""
    manifest = Path(folder) / MANIFEST_NAME
    if not is_run_folder(folder):
        os.close(own_fd(manifest, os.O_WRONLY | os.O_CREAT))


def clear_run(folder: Path) -> list[Path]:
    """Remove what ``folder``'s manifest lists, and nothing else: files (a symbolic link itself, never its
    target; nothing reached through a linked folder), run folders a job of this run made (each cleared by
    the same rule under its own lock, and removed once nothing else is in it), and the folders the listed
    files were in once they are empty. A file someone added is kept, and so is the folder holding it.
    Returns what was kept. The manifest is emptied."""
    folder = Path(folder)
    for relative in manifest_entries(folder):
        path = folder / relative
        parts = Path(relative).parts
        if any(folder.joinpath(*parts[:i]).is_symlink() for i in range(1, len(parts))):
            continue  # a folder of the run was replaced by a link: what it leads to is not the run's
        if path.is_symlink() or path.is_file():
            path.unlink(missing_ok=True)
        elif is_run_folder(path):
            with exclusive(path):  # never a folder another job is writing
                clear_run(path)
            if not holds_a_run(path):
                for name in BOOKKEEPING:
                    (path / name).unlink(missing_ok=True)
        for parent in [path, *path.parents]:  # the empty folders it leaves, up to the run's own
            if parent == folder or folder not in parent.parents:
                break
            with contextlib.suppress(OSError):
                parent.rmdir()
    fd = own_fd(folder / MANIFEST_NAME, os.O_WRONLY)
    try:
        os.ftruncate(fd, 0)
    finally:
        os.close(fd)
    return sorted(p for p in folder.rglob("*") if p.name not in BOOKKEEPING and not p.is_dir())


def discard_run(folder: Path) -> None:
    """Undo a run that failed before it saved anything worth keeping: what it wrote and its manifest go,
    so that the corrected command may use the same ``--out``."""
    clear_run(folder)
    if not holds_a_run(folder):  # with someone's files kept, it stays a run's folder for the next --overwrite
        (Path(folder) / MANIFEST_NAME).unlink(missing_ok=True)


def new_run_dir(path: Path, overwrite: bool = False) -> Path:
    """Make ``path`` a new run's folder (``start_manifest``). A folder holding anything is an error, unless
    ``overwrite`` and a picie_lib job made it: then what its runs wrote is removed (``clear_run``) and
    whatever else it holds is kept."""
    path = Path(path)
    if holds_a_run(path):
        if not overwrite:
            raise FileExistsError(
                f"{path} already holds a run; choose a new --out, pass --resume to continue it or --overwrite to "
                "replace it"
            )
        if not is_run_folder(path):
            raise NotARunFolder(
                f"{path} holds files no picie_lib run wrote (no {MANIFEST_NAME} there); --overwrite replaces only "
                "a folder a run made: choose a new --out, or move those files away yourself"
            )
        kept = clear_run(path)
        if kept:
            shown = ", ".join(str(p.relative_to(path)) for p in kept[:5]) + (" ..." if len(kept) > 5 else "")
            print(f"--overwrite kept {len(kept)} file(s) in {path} that no run wrote: {shown}", file=sys.stderr)
    path.mkdir(parents=True, exist_ok=True)
    start_manifest(path)
    return path
