"""Several processes under ``torchrun`` (docs/torchrun.md): who this process is, how a pass is split
between the processes, and the sums they share.

Every pass is split the same way (``rank_batches``): global step ``s`` takes the next ``world x batch``
images of the pass's order (a function of ``(seed, epoch, purpose)``, the same in every process) and
process ``r`` takes its ``batch`` of them. So a batch per process has the single-process size: BatchNorm
sees as many images per batch as in one process, and the global batch is ``world`` times larger. The
last step is split evenly; an image is never given to two processes and never dropped.

What the processes must agree on is summed across them (``all_reduce_``): the k-means' sums and counts,
the cluster labels, the class counts, the confusion matrix. Without a process group (a plain ``python -m
picie_lib``) every function here is the identity, so the single-process code path is the same code. Under
torchrun even one process joins a group (of one, as torchvision's reference scripts do) and takes every
collective that several take: on one GPU that is NCCL's whole path, which ``benchmarks/device_check_dist.sh``
times against a plain process.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import os
import re
import shlex
import signal
import sys
import time

import torch
import torch.distributed as dist

BACKEND_ENV = "PICIE_DIST_BACKEND"  # "gloo" or "nccl"; default nccl on GPUs (one per process), else gloo
DEBUG_ENV = "PICIE_DIST_DEBUG"  # "1": each process prints where it is and when (``trace``)
_STARTED = time.perf_counter()


def trace(what: str) -> None:
    """With ``PICIE_DIST_DEBUG=1``, one line on stderr: this process's rank, seconds since it imported
    the library, and ``what`` it starts or finished; says where each rank spends its time."""
    if os.environ.get(DEBUG_ENV) == "1":
        rank_ = os.environ.get("RANK", "-")
        line = f"[trace rank {rank_} +{time.perf_counter() - _STARTED:.2f} s] {what}\n"
        try:  # one write to the file: the ranks' lines, on one terminal, do not interleave
            sys.stderr.flush()
            os.write(sys.stderr.fileno(), line.encode())
        except (AttributeError, OSError, ValueError):  # a stderr without a file (a notebook's)
            sys.stderr.write(line)


def joined() -> bool:
    """Whether this process is in a process group (``setup`` under torchrun, one process too): the collectives
    run, where without one they are the identity."""
    return dist.is_available() and dist.is_initialized()


def world() -> int:
    return dist.get_world_size() if joined() else 1


def session_facts() -> dict:
    """What a run's ``environment.json`` records of its processes: how many, and the backend joining them
    (None without a process group: a plain ``python -m picie_lib``)."""
    return {"world_size": world(), "backend": dist.get_backend() if joined() else None}


def rank() -> int:
    return dist.get_rank() if joined() else 0


def is_main() -> bool:
    """Rank 0 writes every file (checkpoints, logs, scores) and holds the output folder's lock."""
    return rank() == 0


def launched() -> bool:
    """Whether torchrun (or another launcher) started this process: its rank and world size are in the
    environment (one process too)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def others_launched() -> bool:
    """Whether the launcher started other processes beside this one (that it may lose)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def processes_per_node() -> int:
    """Processes torchrun started on this machine (``--nproc-per-node``); 1 without torchrun."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))) if launched() else 1


def command_line(world_size: int, per_node: int, argv: list[str] | None = None) -> str:
    """The command that runs ``python -m picie_lib ARGV`` in ``world_size`` processes (``per_node`` a
    machine): plain python for one, torchrun with its process count for several. ``argv`` defaults to this
    process's arguments when it was started as ``python -m picie_lib``, else to a placeholder."""
    if argv is None:
        from_cli = sys.argv[0].endswith(os.path.join("picie_lib", "__main__.py"))
        argv = [a for a in sys.argv[1:] if a not in ("--overwrite", "--resume")] if from_cli else ["train", "..."]
        argv = [*argv, "--resume"]
    if world_size == 1:
        return shlex.join(["python", "-m", "picie_lib", *argv])
    launcher = ["torchrun", "--standalone", "--nproc-per-node", str(per_node)]
    if world_size != per_node:
        launcher[1:2] = ["--nnodes", str(world_size // max(1, per_node))]
    text = shlex.join([*launcher, "-m", "picie_lib", *argv])
    return text + (" (on every node, with its rendezvous options)" if world_size != per_node else "")


def end_with_the_launcher() -> None:
    """Under torchrun: this process gets SIGTERM when the launcher that started it ends, however it ends
    (Linux's parent-death signal). A SIGKILLed torchrun would otherwise leave its processes running,
    the output folder's lock held."""
    if not launched() or not sys.platform.startswith("linux"):
        return
    launcher = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != launcher:  # it ended before the signal was asked for
        os.kill(os.getpid(), signal.SIGTERM)


def resolve_device(name: str) -> torch.device:
    """The device of ``cfg.device``; under torchrun "auto" and "cuda" are this process's GPU
    (``distributed.setup`` chose it), and a fixed "cuda:N" is refused (every process would use it)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but torch sees no GPU; use device='cpu' or 'auto'")
    if launched() and name.startswith("cuda"):
        if name != "cuda":
            raise ValueError(f"device={name}: under torchrun each process takes its own GPU; use auto or cuda")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def setup(device: str) -> None:
    """Join the process group that torchrun describes (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``,
    ``MASTER_ADDR``/``PORT``), one process too; nothing without torchrun. A process on a GPU machine uses GPU
    ``LOCAL_RANK`` (modulo the GPUs there are, so that two processes may share one GPU with gloo)."""
    if not launched() or joined():
        return
    on_gpu = device != "cpu" and torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if on_gpu:
        torch.cuda.set_device(local % torch.cuda.device_count())
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ["WORLD_SIZE"]))
    default = "nccl" if on_gpu and local_world <= torch.cuda.device_count() else "gloo"
    backend = os.environ.get(BACKEND_ENV, default)
    if backend not in ("gloo", "nccl"):
        raise ValueError(f"{BACKEND_ENV}={backend!r}: expected gloo or nccl")
    trace(f"joining the process group ({backend})")
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    trace("joined")


def teardown() -> None:
    if joined():
        trace("leaving the process group")
        dist.destroy_process_group()
        trace("left")


# how gloo, NCCL and the c10d store word the loss of a peer (its process ended, or a collective or the
# store waited too long for it)
PEER_LOST = (
    "connection closed by peer",
    "connection reset by peer",
    "broken pipe",
    "timed out",
    "timing out",
    "pair closure",
    "remote process exited",
    "communicator was aborted",
    "connection was likely closed",
    "socket timeout",
    "wait timeout",
)


def lost_another_process(err: BaseException) -> bool:
    """Whether ``err`` is this process's side of another process's end: gloo or NCCL lost its peer (it
    failed with its own error, e.g. rank 0's "already holds a run") or a collective timed out. Any
    other error of the backend is an error of its own."""
    from_gloo = isinstance(err, RuntimeError) and "/gloo/" in str(err).split("]")[0]  # gloo's are plain
    text = str(err).lower()
    return others_launched() and (isinstance(err, dist.DistError) or from_gloo) and any(p in text for p in PEER_LOST)


def lost_process_line(err: BaseException) -> str:
    """One line for ``lost_another_process``, with the backend's first line (without the source file
    of gloo's message)."""
    first = (str(err).splitlines() or [""])[0]
    detail = re.sub(r"^\[[^\]]*\]\s*", "", first)
    return f"stopped: lost another process of this job; its error, if it had one, is above ({detail})"


def barrier() -> None:
    """Wait for every process (e.g. until rank 0 has written what the others read next)."""
    if joined():
        dist.barrier()


@contextlib.contextmanager
def main_first(enabled: bool = True):
    """Rank 0 runs the block first (it downloads or trains what the block reads, once), then the other
    processes; in one process, or with ``enabled`` false, the block just runs."""
    if enabled and not is_main():
        barrier()
    yield
    if enabled and is_main():
        barrier()


def rank_batches(order: list[int], batch_size: int) -> list[list[int]]:
    """This process's batches of a pass over ``order``: one per global step, in step order, each
    ``batch_size`` long except in the last step (split evenly, so possibly empty). Every process gets
    the same number of batches, which the steps that sum across processes need."""
    n_proc, me = world(), rank()
    if n_proc == 1:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    step = n_proc * batch_size
    batches = []
    for start in range(0, len(order), step):
        items = order[start : start + step]
        if len(items) == step:
            batches.append(items[me * batch_size : (me + 1) * batch_size])
        else:  # the last step: an even split
            batches.append(items[me * len(items) // n_proc : (me + 1) * len(items) // n_proc])
    return batches


def all_reduce_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the processes, in place, and return it. NCCL reduces only GPU tensors: a CPU
    tensor goes through the GPU there, in blocks of at most 256 MB."""
    if not joined():
        return tensor
    if dist.get_backend() != "nccl" or tensor.is_cuda:
        dist.all_reduce(tensor)
        return tensor
    flat = tensor.view(-1)
    block = max(1, (256 << 20) // max(1, flat.element_size()))
    for start in range(0, len(flat), block):
        part = flat[start : start + block].cuda()
        dist.all_reduce(part)
        flat[start : start + block] = part.cpu()
    return tensor


def sum_scalar(value: float) -> float:
    """A float summed over the processes (float64)."""
    if not joined():
        return value
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    return float(all_reduce_(torch.tensor([value], dtype=torch.float64, device=device)).item())


def all_gather_objects(obj):
    """``[obj of rank 0, obj of rank 1, ...]`` (pickled: for small things, and CPU tensors)."""
    if not joined():
        return [obj]
    out = [None] * world()
    dist.all_gather_object(out, obj)
    return out


def average_bn_buffers(model: torch.nn.Module) -> None:
    """BatchNorm running statistics averaged over the processes, after a pass in which each process
    moved its own (PiCIE's clustering pass runs in train() mode): afterwards every process holds the
    same model, and rank 0's checkpoint is every process's."""
    if not joined():
        return
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.running_mean is not None:
            for buffer in (module.running_mean, module.running_var):
                all_reduce_(buffer.data).div_(world())


def data_parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel for the training step: gradients averaged over the
    processes. Buffers are not broadcast from rank 0 at each forward pass: each process's BatchNorm
    statistics follow its own batches (of the single-process size) and ``average_bn_buffers`` joins them
    after each pass."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    options = {"device_ids": [device.index] if device.type == "cuda" else None}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        options["forward_sync_buffers"] = False  # newer torch; broadcast_buffers is deprecated there
    else:
        options["broadcast_buffers"] = False
    return DistributedDataParallel(model, **options)
