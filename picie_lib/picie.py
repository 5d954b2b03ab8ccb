"""PiCIE's epoch (Cho et al. 2021, section 3; the original's ``train_picie.py``), with CE, Focal or IB-Focal as
the per-pixel loss. Read top to bottom, as ``run_epoch`` runs it.

Every image's two views are drawn once per epoch (``transforms.draw_view_params``), so that the three
passes see the same ones; every random stream is a function of ``(seed, epoch, purpose)`` (``derive_seed``),
so a resumed epoch replays exactly. Then:

1. **clustering** (``cluster_pass``): features of both views (no gradient), one mini-batch k-means per view;
2. **labelling** (``label_pass``): every pixel of both views gets its nearest centroid (kept in memory);
3. **training** (``train_pass``): the four terms of ``picie_loss`` with the centroids as frozen classifiers,
   each the per-pixel loss of the epoch's phase (``make_criterion``).

BatchNorm (``bn_eval``): with "running" (PiCIE's code), pass 1 runs in ``train()`` mode and moves the
running statistics, pass 2 uses them (``eval()``); with "batch", passes 1 and 2 use the batch's statistics
and leave the running ones alone. Pass 3 trains in ``train()`` mode. Passes 1 and 2 visit the same batches
in the same order.

Which loss an epoch uses, and the optimiser across IB-Focal's switch, are method 2's schedule (``schedule.py``).

Under torchrun each pass is split between the processes by ``loader.Batches``, and what they must agree on
is summed across them (``distributed``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from picie_lib import distributed
from picie_lib.clustering import MiniBatchKMeans, assign_labels
from picie_lib.config import Config
from picie_lib.data import SceneDataset
from picie_lib.loader import Batches, require_usable
from picie_lib.losses import centroid_logits, class_weights, cross_entropy, focal_loss, ib_focal_loss
from picie_lib.model import PanopticFPN, bf16_autocast, bn_mode, bn_state
from picie_lib.pretext import resolve_pretrained
from picie_lib.progress import progress
from picie_lib.runs import Timer
from picie_lib.transforms import augment, crop_flip, draw_view_params


# ---- seed streams ------------------------------------------------------------------------------------
def derive_seed(seed: int, *keys: int) -> int:
    """An independent 31-bit seed (faiss takes int32) for (seed, epoch, purpose, ...): every random stream of a run is
    a pure function of the run's seed and where it is used, so a resumed epoch replays exactly."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0] & 0x7FFFFFFF)


STREAM_VIEWS, STREAM_CLUSTER_ORDER, STREAM_TRAIN_ORDER, STREAM_KMEANS = 1, 2, 3, 4


def permutation(n: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


# ---- the network and the views' features -------------------------------------------------------------
def build_model(cfg: Config, device: torch.device) -> PanopticFPN:
    with distributed.main_first(enabled=bool(cfg.pretrained)):  # rank 0 trains or downloads the backbone once
        pretrained = resolve_pretrained(cfg.pretrained)  # training the pretext backbone here draws random numbers,
        torch.manual_seed(cfg.seed)  # so the seed comes after: the initial weights are a function of the seed alone
        model = PanopticFPN(pretrained=pretrained).to(device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def network_features(model: torch.nn.Module, images: torch.Tensor, cfg: Config) -> torch.Tensor:
    """Raw (unnormalised) float32 features (B, 128, H/4, W/4) of normalised float images on the
    model's device, under bf16 autocast if ``cfg.amp`` (and the device has bfloat16: ``model.bf16_autocast``)."""
    device = next(model.parameters()).device
    images = images.to(device, non_blocking=True)
    if cfg.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_autocast(device.type, cfg.amp)):
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


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B*h*w, C), pixel-major as PiCIE's ``feature_flatten``."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def clustering_bn(cfg: Config) -> str:
    """BatchNorm mode (``model.bn_mode``) of the clustering passes: training's and the evaluation's."""
    return "update" if cfg.bn_eval == "running" else "batch"


def labelling_bn(cfg: Config) -> str:
    """BatchNorm mode of the labelling pass and of scoring."""
    return "running" if cfg.bn_eval == "running" else "batch"


# ---- pass 1: clustering ------------------------------------------------------------------------------
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
    size, shared = cfg.batch_size_cluster, distributed.joined()
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


# ---- pass 2: labelling -------------------------------------------------------------------------------
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
    if distributed.joined():
        shape = next(s for s in distributed.all_gather_objects(None if labels is None else labels.shape) if s)
        labels = distributed.all_reduce_(labels if labels is not None else _label_tensor(shape[1], shape[2:], cfg))
        distributed.all_reduce_(counts)
    return labels, counts


def _label_tensor(n_images: int, size, cfg: Config) -> torch.Tensor:
    dtype = torch.uint8 if cfg.n_clusters <= 256 else torch.int32
    return torch.zeros((2, n_images, *size), dtype=dtype)


# ---- the loss ----------------------------------------------------------------------------------------
Criterion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def make_criterion(cfg: Config, phase: str, ib_alpha: float | None = None) -> Criterion:
    """The per-pixel loss of a phase as ``(logits (N,K), target (N,), features (N,D), weight) -> loss``; IB-Focal's
    alpha is ``ib_alpha`` if given, else the configuration's."""
    if phase == "ce":
        return lambda z, t, f, w: cross_entropy(z, t, weight=w)
    if phase == "focal":
        return lambda z, t, f, w: focal_loss(z, t, gamma=cfg.gamma, weight=w)
    if phase == "ib_focal":
        return lambda z, t, f, w: ib_focal_loss(
            z,
            t,
            f,
            alpha=cfg.ib_alpha if ib_alpha is None else ib_alpha,
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


def batch_loss(model, dataset: SceneDataset, batch, labels, centroids, cfg: Config, criteria: list, weights: list):
    """``picie_loss`` of a training batch ``(idx, views)`` under each criterion of ``criteria`` with its class
    weights (one pair per view) in ``weights``: the views' features are computed once."""
    idx, views = batch
    device = next(model.parameters()).device
    r1, r2 = batch_features(model, dataset, idx, views, cfg, normalize=False)
    f1, f2 = F.normalize(r1, dim=1), F.normalize(r2, dim=1)
    y1, y2 = labels[0, idx].to(device).long(), labels[1, idx].to(device).long()
    ib_features = (r1, r2) if cfg.ib_feature == "raw" else None
    return [
        picie_loss(f1, f2, y1, y2, centroids, w, criterion, cfg.temperature, ib_features)
        for criterion, w in zip(criteria, weights, strict=True)
    ]


@torch.no_grad()
def matched_alpha(model, dataset: SceneDataset, order: list[int], labels, centroids, counts, cfg: Config) -> float:
    """``ib_alpha_match``: the alpha at which IB-Focal's loss on the first training step of ``order`` equals CE's
    (the CE phase's class weights against the IB phase's), on the batch's statistics, nothing moved. Under
    torchrun the step's shares are summed over the processes."""
    device = next(model.parameters()).device
    centroids = centroids.to(device)
    weights = [[_on(class_weights(c, balance), device) for c in counts] for balance in (cfg.balance, cfg.ib_balance)]
    criteria = [make_criterion(cfg, "ce"), make_criterion(cfg, "ib_focal", ib_alpha=1.0)]
    sums = torch.zeros(3, dtype=torch.float64)  # CE x n, IB-Focal at alpha 1 x n, n
    step = order[: cfg.batch_size_train * distributed.world()]
    batches = Batches(dataset, step, cfg.batch_size_train, cfg, require_usable=False)
    with bn_mode(model, "batch"):
        for batch in batches:
            (ce, _), (ib, _) = batch_loss(model, dataset, batch, labels, centroids, cfg, criteria, weights)
            sums += torch.tensor([float(ce), float(ib), 1.0], dtype=torch.float64) * len(batch[0])
    distributed.all_reduce_(sums)
    if sums[2] == 0 or sums[1] <= 0:
        raise ValueError("ib_alpha_match: no usable image in the IB phase's first step to match alpha on")
    return float(sums[0] / sums[1])


def _on(weights: torch.Tensor | None, device) -> torch.Tensor | None:
    return None if weights is None else weights.to(device)


# ---- pass 3: training --------------------------------------------------------------------------------
def train_pass(model, optimizer, dataset, order, labels, centroids, weights, criterion, cfg, epoch) -> dict:
    """One optimisation pass; returns the epoch's mean loss and mean of each term (over every image of
    the pass: under torchrun summed over the processes). ``model`` may be a DistributedDataParallel:
    each process takes its share of every step and DDP averages the gradients; a process with no usable
    item in a step (the last step's even split, bad files) takes part with a zero gradient
    (``_empty_step``), so that every process takes every step."""
    device = next(model.parameters()).device
    centroids = centroids.to(device)
    weights = [_on(w, device) for w in weights]
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
            ((loss, terms),) = batch_loss(model, dataset, batch, labels, centroids, cfg, [criterion], [weights])
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
        n = len(batch[0])
        seen += n
        sums += torch.stack([loss.detach(), *(terms[k].detach() for k in TERMS)]).double() * n
    distributed.all_reduce_(sums)  # over the processes under torchrun
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


# ---- one epoch ---------------------------------------------------------------------------------------
def run_epoch(model, trained, optimizer, dataset, cfg: Config, epoch: int, phase: str, ib_alpha=None) -> dict:
    """One PiCIE epoch: the views, the clustering pass, the labelling pass and the training pass.
    ``trained`` is the model the training step goes through (DDP under torchrun, else ``model``); ``ib_alpha``
    IB-Focal's alpha once its phase has one (else the configuration's, or ``matched_alpha`` with ``ib_alpha_match``).
    Returns the epoch's mean loss and terms (``stats``), the centroids, the k-means losses, the cluster
    sizes, the files left out as bad, the seconds of each pass and, for IB-Focal, the alpha it used."""
    timer = Timer()
    views = torch.Generator().manual_seed(derive_seed(cfg.seed, epoch, STREAM_VIEWS))
    dataset.set_view_params(draw_view_params(len(dataset), cfg, views))
    order = permutation(len(dataset), derive_seed(cfg.seed, epoch, STREAM_CLUSTER_ORDER))
    with timer("cluster"):
        centroids, kmeans_loss, skipped = cluster_pass(
            model, dataset, order, cfg, derive_seed(cfg.seed, epoch, STREAM_KMEANS)
        )
    with timer("label"):
        labels, counts = label_pass(model, dataset, order, centroids, cfg)
    balance = {"ce": cfg.balance, "focal": cfg.focal_balance, "ib_focal": cfg.ib_balance}[phase]
    weights = [class_weights(c, balance) for c in counts]
    train_order = permutation(len(dataset), derive_seed(cfg.seed, epoch, STREAM_TRAIN_ORDER))
    if phase == "ib_focal" and ib_alpha is None:  # the IB phase's first epoch
        ib_alpha = cfg.ib_alpha
        if cfg.ib_alpha_match:
            ib_alpha = matched_alpha(model, dataset, train_order, labels, centroids, counts, cfg)
    criterion = make_criterion(cfg, phase, ib_alpha)
    with timer("train"):
        stats = train_pass(trained, optimizer, dataset, train_order, labels, centroids, weights, criterion, cfg, epoch)
    distributed.average_bn_buffers(model)
    return {
        "stats": stats,
        "centroids": centroids,
        "kmeans_loss": kmeans_loss,
        "counts": counts,
        "skipped": skipped,
        "seconds": timer.totals,
        "ib_alpha": ib_alpha if phase == "ib_focal" else None,
    }
