"""PiCIE training (``train_picie.py``), with CE, Focal or IB-Focal as the per-pixel loss.

One epoch is three separable passes over the data, all seeing the same per-image views:

1. **clustering**: features of both views (no gradient), one mini-batch k-means per view;
2. **labelling**: every pixel of both views gets its nearest centroid (kept in memory, not on disk);
3. **training**: the four loss terms of design section 3 with the centroids as frozen classifiers.

BatchNorm (``bn_eval``): with "running" (PiCIE's code), pass 1 runs in ``train()`` mode and moves the
running statistics, pass 2 uses them (``eval()``); with "batch", passes 1 and 2 use the batch's
statistics and leave the running ones alone. Pass 3 trains in ``train()`` mode. Passes 1 and 2 visit
the same batches in the same order.

IB-Focal's switch (``Schedule``): from the switch on, the learning rate is ``lr x ib_lr_factor`` and
Adam's moments are reset if ``ib_reset_optimizer``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import multiprocessing
import multiprocessing.connection
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, default_collate

from picie_lib import distributed
from picie_lib.clustering import MiniBatchKMeans, assign_labels
from picie_lib.config import RUNTIME_KEYS, Config, differences, from_dict, load_config, save_config
from picie_lib.data import SceneDataset, build_dataset
from picie_lib.data.base import SkippedItem, warn_skipped
from picie_lib.losses import centroid_logits, class_weights, cross_entropy, focal_loss, ib_focal_loss
from picie_lib.model import PanopticFPN, bn_mode, bn_state, load_backbone_state_dict
from picie_lib.progress import progress
from picie_lib.runs import (
    Timer,
    append_jsonl,
    atomic_torch_save,
    atomic_write_text,
    discard_run,
    environment,
    environment_changes,
    exclusive,
    first_line,
    json_text,
    load_tensors,
    new_run_dir,
    read_sessions,
    record_session,
    weights_digest,
    write_json,
)
from picie_lib.transforms import augment, crop_flip, draw_view_params

CHECKPOINT_FORMAT = "picie_lib.checkpoint/2"  # 2: the log is kept in the checkpoint
# Parameters that do not change what training computes; a resumed run may differ in them.
TRAINING_RUNTIME_KEYS = RUNTIME_KEYS | {"eval_batch_size", "probe_epochs"}
RUN_FILES = ("log.jsonl", "checkpoint.pt", "ce_min.pt", "summary.json")
# What an evaluation derives from the weights (``evaluate.write_evaluation``, 06_evaluate's figures): stale once
# training goes on, so removed then.
EVALUATION_FILES = ("metrics.json", "per_class.csv", "confusion.csv", "centroids.pt")
EVALUATION_FIGURES = ("per_class_iou", "oversegmentation", "confusion", "examples")


def invalidate_evaluation(run_dir: Path) -> None:
    """Remove the scores and figures of ``run_dir``'s earlier weights."""
    run_dir = Path(run_dir)
    for name in EVALUATION_FILES:
        (run_dir / name).unlink(missing_ok=True)
    for stem in EVALUATION_FIGURES:
        for suffix in (".png", ".reading.md"):
            (run_dir / "figures" / f"{stem}{suffix}").unlink(missing_ok=True)


def checkpoint_record(ckpt: dict) -> dict:
    """What a score must say about the weights it scored: the checkpoint's epoch of the run's epochs, its
    last phase and loss, and the weights' SHA-256 (``runs.weights_digest``)."""
    cfg = from_dict(ckpt["config"], source="checkpoint")
    kept = [r for r in ckpt["history"] if not r.get("discarded")]
    return {
        "epoch": ckpt["epoch"],
        "epochs": cfg.epochs_for(),
        "finished": ckpt["epoch"] >= cfg.epochs_for(),
        "phase": kept[-1]["phase"] if kept else None,
        "loss": kept[-1]["loss"] if kept else None,
        "weights_sha256": weights_digest(ckpt["model"]),
    }


# ---- small helpers -----------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """The device of ``cfg.device``; under torchrun "auto" and "cuda" are this process's GPU
    (``distributed.setup`` chose it), and a fixed "cuda:N" is refused (every process would use it)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but torch sees no GPU; use device='cpu' or 'auto'")
    if distributed.launched() and name.startswith("cuda"):
        if name != "cuda":
            raise ValueError(f"device={name}: under torchrun each process takes its own GPU; use auto or cuda")
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(name)


def derive_seed(seed: int, *keys: int) -> int:
    """An independent 31-bit seed (faiss takes int32) for (seed, epoch, purpose, ...): every random stream of a run is
    a pure function of the run's seed and where it is used, so a resumed epoch replays exactly."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0] & 0x7FFFFFFF)


STREAM_VIEWS, STREAM_CLUSTER_ORDER, STREAM_TRAIN_ORDER, STREAM_KMEANS = 1, 2, 3, 4


def permutation(n: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def build_model(cfg: Config, device: torch.device) -> PanopticFPN:
    torch.manual_seed(cfg.seed)  # the initial weights are a function of the seed alone
    if distributed.world() > 1 and cfg.pretrained and not distributed.is_main():
        distributed.barrier()  # rank 0 first trains or downloads the backbone, once; the others read it
    model = PanopticFPN(pretrained=cfg.pretrained).to(device)
    if distributed.world() > 1 and cfg.pretrained and distributed.is_main():
        distributed.barrier()
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def network_features(model: torch.nn.Module, images: torch.Tensor, cfg: Config) -> torch.Tensor:
    """Raw (unnormalised) float32 features (B, 128, H/4, W/4) of normalised float images on the
    model's device, under bf16 autocast if ``cfg.amp``."""
    device = next(model.parameters()).device
    images = images.to(device, non_blocking=True)
    if cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp):
        return model(images).float()


def view_features(model, view1, view2, crop, flip, cfg, which=(0, 1), normalize=True) -> tuple[torch.Tensor, ...]:
    """Pixel-aligned, L2-normalised features (B, 128, h, w) of the views in ``which`` (0: view 1,
    1: view 2; both by default); the raw features if not ``normalize``.

    View 2's map gets the crop and flip that view 1 got on the image (PiCIE's ``transform_eqv``),
    then both are normalised per pixel (``F.normalize(dim=1)``).
    """
    maps = []
    for view in which:
        f = network_features(model, (view1, view2)[view], cfg)
        if view == 1:
            f = crop_flip(f, crop, flip, f.shape[-2:])
        maps.append(F.normalize(f, dim=1) if normalize else f)
    return tuple(maps)


def view_agreement(f1: torch.Tensor, f2: torch.Tensor) -> dict[str, float]:
    """How much two pixel-aligned, normalised feature maps (``view_features``) agree: the mean cosine of
    the same pixel in both (``same``) and of a pixel against the point-mirrored position of the other map
    (``mirrored``, a pixel elsewhere in the same scene). Equivariance shows as ``same`` well above
    ``mirrored``; a network that maps every pixel alike has both high and equal."""
    return {
        "same": float((f1 * f2).sum(1).mean()),
        "mirrored": float((f1 * f2.flip(-1).flip(-2)).sum(1).mean()),
    }


def batch_features(model, dataset: SceneDataset, index, views, cfg: Config, which=(0, 1), normalize=True):
    """``view_features`` of a train-mode batch (``index`` into the data set, ``views`` uint8): the views'
    photometric ops first, on the model's device (``augment``)."""
    params = dataset.view_params
    device = next(model.parameters()).device
    view1, view2 = augment(views, index, params, dataset.base_size, device)
    return view_features(model, view1, view2, params.crop[index], params.flip[index], cfg, which, normalize)


def clustering_bn(cfg: Config) -> str:
    """BatchNorm mode (``model.bn_mode``) of the clustering passes: training's and the evaluation's."""
    return "update" if cfg.bn_eval == "running" else "batch"


def labelling_bn(cfg: Config) -> str:
    """BatchNorm mode of the labelling pass and of scoring."""
    return "running" if cfg.bn_eval == "running" else "batch"


def collate_usable(items: list):
    """``(batch or None, skipped)``: the items a worker could read, batched, and the ``SkippedItem``s."""
    skipped = [item for item in items if isinstance(item, SkippedItem)]
    usable = [item for item in items if not isinstance(item, SkippedItem)]
    return (default_collate(usable) if usable else None), skipped


def require_usable(dataset, n_items: int, skipped: list[SkippedItem]) -> None:
    """A pass over ``n_items`` items of which every one was skipped as a bad file is an error. Under
    torchrun the items and the skipped ones are counted over the processes (every process decides alike)."""
    bad = len({item.index for item in skipped})
    if distributed.world() > 1:
        counts = distributed.all_gather_objects((n_items, bad))
        n_items, bad = sum(n for n, _ in counts), sum(b for _, b in counts)
    if n_items and bad == n_items:
        names = ", ".join(item.path for item in skipped[:3]) or "in another process"
        raise ValueError(
            f"no usable item among the {n_items} of {type(dataset).__name__}: every "
            f"file was bad (e.g. {names}); see the warnings above"
        )


def worker_context():
    """How data-loader workers start: forked from a fork server (a single-threaded process, with the library
    imported, started once per training process, so once per rank under torchrun), not from this process.
    This process runs other threads (gloo's under torchrun, tqdm's monitor, the feeder threads of a pass's
    queues); a worker forked while one of them holds a lock waits for that lock forever. That hung 1 of 12
    two-process runs with one worker each, in the worker's first instant. A worker then starts as fast as a
    fork (about 60 ms here), after 2-3 s once for the server. Without a fork server (Windows), spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["picie_lib.train"])
    return context


def exit_with_the_training_process(worker_id: int) -> None:
    """A data-loader worker's first act: a thread that ends the worker when the process that started it
    ends, however it ends. torch's own check watches the worker's parent, which is the fork server, not
    the training process; and the fork server lives as long as any worker does. Without this, the
    workers of a killed run would wait for work forever."""
    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        multiprocessing.connection.wait([parent.sentinel])  # ready once the training process is gone
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-the-training-process", daemon=True).start()


def _require_importable(dataset, workers: int) -> None:
    """Workers started by the fork server import the data set's class by name; one defined in a notebook
    cell or typed into an interpreter has no module to import it from, and the worker would only die."""
    cls = type(dataset)
    if cls.__module__ == "__main__" and not hasattr(sys.modules["__main__"], "__file__"):
        raise ValueError(
            f"num_workers={workers}: the data set class {cls.__qualname__} is defined in a notebook or an "
            "interactive session, where data-loader workers cannot import it; define it in a module, or set "
            "num_workers to 0"
        )


def _concatenate(parts: list, pin: bool):
    """Chunks of a batch (tuples of tensors) joined along the batch dimension; into page-locked
    memory when a GPU will take them (the copy to it can then overlap the next batch)."""
    if len(parts) == 1 and not pin:
        return parts[0]
    joined = []
    for fields in zip(*parts, strict=True):
        shape = (sum(len(f) for f in fields), *fields[0].shape[1:])
        out = torch.empty(shape, dtype=fields[0].dtype, pin_memory=pin)
        joined.append(torch.cat(fields, out=out))
    return tuple(joined)


class Batches:
    """The batches of ``dataset`` in ``order``, without the items whose file is bad; after a full
    pass, ``skipped_files`` names those files. A pass in which no item is usable is an error.

    With workers, a batch is not one worker's job: it is cut into chunks of a few items that all
    workers make at once, from the first batch on, and joined here in order. So the batches, their
    order and their content are the same for any ``num_workers``.

    Under torchrun each process reads its share of every global step (``distributed.rank_batches``),
    or with ``split=False`` the whole pass (the linear probe, trained alike in every process).
    ``keep_empty``: a step with no usable item of this process's yields None rather than nothing, so
    that every process sees every step (the k-means sums each step over the processes).
    """

    def __init__(
        self,
        dataset,
        order: list[int],
        batch_size: int,
        cfg: Config,
        require_usable: bool = True,
        keep_empty: bool = False,
        split: bool = True,
    ) -> None:
        self.dataset, self.require_usable, self.keep_empty = dataset, require_usable, keep_empty
        if split:
            batches = distributed.rank_batches(order, batch_size)
        else:
            batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        self.order = [i for batch in batches for i in batch]  # this process's items
        workers = cfg.num_workers
        # two chunks per worker per batch: every worker busy, and a batch ready as soon as possible
        chunk = batch_size if workers == 0 else max(1, math.ceil(batch_size / (2 * workers)))
        self.chunks_per_batch, chunks = [], []
        for batch in batches:
            pieces = [batch[i : i + chunk] for i in range(0, len(batch), chunk)]
            self.chunks_per_batch.append(len(pieces))
            chunks += pieces
        extra = {}
        if workers and chunks:  # enough chunks in flight for about two batches
            _require_importable(dataset, workers)
            extra["prefetch_factor"] = max(2, math.ceil(2 * batch_size / (chunk * workers)))
            extra["multiprocessing_context"] = worker_context()
            extra["worker_init_fn"] = exit_with_the_training_process
        self.loader = DataLoader(
            dataset, batch_sampler=chunks, num_workers=workers if chunks else 0, collate_fn=collate_usable, **extra
        )
        self.pin = torch.cuda.is_available() and resolve_device(cfg.device).type == "cuda"
        self.skipped: list[SkippedItem] = []

    def __len__(self) -> int:
        return len(self.chunks_per_batch)

    def __iter__(self):
        self.skipped = []
        chunks = iter(self.loader) if self.order else iter(())
        for count in self.chunks_per_batch:
            parts = []
            for _ in range(count):
                part, skipped = next(chunks)
                self.skipped += skipped
                if part is not None:
                    parts.append(part)
            if parts:
                yield _concatenate(parts, self.pin)
            elif self.keep_empty:
                yield None
        if self.require_usable:
            require_usable(self.dataset, len(self.order), self.skipped)

    @property
    def skipped_files(self) -> list[str]:
        return sorted({item.path for item in self.skipped})


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B*h*w, C), pixel-major as PiCIE's ``feature_flatten``."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


# ---- the three passes --------------------------------------------------------------------------
@torch.no_grad()
def cluster_pass(model, dataset: SceneDataset, order: list[int], cfg: Config, seed: int):
    """One k-means per view over the epoch's views: centroids (2, K, 128), their k-means losses, and
    the items left out as bad files (the label and training passes leave out the same ones).

    A k-means keeps the pixels of its first ``kmeans_init_batches`` batches for its initial fit (16.8 GB
    of float32 per view at the paper's settings). So that one view's set is in memory at a time, those
    batches are read twice, once per view; then the remaining batches update both views' running
    means. Each k-means sees the same pixels in the same order as in a single joint pass.

    Under torchrun a batch is a global step (every process's share, ``distributed.rank_batches``); the
    k-means sums over the processes and BatchNorm's running statistics, which this pass moves in
    ``bn_eval: running``, are averaged over them afterwards (``distributed.average_bn_buffers``).
    """
    kms = [MiniBatchKMeans.from_config(cfg, derive_seed(seed, view)) for view in (1, 2)]
    size, shared = cfg.batch_size_cluster, distributed.world() > 1
    step = size * distributed.world()
    head, rest = order[: cfg.kmeans_init_batches * step], order[cfg.kmeans_init_batches * step :]
    with bn_mode(model, clustering_bn(cfg)):
        for view in (0, 1):
            head_batches = Batches(dataset, head, size, cfg, require_usable=False, keep_empty=shared)
            for batch in progress(head_batches, f"cluster: view {view + 1}'s initial fit"):
                if batch is None:  # this process has no usable item in this step
                    kms[view].update(None)
                    continue
                idx, views = batch
                (f,) = batch_features(model, dataset, idx, views, cfg, which=(view,))
                kms[view].update(_flat(f))
        batches = Batches(dataset, rest, size, cfg, require_usable=False, keep_empty=shared)
        for batch in progress(batches, "cluster"):
            if batch is None:
                kms[0].update(None)
                kms[1].update(None)
                continue
            idx, views = batch
            f1, f2 = batch_features(model, dataset, idx, views, cfg)
            kms[0].update(_flat(f1))
            kms[1].update(_flat(f2))
    if clustering_bn(cfg) == "update":
        distributed.average_bn_buffers(model)
    skipped = head_batches.skipped + batches.skipped
    require_usable(dataset, len(head_batches.order) + len(batches.order), skipped)
    centroids = torch.stack([km.finish() for km in kms])
    names = sorted({name for names in distributed.all_gather_objects([i.path for i in skipped]) for name in names})
    return centroids, [km.mean_distance for km in kms], names


@torch.no_grad()
def label_pass(model, dataset: SceneDataset, order: list[int], centroids: torch.Tensor, cfg: Config):
    """Nearest-centroid labels of every pixel of both views, (2, N, h, w), and counts (2, K). Under
    torchrun each process labels its share and the labels are summed over the processes (each image
    is labelled by one process, zeros elsewhere), so that every process holds every label: the
    training pass visits the images in another order."""
    labels = None
    counts = torch.zeros((2, cfg.n_clusters), dtype=torch.int64)
    with bn_mode(model, labelling_bn(cfg)):
        for idx, views in progress(Batches(dataset, order, cfg.batch_size_cluster, cfg), "label"):
            f1, f2 = batch_features(model, dataset, idx, views, cfg)
            if labels is None:
                labels = _label_tensor(len(dataset), f1.shape[-2:], cfg)
            for view, (f, c) in enumerate(((f1, centroids[0]), (f2, centroids[1]))):
                assigned = assign_labels(f, c).cpu()
                labels[view, idx] = assigned.to(labels.dtype)
                counts[view] += torch.bincount(assigned.flatten().long(), minlength=cfg.n_clusters)
    if distributed.world() > 1:
        shape = next(s for s in distributed.all_gather_objects(None if labels is None else labels.shape) if s)
        labels = distributed.all_reduce_(labels if labels is not None else _label_tensor(shape[1], shape[2:], cfg))
        distributed.all_reduce_(counts)
    return labels, counts


def _label_tensor(n_images: int, size, cfg: Config) -> torch.Tensor:
    dtype = torch.uint8 if cfg.n_clusters <= 256 else torch.int32
    return torch.zeros((2, n_images, *size), dtype=dtype)


Criterion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def make_criterion(cfg: Config, phase: str) -> Criterion:
    """The per-pixel loss of a phase as ``(logits (N,K), target (N,), features (N,D), weight) -> loss``."""
    if phase == "ce":
        return lambda z, t, f, w: cross_entropy(z, t, weight=w)
    if phase == "focal":
        return lambda z, t, f, w: focal_loss(z, t, gamma=cfg.gamma, weight=w)
    if phase == "ib_focal":
        return lambda z, t, f, w: ib_focal_loss(
            z,
            t,
            f,
            alpha=cfg.ib_alpha,
            gamma=cfg.ib_gamma,
            eps=cfg.ib_eps,
            weight=w,
            detach=cfg.ib_detach,
            weighted_pt=cfg.ib_weighted_pt,
        )
    raise ValueError(f"unknown phase {phase!r}")


class NonFiniteLoss(RuntimeError):
    pass


def picie_loss(f1, f2, labels1, labels2, centroids, weights, criterion, temperature, ib_features=None):
    """``1/2 (across + within)`` with the four terms of design section 3; returns (loss, terms).

    ``f1``, ``f2``: normalised features (the classifier's input); ``ib_features``: the maps whose L1
    norms IB-Focal uses, per view (default ``f1``, ``f2``)."""
    y1, y2 = labels1.reshape(-1), labels2.reshape(-1)
    c1, c2 = centroids
    w1, w2 = weights
    h1, h2 = ib_features or (f1, f2)

    def term(f, h, c, y, w):
        return criterion(_flat(centroid_logits(f, c, temperature)), y, _flat(h), w)

    terms = {
        "across_1": term(f1, h1, c2, y2, w2),  # view-1 features against view-2 clusters
        "across_2": term(f2, h2, c1, y1, w1),
        "within_1": term(f1, h1, c1, y1, w1),
        "within_2": term(f2, h2, c2, y2, w2),
    }
    across = (terms["across_1"] + terms["across_2"]) / 2
    within = (terms["within_1"] + terms["within_2"]) / 2
    return (across + within) / 2, terms


TERMS = ("across_1", "across_2", "within_1", "within_2")


def train_pass(model, optimizer, dataset, order, labels, centroids, weights, criterion, cfg, epoch) -> dict:
    """One optimisation pass; returns the epoch's mean loss and mean of each term (over every image of
    the pass: under torchrun summed over the processes). ``model`` may be a DistributedDataParallel:
    each process takes its share of every step and DDP averages the gradients; a process with no usable
    item in a step (the last step's even split, bad files) takes part with a zero gradient
    (``_empty_step``), so that every process takes every step."""
    device = next(model.parameters()).device
    centroids = centroids.to(device)
    weights = [None if w is None else w.to(device) for w in weights]
    model.train()
    sums = torch.zeros(1 + len(TERMS), dtype=torch.float64, device=device)  # one wait for the GPU per batch
    seen = torch.zeros((), dtype=torch.float64, device=device)
    shared = isinstance(model, DistributedDataParallel)
    batches = Batches(dataset, order, cfg.batch_size_train, cfg, keep_empty=shared)
    for batch_number, batch in enumerate(progress(batches, f"train {epoch}")):
        if batch is None:  # the same collectives in the same order as a step with images
            running = bn_state(model)  # before the blank pass moves it
            loss, terms = _empty_step(model, cfg), {}
        else:
            idx, views = batch
            r1, r2 = batch_features(model, dataset, idx, views, cfg, normalize=False)
            f1, f2 = F.normalize(r1, dim=1), F.normalize(r2, dim=1)
            y1, y2 = labels[0, idx].to(device).long(), labels[1, idx].to(device).long()
            raw = cfg.ib_feature == "raw"
            loss, terms = picie_loss(
                f1, f2, y1, y2, centroids, weights, criterion, cfg.temperature, (r1, r2) if raw else None
            )
        if not _finite_everywhere(loss, shared):
            bad = [k for k, v in terms.items() if k in TERMS and not torch.isfinite(v)] or ["of another process"]
            raise NonFiniteLoss(
                f"non-finite loss at epoch {epoch}, batch {batch_number + 1}, term(s) {', '.join(bad)}; "
                "the last checkpoint is from the end of the previous epoch"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if batch is None:
            model.load_state_dict(running, strict=False)  # the blank images' BatchNorm statistics are not kept
            continue
        n = len(idx)
        seen += n
        sums += torch.stack([loss.detach(), *(terms[k].detach() for k in TERMS)]).double() * n
    if distributed.world() > 1:
        distributed.all_reduce_(sums)
        distributed.all_reduce_(seen)
    return dict(zip(("loss", *TERMS), (sums / seen).tolist(), strict=True))


def _finite_everywhere(loss: torch.Tensor, shared: bool) -> bool:
    """Whether the step's loss is finite in every process: one stops, all stop (none waits in DDP)."""
    if not shared:
        return bool(torch.isfinite(loss))
    bad = distributed.all_reduce_((~torch.isfinite(loss.detach())).to(torch.int64).reshape(1))
    return int(bad) == 0


def _empty_step(model, cfg: Config) -> torch.Tensor:
    """This process's loss in a training step in which it has no image: a forward pass through DDP on two
    blank images (BatchNorm needs two values per channel at res 32) times zero, so that DDP sums a zero
    gradient from here and every process takes every step with the same collectives. The pass moves
    BatchNorm's running statistics: the caller puts them back."""
    device = next(model.parameters()).device
    blank = network_features(model, torch.zeros(2, 3, cfg.res, cfg.res, device=device), cfg)
    return blank.sum() * 0.0


# ---- the IB-Focal schedule -----------------------------------------------------------------------
class Schedule:
    """Which loss each epoch uses. For ``ib_focal``: CE first, then IB-Focal from ``switch_epoch``.

    ``switch="min_loss"``: after each CE epoch, once the epoch's mean loss fails to improve on the
    lowest so far, the minimum (epoch m) has passed: training goes back to epoch m's weights and
    optimizer state and goes on with IB-Focal as epoch m + 1. The CE epoch that revealed the
    minimum is discarded and not counted, so the run equals ``switch=m``. If the loss is still
    falling after half the epochs, the switch is forced there. ``switch=N``: the first N epochs
    use CE.
    """

    def __init__(self, cfg: Config, epochs: int) -> None:
        self.loss, self.rule, self.epochs = cfg.loss, cfg.switch, epochs
        self.cap = max(1, epochs // 2)
        self.best_loss = math.inf
        self.ce_min_epoch: int | None = None
        self.switch_epoch: int | None = 1 if (cfg.loss == "ib_focal" and cfg.switch == 0) else None

    def phase(self, epoch: int) -> str:
        if self.loss != "ib_focal":
            return self.loss
        return "ib_focal" if self.switch_epoch is not None and epoch >= self.switch_epoch else "ce"

    def end_of_epoch(self, epoch: int, loss: float) -> str:
        """Returns "keep", "new_min" (snapshot these weights) or "restore" (discard this epoch and go
        back to the minimum's weights; the next epoch is ``switch_epoch``)."""
        if self.phase(epoch) != "ce" or self.loss != "ib_focal":
            return "keep"
        if self.rule != "min_loss":
            if epoch >= self.rule:
                self.switch_epoch = epoch + 1
            return "keep"
        if loss < self.best_loss:
            self.best_loss, self.ce_min_epoch = loss, epoch
            if epoch >= self.cap:
                self.switch_epoch = epoch + 1
            return "new_min"
        self.switch_epoch = self.ce_min_epoch + 1
        return "restore"

    def state_dict(self) -> dict:
        return {"best_loss": self.best_loss, "ce_min_epoch": self.ce_min_epoch, "switch_epoch": self.switch_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best_loss, self.ce_min_epoch, self.switch_epoch = (
            state["best_loss"],
            state["ce_min_epoch"],
            state["switch_epoch"],
        )


# ---- checkpoints -------------------------------------------------------------------------------
CHECKPOINT_KEYS = ("config", "epoch", "model", "optimizer", "centroids", "schedule", "history")  # checkpoint.pt
CE_MIN_KEYS = ("epoch", "model", "optimizer")  # ce_min.pt: the weights at the CE minimum


def load_checkpoint(path: Path, keys: tuple[str, ...] = CHECKPOINT_KEYS) -> dict:
    """A checkpoint written by ``train``, holding ``keys`` of the types ``train`` writes; read with
    ``weights_only=True`` (no arbitrary unpickling). Anything else is a ``ValueError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint there (a run writes one at the end of every epoch)")
    ckpt = load_tensors(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a picie_lib checkpoint (expected format {CHECKPOINT_FORMAT!r})")
    damaged = "it is damaged or was edited. Restore it from a copy, or train again with --overwrite"
    missing = [k for k in keys if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: the checkpoint lacks {', '.join(map(repr, missing))}; {damaged}")
    for key, (expected, holds) in CHECKPOINT_TYPES.items():
        if key in ckpt and not holds(ckpt[key]):
            raise ValueError(f"{path}: the checkpoint's {key!r} is not {expected}; {damaged}")
    return ckpt


CHECKPOINT_TYPES = {  # what ``train`` writes under each key
    "epoch": ("an integer >= 0", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0),
    "world_size": ("an integer >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "processes_per_node": ("an integer >= 1", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1),
    "config": ("a mapping of parameters", lambda v: isinstance(v, dict)),
    "model": ("a state dict", lambda v: isinstance(v, dict) and all(isinstance(t, torch.Tensor) for t in v.values())),
    "optimizer": ("an optimizer state", lambda v: isinstance(v, dict) and {"state", "param_groups"} <= set(v)),
    "history": ("a list of epoch records", lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v)),
    "schedule": (
        "a schedule with best_loss, ce_min_epoch and switch_epoch",
        lambda v: isinstance(v, dict) and {"best_loss", "ce_min_epoch", "switch_epoch"} <= set(v),
    ),
}


def _load_state(module, state: dict, path: Path) -> None:
    """``module.load_state_dict(state)``; a mismatch is one line naming the checkpoint."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError) as err:
        raise ValueError(f"{path}: does not fit ({first_line(err)}); it is damaged or of another model") from None


def processes_line(world_size: int) -> str:
    return "1 process" if world_size == 1 else f"{world_size} processes (torchrun)"


def _check_same_processes(ckpt: dict, path: Path) -> None:
    """A run's steps are split by the number of processes (``distributed.rank_batches``), so a resume with
    another number would change its result: refused, with the command that continues it."""
    saved, now = ckpt.get("world_size"), distributed.world()
    if saved is not None and saved != now:  # a checkpoint from before the count was kept: not known
        raise ValueError(
            f"{path} was written by {processes_line(saved)}; this job is {processes_line(now)}, and the split of "
            f"every step, so the result, depends on it. Continue with: "
            f"{distributed.command_line(saved, ckpt.get('processes_per_node', saved))}"
        )


def _check_same_config(saved: dict, cfg: Config, path: Path) -> None:
    diff = differences(saved, cfg, TRAINING_RUNTIME_KEYS, saved_as="checkpoint")
    if diff:
        raise ValueError(f"{path} was written by a different configuration ({'; '.join(diff)})")


def _record_session(out_dir: Path, trains: bool) -> None:
    """Add this session to ``environment.json``; when it will train, warn if the git commit or torch
    version changed since the last session (the epochs from here may then not repeat the numbers)."""
    now = environment()
    earlier = [e for e in read_sessions(out_dir / "environment.json") if "versions" in e]
    changed = environment_changes(earlier[-1], now) if earlier else []
    record_session(out_dir, world_size=distributed.world(), changed_since_last_session=changed)
    if changed and trains:
        warnings.warn(
            f"{out_dir}: resuming with {'; '.join(changed)}: the epochs from here may not repeat the numbers an "
            "uninterrupted run would give (environment.json keeps every session's versions)",
            stacklevel=3,
        )


# ---- the training loop ---------------------------------------------------------------------------
def train(
    cfg: Config,
    out_dir: Path,
    resume: bool = False,
    overwrite: bool = False,
    on_epoch: Callable[[dict], None] | None = None,
) -> dict:
    """Train one run into ``out_dir``: config.json, environment.json, log.jsonl (one line per
    epoch), checkpoint.pt (rewritten atomically at the end of every epoch) and summary.json.
    ``on_epoch(record)`` is called after every epoch's checkpoint (e.g. to draw live curves).
    The folder is this job's alone while it runs (``runs.exclusive``); training that goes on removes
    the scores of earlier weights (``invalidate_evaluation``)."""
    cfg.check_runnable()  # a bad device, data set or backbone stops here, before --out exists or is cleared
    device = resolve_device(cfg.device)
    dataset = build_dataset(cfg, "train", mode="train")
    check_data(cfg, dataset)
    model = build_model(cfg, device)
    out_dir, main = Path(out_dir), distributed.is_main()
    with exclusive(out_dir) if main else contextlib.nullcontext():  # rank 0 writes
        from_checkpoint = resume and (out_dir / "checkpoint.pt").exists()
        made_here = not from_checkpoint and _start_run_folder(cfg, out_dir, resume, overwrite)
        try:
            return _train(cfg, dataset, model, out_dir, from_checkpoint, on_epoch)
        except Exception:
            if made_here and main and not (out_dir / "checkpoint.pt").is_file():
                discard_run(out_dir)  # nothing worth keeping: the corrected command may use the same --out
            raise


def _start_run_folder(cfg: Config, out_dir: Path, resume: bool, overwrite: bool) -> bool:
    """Make ``out_dir`` a new run's folder (``new_run_dir``) and return True; or, for ``--resume`` before
    the run's first checkpoint (same configuration), start that run again in its folder and return False."""
    if resume and (out_dir / "config.json").is_file():
        _check_same_config(load_config(out_dir / "config.json").to_dict(), cfg, out_dir / "config.json")
        if distributed.is_main():
            for name in RUN_FILES:
                (out_dir / name).unlink(missing_ok=True)
        return False
    if distributed.is_main():
        new_run_dir(out_dir, overwrite=overwrite)
    return True


def check_backbone(cfg: Config) -> None:
    """The backbone weights ``pretrained`` names load (a file that is there and holds a ResNet-18, the
    ImageNet weights downloadable or cached): checked before a job clears or writes its folder. Rank 0
    alone, which trains the pretext backbone once if it is not cached yet."""
    if cfg.pretrained is not None and distributed.is_main():
        load_backbone_state_dict(cfg.pretrained)


def check_data(cfg: Config, dataset) -> None:
    """What a run's data must allow, checked before anything is written: images to train on, and at
    least ``n_clusters`` pixels in the k-means' initial fit (training's, and the evaluation's, which
    takes the same number of batches of the same size from the train split)."""
    if len(dataset) == 0:
        raise ValueError(f"dataset={cfg.dataset}: its train split holds no image ({cfg.data_root or 'built in'})")
    images = min(cfg.kmeans_init_batches * cfg.batch_size_cluster * distributed.world(), len(dataset))
    points = images * (cfg.res // 4) ** 2
    if cfg.kmeans_max_init_points is not None:
        points = min(points, cfg.kmeans_max_init_points)
    if points < cfg.n_clusters:
        raise ValueError(
            f"n_clusters={cfg.n_clusters}: the k-means' initial fit holds {points} pixels ({images} images of "
            f"{cfg.res // 4} x {cfg.res // 4} features), fewer than the clusters; expected n_clusters <= {points}, "
            "or more kmeans_init_batches, batch_size_cluster or res"
        )


def _train(cfg: Config, dataset: SceneDataset, model, out_dir: Path, from_checkpoint: bool, on_epoch) -> dict:
    device = next(model.parameters()).device
    main = distributed.is_main()  # under torchrun rank 0 writes every file; all read the checkpoint
    epochs = cfg.epochs_for()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    schedule = Schedule(cfg, epochs)
    ce_min_state = None  # (model, optimizer) state at the CE minimum, for the min_loss switch
    start = 1
    history: list[dict] = []  # log.jsonl's lines, also kept in every checkpoint

    if from_checkpoint:
        path = out_dir / "checkpoint.pt"
        ckpt = load_checkpoint(path)
        _check_same_config(ckpt["config"], cfg, path)
        start = ckpt["epoch"] + 1
        if start <= epochs:  # a finished run trains no more, whatever the number of processes
            _check_same_processes(ckpt, path)
        _load_state(model, ckpt["model"], path)
        _load_state(optimizer, ckpt["optimizer"], path)
        schedule.load_state_dict(ckpt["schedule"])
        if (out_dir / "ce_min.pt").exists():
            ce_min_state = load_checkpoint(out_dir / "ce_min.pt", CE_MIN_KEYS)
        # the log as the checkpoint saw it: lines of an epoch that did not finish are dropped
        history = list(ckpt["history"])
        if main:
            atomic_write_text(out_dir / "log.jsonl", "".join(json_text(r) + "\n" for r in history))
    if main:
        if start <= epochs:  # these weights will change: no score of the earlier ones may stay beside them
            invalidate_evaluation(out_dir)
        save_config(cfg, out_dir / "config.json")
        _record_session(out_dir, trains=start <= epochs)
    # DDP for the training step (gradients averaged over the processes); the passes without gradients
    # use the model itself. Each process's BatchNorm statistics follow its own batches and are averaged
    # after every pass that moves them.
    trained = model
    if distributed.world() > 1:
        trained = distributed.data_parallel(model, device)

    run_start = time.perf_counter()
    upcoming = {"epoch": start}  # the min_loss switch sends the loop back to the minimum's epoch

    def epoch_numbers():
        while upcoming["epoch"] <= epochs:
            yield upcoming["epoch"]

    bar = progress(epoch_numbers(), f"{cfg.loss} epochs run", total=epochs - start + 1)
    for epoch in bar:
        upcoming["epoch"] = epoch + 1
        timer = Timer()
        phase = schedule.phase(epoch)
        if phase == "ib_focal" and epoch == schedule.switch_epoch and cfg.ib_reset_optimizer:
            optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)  # Adam's moments start again
        lr = cfg.lr * (cfg.ib_lr_factor if phase == "ib_focal" else 1.0)  # a function of the phase: resumes alike
        for group in optimizer.param_groups:
            group["lr"] = lr
        dataset.set_view_params(
            draw_view_params(
                len(dataset), cfg, torch.Generator().manual_seed(derive_seed(cfg.seed, epoch, STREAM_VIEWS))
            )
        )
        order = permutation(len(dataset), derive_seed(cfg.seed, epoch, STREAM_CLUSTER_ORDER))
        with timer("cluster"):
            centroids, kmeans_loss, skipped = cluster_pass(
                model, dataset, order, cfg, derive_seed(cfg.seed, epoch, STREAM_KMEANS)
            )
        with timer("label"):
            labels, counts = label_pass(model, dataset, order, centroids, cfg)
        balance = {"ce": cfg.balance, "focal": cfg.focal_balance, "ib_focal": cfg.ib_balance}[phase]
        weights = [class_weights(c, balance) for c in counts]
        with timer("train"):
            stats = train_pass(
                trained,
                optimizer,
                dataset,
                permutation(len(dataset), derive_seed(cfg.seed, epoch, STREAM_TRAIN_ORDER)),
                labels,
                centroids,
                weights,
                make_criterion(cfg, phase),
                cfg,
                epoch,
            )
        distributed.average_bn_buffers(model)
        action = schedule.end_of_epoch(epoch, stats["loss"])
        if action == "new_min":
            ce_min_state = {
                "format": CHECKPOINT_FORMAT,
                "epoch": epoch,
                "model": copy.deepcopy(model.state_dict()),
                "optimizer": copy.deepcopy(optimizer.state_dict()),
            }
            if main:
                atomic_torch_save(ce_min_state, out_dir / "ce_min.pt")
        elif action == "restore":
            model.load_state_dict(ce_min_state["model"])
            optimizer.load_state_dict(ce_min_state["optimizer"])
            upcoming["epoch"] = schedule.switch_epoch
            if hasattr(bar, "total"):  # the epoch after the minimum runs again, now with IB-Focal
                bar.total += 1
        record = {
            "epoch": epoch,
            "phase": phase,
            **stats,
            "kmeans_loss": kmeans_loss,
            "empty_clusters": [int((c == 0).sum()) for c in counts],
            "largest_cluster_share": [float(c.max() / c.sum()) for c in counts],
            "lr": lr,
            "seconds": timer.totals,
        }
        if skipped:
            record["skipped_files"] = skipped
        if action == "restore":
            record["discarded"] = True  # its weights were dropped for the minimum's
        if phase == "ce" and schedule.switch_epoch is not None:
            record["switch"] = {
                "ib_focal_from_epoch": schedule.switch_epoch,
                "weights_from_epoch": schedule.switch_epoch - 1,
            }
        # the log line first: a run killed in between redoes this epoch and drops the line on resume
        history.append(record)
        if main:
            append_jsonl(out_dir / "log.jsonl", record)
            atomic_torch_save(
                {
                    "format": CHECKPOINT_FORMAT,
                    "config": cfg.to_dict(),
                    "epoch": upcoming["epoch"] - 1,  # the epoch whose weights these are
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "centroids": centroids.cpu(),
                    "schedule": schedule.state_dict(),
                    "history": history,
                    "world_size": distributed.world(),
                    "processes_per_node": distributed.processes_per_node(),
                },
                out_dir / "checkpoint.pt",
            )
            if on_epoch is not None:
                on_epoch(record)

    skipped = sorted({name for r in history for name in r.get("skipped_files", [])})
    if main:
        warn_skipped(skipped, "were left out of training (each epoch's are in log.jsonl)")
    summary = {
        "loss": cfg.loss,
        "seed": cfg.seed,
        "epochs": epochs,
        **schedule.state_dict(),
        "train_seconds_this_session": time.perf_counter() - run_start,
        "seconds_per_pass": {k: sum(r["seconds"].get(k, 0.0) for r in history) for k in ("cluster", "label", "train")},
        "skipped_files": skipped,
    }
    if main:
        write_json(out_dir / "summary.json", summary)
    distributed.barrier()  # what rank 0 wrote is there for every process (evaluate reads it next)
    return summary
