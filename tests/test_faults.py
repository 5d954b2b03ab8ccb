"""Faults a user meets, injected one by one on the CPU with the smoke preset (docs/faults.md, "Faults and what
you get"): each ends with one line that names the path, key or parameter and what to do, an exit code
that says which kind of stop it was, and nothing already written lost.

A full disk is a small tmpfs where this process may mount one (root, as in CI), otherwise an injected
``OSError(ENOSPC)``; a read-only folder is a tmpfs remounted read-only, a folder without write permission
for other users, or an injected ``OSError(EROFS)``."""

import errno
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from commands import ENV, command, picie
from layouts import write_cocostuff

from picie_lib import run_folder, runs
from picie_lib.checkpoints import load_checkpoint
from picie_lib.cli import main
from picie_lib.config import load_config
from picie_lib.data.cocostuff import CocoStuff27
from picie_lib.data.prepare import prepare_cocostuff
from picie_lib.pipeline import kernels_of

# slow: starts processes or trains, not in the unit tier (pytest -m 'not slow')
pytestmark = [
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
    pytest.mark.slow,
]
SMOKE = ["--preset", "smoke", "-p", "n_train=48"]  # epochs of a few seconds, to stop one midway
ONE_EPOCH = ["--preset", "smoke", "-p", "epochs_ce=1"]


def one_line(stderr: str) -> str:
    """The whole of stderr, which must be one line (no traceback, no second message)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def cli(*args: str, timeout: float = 600) -> tuple[int, str]:
    """The command in a child process, as a user runs it: exit code and the whole of stderr."""
    result = picie(*args, timeout=timeout)
    return result.returncode, result.stderr


def in_process(capsys, *args: str) -> tuple[int, str]:
    """The same command through ``cli.main`` in this process, where the process boundary is not what is tested
    (``test_the_corrected_command_runs_into_the_same_out`` holds that a refusal is one line on a real stderr)."""
    capsys.readouterr()
    try:
        code = main(list(args))
    except SystemExit as stop:
        code = stop.code
    return code, capsys.readouterr().err


@contextmanager
def tmpfs(path: Path, size: str):
    """A RAM file system of ``size`` at ``path``; yields whether it could be mounted (root only)."""
    path.mkdir(parents=True, exist_ok=True)
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode
    ):
        yield False
        return
    try:
        yield True
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def _opened_path(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


# ---- 1. validation before the first byte -----------------------------------------------------------------
@pytest.mark.parametrize(
    "command_args, message",
    [
        (["train", "--loss", "ce", "-p", "seed=-1"], "error: -p seed=-1: expected an integer in [0, 4294967295]"),
        (["train", "--loss", "ce", "-p", "p_flip=5"], "error: -p p_flip=5: expected a probability in [0, 1]"),
        (["train", "--loss", "focal", "-p", "gamma=-3"], "error: -p gamma=-3: expected a finite number >= 0"),
        (["train", "--loss", "ce", "-p", "epochs_ce=0"], "error: -p epochs_ce=0: expected an integer >= 1"),
        (["train", "--loss", "ce", "-p", "hue=[0.5]"], "error: -p hue=[0.5]: expected [low, high], two numbers"),
        (["train", "--loss", "ce", "-p", "device=tpu"], "error: -p device=tpu: expected auto, cpu, cuda or cuda:N"),
        (["train", "--loss", "ce", "-p", "bogus=1"], "error: -p bogus=1: unknown key(s) bogus; known keys: amp,"),
        (["train", "--loss", "ce", "-p", "lr=[1e-3"], "error: -p lr=[1e-3: not valid YAML at line 1"),
        (["train", "--loss", "ce", "-p", "seed=1", "-p", "seed=2"], "error: -p seed: given more than once"),
        (["compare", "-p", "seeds=abc"], "error: -p seeds=abc: expected a non-empty list of distinct integers"),
        (["compare", "-p", "seeds=[]"], "error: -p seeds=[]: expected a non-empty list"),
        (["run", "-p", "seeds=[]"], "error: -p seeds=[]: expected a non-empty list"),
    ],
)
def test_a_bad_parameter_stops_before_anything_is_written(tmp_path, capsys, command_args, message):
    out = tmp_path / "out"
    code, err = in_process(capsys, command_args[0], "--preset", "smoke", *command_args[1:], "--out", str(out))
    assert code == 2 and one_line(err).startswith(message), err
    assert not out.exists()  # so the corrected command may use the same --out


def _not_json(constant: str):
    raise AssertionError(f"{constant} is not JSON (RFC 8259)")


def test_the_corrected_command_runs_into_the_same_out(tmp_path):
    out = tmp_path / "out"
    code, err = cli("train", *ONE_EPOCH, "--loss", "ce", "-p", "seed=-1", "--out", str(out))
    assert code == 2 and one_line(err).startswith("error: -p seed=-1: expected an integer"), err
    code, err = cli("train", *ONE_EPOCH, "--loss", "ce", "-p", "seed=1", "--out", str(out))
    assert code == 0, err[-2000:]
    for path in [*out.glob("*.json"), out / "log.jsonl"]:  # strict JSON: no NaN or Infinity anywhere
        for line in path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]:
            json.loads(line, parse_constant=_not_json)


def test_presets_with_bad_yaml_or_a_key_given_twice_are_one_line(tmp_path, capsys):
    broken, twice = tmp_path / "broken.yaml", tmp_path / "twice.yaml"
    broken.write_text("epochs_ce: 2\nhue: [-0.1, 0.1\n")
    twice.write_text("epochs_ce: 2\nlr: 1.0e-3\nepochs_ce: 3\n")
    code, err = in_process(capsys, "train", "--preset", str(broken), "--loss", "ce", "--out", str(tmp_path / "a"))
    assert code == 2 and one_line(err).startswith(f"error: {broken}: not valid YAML at line 3")
    code, err = in_process(capsys, "train", "--preset", str(twice), "--loss", "ce", "--out", str(tmp_path / "b"))
    assert code == 2 and one_line(err) == (
        f"error: {twice}: not valid YAML at line 3, column 1: duplicate key 'epochs_ce' (first on line 1)"
    )
    code, err = in_process(
        capsys, "train", "--preset", str(tmp_path / "absent.yaml"), "--loss", "ce", "--out", str(tmp_path / "c")
    )
    assert code == 2 and one_line(err) == f"error: --preset {tmp_path / 'absent.yaml'}: no such file"


def test_odd_values_from_python_or_yaml_get_the_rules_message():
    from picie_lib.config import Config, parse_overrides

    assert Config(dataset="folder", data_root=tmp_root()).data_root == str(tmp_root())  # a Path is its text
    assert Config(seed=np.int64(3)).seed == 3  # a numpy integer is an integer
    with pytest.raises(ValueError, match=re.escape("seed=np.int64(-1): expected an integer in [0, 4294967295]")):
        Config(seed=np.int64(-1))  # no YAML for a numpy number: shown as Python shows it
    with pytest.raises(ValueError, match="-p x={\\[1\\]: 2}: not valid YAML at line 1, column 2: a key must be a name"):
        parse_overrides(["x={[1]: 2}"])


def tmp_root() -> Path:
    return Path(tempfile.gettempdir())


def test_a_full_disk_advice_fits_the_command():
    from picie_lib.cli import os_error_line

    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/x/metrics.json")
    assert "--resume" in os_error_line(full, "train") and "--resume" not in os_error_line(full, "evaluate")
    assert os_error_line(full, "evaluate").startswith("no space left on the device holding /x/metrics.json")


def test_strict_json_writes_null_for_values_that_are_not_finite(tmp_path):
    runs.write_json(tmp_path / "a.json", {"best": float("inf"), "x": [float("nan"), 1.5], "t": torch.tensor(2.0)})
    text = (tmp_path / "a.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == {"best": None, "x": [None, 1.5], "t": 2.0}
    runs.append_jsonl(tmp_path / "log.jsonl", {"loss": float("-inf")})
    assert runs.read_jsonl(tmp_path / "log.jsonl") == [{"loss": None}]


# ---- 2. signals ----------------------------------------------------------------------------------------
def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(command(*args), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not path.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.is_file() and proc.poll() is None, "the job ended before the moment to stop it"


@pytest.mark.parametrize(
    "sig, code, what", [(signal.SIGTERM, 143, "stopped by SIGTERM"), (signal.SIGINT, 130, "interrupted (Ctrl-C)")]
)
def test_a_signal_during_training_says_what_was_saved_and_how_to_continue(tmp_path, sig, code, what):
    out = tmp_path / "run"
    proc = _start("train", *SMOKE, "--loss", "ce", "--out", str(out))
    _wait_for(out / "checkpoint.pt", proc)  # renamed into place whole: epoch 1 is done
    time.sleep(0.3)  # into epoch 2
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code
    again = shlex.join(["python", "-m", "picie_lib", "train", *SMOKE, "--loss", "ce", "--out", str(out), "--resume"])
    assert one_line(stderr) == f"{what}: epoch 1 of 2 is saved in {out / 'checkpoint.pt'}; continue with: {again}"
    assert not list(out.glob(".*.tmp")) and not (out / "summary.json").exists()
    resumed = subprocess.run(
        [sys.executable, *shlex.split(again)[1:]], env=ENV, capture_output=True, text=True, timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 2


def test_ctrl_c_during_a_batch_run_stops_its_kernel_without_a_traceback(tmp_path):
    out = tmp_path / "batch"
    proc = _start("run", "--preset", "smoke", "--out", str(out))
    _wait_for(out / "ce-seed0" / "checkpoint.pt", proc)  # the kernel of 05_train is training CE
    kernels = kernels_of(proc.pid)
    assert kernels, "the training kernel should be a child of run"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130
    line = one_line(stderr)  # the kernel's own stderr is the terminal's too: nothing from it
    assert line.startswith(f"interrupted (Ctrl-C): 0 training(s) finished in {out}; ce-seed0 saved at epoch ")
    assert line.endswith(f"continue with: python -m picie_lib run --preset smoke --out {out} --resume")
    time.sleep(0.5)
    assert not [
        k for k in kernels if Path(f"/proc/{k}").exists() and b"ipykernel" in Path(f"/proc/{k}/cmdline").read_bytes()
    ]


def test_a_notebook_kernels_error_log_stays_off_the_jobs_terminal(tmp_path):
    """The kernel's stderr is the job's: a kernel interrupted by the clean-up at a notebook's end while
    it finishes a message logs that as an error, a line from nowhere in ``run``'s output. Kernels log
    only what is fatal; the cell's own output still reaches the executed notebook."""
    import nbformat

    cell = "from ipykernel.kernelapp import IPKernelApp\nIPKernelApp.instance().log.error('kernel noise')\nprint('ran')"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)]), tmp_path / "noise.ipynb")
    script = (
        "from pathlib import Path\nfrom picie_lib.pipeline import execute\n"
        f"execute('noise', Path({str(tmp_path / 'noise-out.ipynb')!r}), {{}}, cwd=Path({str(tmp_path)!r}))"
    )
    done = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "kernel noise" not in done.stderr, done.stderr[-2000:]
    executed = nbformat.read(tmp_path / "noise-out.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "ran\n"


def test_a_killed_jobs_temporary_files_are_removed_at_the_next_start(tmp_path):
    folder = tmp_path / "run"
    (folder / "figures").mkdir(parents=True)
    stale = [folder / ".checkpoint.pt.k2j4.tmp", folder / "figures" / ".confusion.png.x9.tmp"]
    for path in stale:
        path.write_bytes(b"half a file")
    keep = folder / "checkpoint.pt"
    keep.write_bytes(b"whole")
    with run_folder.exclusive(folder):
        assert not any(p.exists() for p in stale) and keep.read_bytes() == b"whole"
    # a temporary file of a live job is never touched: the second job does not get the lock
    with run_folder.exclusive(folder):
        stale[0].write_bytes(b"being written")
        with pytest.raises(run_folder.FolderInUse):
            with run_folder.exclusive(folder):
                pass
        assert stale[0].exists()


def test_a_failed_write_removes_its_temporary_file(tmp_path, monkeypatch):
    class Boom(BaseException):  # as SIGTERM's exception or Ctrl-C's arrives in the middle of a write
        pass

    def interrupted(fd: int) -> None:
        raise Boom

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(Boom):
        runs.atomic_write_bytes(tmp_path / "x.bin", b"abc")
    with pytest.raises(Boom):
        runs.atomic_torch_save({"w": torch.zeros(3)}, tmp_path / "checkpoint.pt")
    assert list(tmp_path.iterdir()) == []


# ---- 3. the disk and the folders ------------------------------------------------------------------------
def test_a_full_disk_is_named_and_the_last_checkpoint_kept(tmp_path, monkeypatch, capsys):
    disk = tmp_path / "disk"
    with tmpfs(disk, "40m") as mounted:  # room for config.json and the log, not for a 130 MB checkpoint
        out = disk / "run"
        args = ["train", *ONE_EPOCH, "--loss", "ce", "--out", str(out)]
        if mounted:
            code, err = cli(*args)
        else:
            real_fsync = os.fsync

            def full(fd: int) -> None:
                if ".checkpoint.pt." in _opened_path(fd):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                real_fsync(fd)

            monkeypatch.setattr(os, "fsync", full)
            code, err = _run(args, capsys, monkeypatch)
        assert code == 1
        assert one_line(err) == (
            f"error: no space left on the device holding {out / 'checkpoint.pt'}; free some space (the last "
            "complete checkpoint is intact) and run the same command again with --resume"
        )
        assert not list(out.glob(".*.tmp"))  # the partial checkpoint went with the failure
        assert load_config(out / "config.json").epochs_ce == 1  # what was written before is whole


@contextmanager
def read_only(folder: Path, monkeypatch):
    """``folder`` made read-only: a tmpfs remounted read-only (root), or no write permission (other
    users), or else writes under it fail with an injected EROFS (in-process only: yields False)."""
    with tmpfs(folder, "300m") as mounted:
        if mounted:
            yield lambda: subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
            subprocess.run(["mount", "-o", "remount,rw", str(folder)], check=True)
        elif os.geteuid() != 0:
            yield lambda: folder.chmod(0o555)
            folder.chmod(0o755)
        else:
            real = tempfile.mkstemp

            def refuse(*args, dir=None, **kwargs):
                if dir is not None and Path(dir).resolve().is_relative_to(folder.resolve()):
                    raise OSError(errno.EROFS, os.strerror(errno.EROFS))
                return real(*args, dir=dir, **kwargs)

            yield lambda: monkeypatch.setattr(tempfile, "mkstemp", refuse)


def _run(args: list[str], capsys, monkeypatch) -> tuple[int, str]:
    """In this process, where an injected fault reaches (it cannot reach a child process); bars off as
    for a command in a log."""
    monkeypatch.setenv("PICIE_PROGRESS", "0")
    capsys.readouterr()
    return main(args), capsys.readouterr().err


def test_a_read_only_out_is_named_before_any_work(tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    with read_only(ro, monkeypatch) as make_read_only:
        run = ro / "run"
        assert cli("train", *ONE_EPOCH, "--loss", "ce", "--out", str(run))[0] == 0
        make_read_only()
        for args, path in [
            (["train", *ONE_EPOCH, "--loss", "ce", "--out", str(ro / "new")], ro / "new"),
            (["evaluate", str(run)], run),  # refused before its k-means, not after it
        ]:
            code, err = _run(args, capsys, monkeypatch)
            assert code == 1 and re.fullmatch(
                rf"error: cannot write {re.escape(str(path))} \(.*\); choose a writable --out", one_line(err)
            ), err
        assert not (run / "metrics.json").exists()


def test_an_out_that_is_a_file_or_a_missing_run_to_resume_is_named(tmp_path, capsys):
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    code, err = in_process(capsys, "train", *ONE_EPOCH, "--loss", "ce", "--out", str(file))
    assert code == 2 and one_line(err) == f"error: {file} is a file; expected a folder (choose another --out)"
    code, err = in_process(capsys, "train", *ONE_EPOCH, "--loss", "ce", "--out", str(file / "run"))
    assert code == 2 and one_line(err) == f"error: {file / 'run'}: a parent folder is a file; choose another --out"
    assert file.read_text() == "mine"
    missing = tmp_path / "never"
    for args, message in [
        (
            ["train", *ONE_EPOCH, "--loss", "ce"],
            f"error: {missing}: no run there to resume; start one without --resume",
        ),
        (["compare", "--preset", "smoke"], f"error: {missing}: nothing to resume there (no config.json)"),
        (["run", "--preset", "smoke"], f"error: {missing}: nothing to resume there (no config.json)"),
    ]:
        code, err = in_process(capsys, *args, "--out", str(missing), "--resume")
        assert code == 2 and one_line(err).startswith(message), err
        assert not missing.exists()


def test_a_checkpoint_missing_a_key_is_named(tmp_path, capsys):
    out = tmp_path / "run"
    assert in_process(capsys, "train", *ONE_EPOCH, "--loss", "ce", "--out", str(out))[0] == 0
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    del ckpt["model"]
    torch.save(ckpt, out / "checkpoint.pt")
    message = f"error: {out / 'checkpoint.pt'}: the checkpoint lacks 'model'; it is damaged or was edited."
    for args in (["evaluate", str(out)], ["train", *ONE_EPOCH, "--loss", "ce", "--out", str(out), "--resume"]):
        code, err = in_process(capsys, *args)
        assert code == 2 and one_line(err).startswith(message), err


# ---- 4. data sets --------------------------------------------------------------------------------------
def test_an_id_listed_twice_in_a_curated_list_is_refused_with_its_lines(tmp_path, capsys):
    layout = write_cocostuff(tmp_path / "coco")
    first, second = layout.ids["val2017"][:2]
    path = layout.root / "curated" / "val2017" / "Coco164kFull_Stuff_Coarse_7.txt"
    path.parent.mkdir(parents=True)
    path.write_text(f"{first}\n\n{second}\n{first}\n")  # a blank line: the numbers are the file's lines
    message = f"{path}: 1 id(s) listed twice ({first} on lines 1 and 4); keep each id once"
    with pytest.raises(ValueError, match=re.escape(message)):
        CocoStuff27(layout.root, "val", "eval")
    report = prepare_cocostuff(layout.root)
    assert message in report["problems"] and not report["ok"]


def test_prepare_verify_reads_what_the_runs_curated_setting_reads(tmp_path, capsys):
    layout = write_cocostuff(tmp_path / "coco", curated_lists=None)
    lists = {folder: ids[:2] for folder, ids in layout.ids.items()}
    for folder, ids in lists.items():
        path = layout.root / "curated" / folder / "Coco164kFull_Stuff_Coarse_7.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{i}\n" for i in ids))
    outside = layout.ids["val2017"][-1]  # not curated: only a run with curated=false reads it
    (layout.root / "images" / "val2017" / f"{outside}.jpg").write_bytes(b"not a jpeg")
    assert prepare_cocostuff(layout.root, verify=True)["ok"]
    report = prepare_cocostuff(layout.root, verify=True, curated=False)
    assert not report["ok"] and any(outside in p for p in report["problems"])
    code = main(["prepare", "cocostuff", str(layout.root), "--verify", "--no-curated"])
    assert code == 2 and outside in capsys.readouterr().out
