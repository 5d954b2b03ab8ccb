"""PiCIE's mini-batch k-means (``commons.py::run_mini_batch_kmeans``, picie.md section 2).

The first ``init_batches`` batches of pixel features are clustered with Lloyd's k-means
(faiss, on a GPU index when faiss sees a GPU; or the pure-torch ``lloyd_kmeans``). Every later
batch is assigned to its nearest centroid and each centroid moves to the running mean of all
the pixels it has been given: ``count_k += n_k``, ``c_k <- (1 - n_k / count_k) c_k + n_k / count_k
mean_k``. Centroids are never re-normalised, as in the original.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from picie_lib import distributed

try:
    import faiss
except ImportError:  # the torch implementation takes over
    faiss = None

ASSIGN_CHUNK = 1 << 18  # pixels per distance block, to bound memory on large batches


def faiss_gpu_count() -> int:
    return faiss.get_num_gpus() if faiss is not None else 0


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """ "auto": faiss on its GPU if it has one; torch on a CUDA device faiss cannot use; else faiss
    on the CPU; torch everywhere faiss is missing."""
    if backend == "faiss" and faiss is None:
        raise ImportError("kmeans_backend='faiss' but faiss is not installed (pip install faiss-gpu)")
    if backend != "auto":
        return backend
    if faiss is None:
        return "torch"
    if torch.device(device).type == "cuda" and faiss_gpu_count() == 0:
        return "torch"
    return "faiss"


def nearest_centroid(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index and squared L2 distance of each row of ``x`` (N, D) to its nearest centroid (K, D)."""
    c = centroids.to(x.dtype)
    c_sq = (c * c).sum(1)
    index, dist = [], []
    for chunk in x.split(ASSIGN_CHUNK):
        # ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; the argmin ignores ||x||^2 (as PiCIE's labelling).
        score = chunk @ c.T * 2 - c_sq
        best, idx = score.max(dim=1)
        index.append(idx)
        dist.append(((chunk * chunk).sum(1) - best).clamp_min(0))
    return torch.cat(index), torch.cat(dist)


class PointSet:
    """The rows of an (N, D) matrix kept as the pieces (batches) they came in.

    The initial k-means fit holds PiCIE's first 20 batches of pixels: 20 x 256 x 6,400 128-d float32
    features per view at the paper's settings, 16.8 GB. The pieces are never concatenated (that would
    double the peak); arithmetic goes through blocks of at most ``ASSIGN_CHUNK`` rows.
    """

    def __init__(self, pieces: list[torch.Tensor] | torch.Tensor | None = None):
        pieces = [pieces] if isinstance(pieces, torch.Tensor) else list(pieces or [])
        self.pieces: list[torch.Tensor] = [piece.detach().float() for piece in pieces]

    def append(self, piece: torch.Tensor) -> None:
        self.pieces.append(piece.detach().float())

    def __len__(self) -> int:
        return sum(len(p) for p in self.pieces)

    @property
    def dim(self) -> int:
        return next((p.shape[1] for p in self.pieces if len(p)), 0)

    @property
    def device(self) -> torch.device:
        return next((p.device for p in self.pieces if len(p)), torch.device("cpu"))

    def blocks(self):
        """Blocks of at most ``ASSIGN_CHUNK`` rows, in order (empty pieces give none)."""
        for piece in self.pieces:
            if len(piece):
                yield from piece.split(ASSIGN_CHUNK)

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """The rows at the given global indices."""
        starts = torch.tensor([0] + [len(p) for p in self.pieces]).cumsum(0)
        out = torch.empty(len(index), self.dim, device=self.device)
        for i, j in enumerate(index.tolist()):
            piece = int(torch.searchsorted(starts, j, right=True)) - 1
            out[i] = self.pieces[piece][j - int(starts[piece])]
        return out

    def to_cpu_matrix(self) -> torch.Tensor:
        """Become one contiguous CPU matrix (what faiss needs) and return it. It is built piece by piece
        while the pieces are released, so that the peak is the matrix plus one piece."""
        out = torch.empty(len(self), self.dim)
        start = 0
        while self.pieces:
            piece = self.pieces.pop(0)
            out[start : start + len(piece)] = piece.cpu()
            start += len(piece)
        self.pieces = [out]
        return out


def _points(x: torch.Tensor | PointSet) -> PointSet:
    return x if isinstance(x, PointSet) else PointSet(x)


def lloyd_kmeans(
    x: torch.Tensor | PointSet,
    k: int,
    n_iter: int,
    seed: int,
    init: torch.Tensor | None = None,
    across_processes: bool = False,
) -> torch.Tensor:
    """Lloyd's k-means in torch, on ``x``'s device, following faiss's ``Clustering``.

    Initial centroids are ``k`` distinct points drawn at random (faiss's default). After each
    assignment a centroid is the mean of its points (float32 sums); an empty cluster takes over half
    of the largest one: a copy of that centroid nudged by a small relative perturbation, the two moving
    apart symmetrically (faiss's ``split_clusters`` rule, with the largest cluster chosen instead
    of a random one so that the result does not depend on a second random stream).
    ``init`` (k, D) replaces the random start.

    ``across_processes``: ``x`` is this process's share of the points (torchrun). The points are
    numbered as one process would hold them (``global_rows``), so the random start is the
    single-process one; each iteration's sums and counts are summed over the processes, and every
    process ends with the same centroids (equal to one process's up to the order of float additions).
    """
    points = _points(x)
    n, d = len(points), points.dim
    if across_processes:
        n, d = int(distributed.sum_scalar(n)), int(_max_over_processes(d))
    if n < k:
        raise ValueError(f"k-means needs at least k={k} points, got {n}")
    device = points.device
    if init is not None:
        centroids = init.to(device, torch.float32).clone()
    else:
        gen = torch.Generator().manual_seed(int(seed))
        chosen = torch.randperm(n, generator=gen)[:k]
        centroids = global_rows(points, chosen, d) if across_processes else points.rows(chosen)
    for _ in range(n_iter):
        counts = torch.zeros(k, dtype=torch.int64, device=device)
        sums = torch.zeros_like(centroids)
        for block in points.blocks():
            assign, _ = nearest_centroid(block, centroids)
            counts += torch.bincount(assign, minlength=k)
            sums.index_add_(0, assign, block)
        if across_processes:
            distributed.all_reduce_(counts)
            distributed.all_reduce_(sums)
        nonempty = counts > 0
        centroids[nonempty] = sums[nonempty] / counts[nonempty, None].float()
        for empty in torch.nonzero(~nonempty).flatten().tolist():
            big = int(counts.argmax())
            eps = 1.0 / 1024
            sign = torch.ones(d, device=device)
            sign[1::2] = -1
            centroids[empty] = centroids[big] * (1 + sign * eps)
            centroids[big] = centroids[big] * (1 - sign * eps)
            counts[empty] = counts[big] // 2
            counts[big] -= counts[empty]
    return centroids


def _max_over_processes(value: int) -> int:
    return max(distributed.all_gather_objects(value))


def global_rows(points: PointSet, index: torch.Tensor, dim: int) -> torch.Tensor:
    """Rows ``index`` of the points of all processes, numbered as one process holding every step's
    whole batch would number them: step by step, and within a step process 0's piece, then process
    1's, ... (each process's pieces are its shares of the steps, ``distributed.rank_batches``). Each
    process fills the rows it holds; the sum over processes is the full set, the same everywhere."""
    sizes = distributed.all_gather_objects([len(p) for p in points.pieces])  # [process][step]
    me = distributed.rank()
    starts, offset = {}, 0
    for step in range(len(sizes[0])):
        for proc, proc_sizes in enumerate(sizes):
            starts[proc, step] = offset
            offset += proc_sizes[step]
    out = torch.zeros(len(index), dim, device=points.device)
    for i, j in enumerate(index.tolist()):
        for step, piece in enumerate(points.pieces):
            start = starts[me, step]
            if start <= j < start + len(piece):
                out[i] = piece[j - start]
    return distributed.all_reduce_(out)


def faiss_kmeans(
    x: torch.Tensor | PointSet, k: int, n_iter: int, seed: int, init: torch.Tensor | None = None
) -> torch.Tensor:
    """faiss's ``Clustering`` with PiCIE's settings (no subsampling), on a GPU index when it has one.
    ``init`` (k, D) replaces faiss's random start. A ``PointSet`` becomes the float32 matrix faiss reads."""
    device = x.device
    data = x.to_cpu_matrix().numpy() if isinstance(x, PointSet) else x.detach().float().cpu().numpy()
    data = np.ascontiguousarray(data)
    d = data.shape[1]
    clus = faiss.Clustering(d, k)
    clus.niter = n_iter
    clus.seed = int(seed)
    clus.max_points_per_centroid = 10_000_000  # as PiCIE: use every point
    clus.min_points_per_centroid = 1  # no warning on small fits
    clus.verbose = False
    if init is not None:
        faiss.copy_array_to_vector(np.ascontiguousarray(init.detach().float().cpu().numpy()).ravel(), clus.centroids)
    if faiss_gpu_count() > 0:
        res = faiss.StandardGpuResources()
        cfg = faiss.GpuIndexFlatConfig()
        cfg.device = torch.cuda.current_device() if torch.cuda.is_available() else 0
        index = faiss.GpuIndexFlatL2(res, d, cfg)
    else:
        index = faiss.IndexFlatL2(d)
    clus.train(data, index)
    centroids = faiss.vector_float_to_array(clus.centroids).reshape(k, d)
    return torch.from_numpy(centroids.copy()).to(device)


def kmeans(x: torch.Tensor | PointSet, k: int, n_iter: int, seed: int, backend: str = "auto") -> torch.Tensor:
    """Centroids (k, D) of ``x`` (N, D) by Lloyd's algorithm, with faiss or torch. Under torchrun ``x``
    is this process's share and the fit is torch's, across the processes (faiss sees one process)."""
    if distributed.joined():
        return lloyd_kmeans(x, k, n_iter, seed, across_processes=True)
    if resolve_backend(backend, x.device) == "faiss":
        return faiss_kmeans(x, k, n_iter, seed)
    return lloyd_kmeans(x if isinstance(x, PointSet) else x.float(), k, n_iter, seed)


RESTART_STREAM = 101  # keys the restarts' seeds apart from the run's other streams


def restart_seed(seed: int, restart: int) -> int:
    """The seed of restart ``restart`` of a fit seeded ``seed``: restart 0 is the fit itself, so that one
    start is exactly the single fit; the others are independent 31-bit seeds (faiss takes int32)."""
    if restart == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), RESTART_STREAM, restart]).generate_state(1)[0] & 0x7FFFFFFF)


def inertia(x: torch.Tensor | PointSet, centroids: torch.Tensor, across_processes: bool = False) -> float:
    """Sum of squared distances of the points to their nearest centroid (the k-means objective);
    under torchrun ``x`` is this process's share and the sum runs over all processes."""
    blocks = _points(x).blocks()
    total = sum(float(nearest_centroid(block, centroids.to(block.device))[1].double().sum()) for block in blocks)
    return float(distributed.sum_scalar(total)) if across_processes else total


def best_of_restarts(
    x: torch.Tensor | PointSet, k: int, n_iter: int, seed: int, restarts: int, backend: str = "auto"
) -> tuple[torch.Tensor, list[float]]:
    """``kmeans`` from ``restarts`` seeded starts (``restart_seed``); the centroids of lowest inertia
    (ties: the earliest start), and every start's inertia. faiss's ``nredo`` and scikit-learn's
    ``n_init`` do the same; here the starts' seeds are ours, so every backend keeps the same rule."""
    points = x if isinstance(x, PointSet) else PointSet(x)
    shared = distributed.joined()
    best, inertias = None, []
    for restart in range(restarts):
        centroids = kmeans(points, k, n_iter, restart_seed(seed, restart), backend)
        inertias.append(inertia(points, centroids, across_processes=shared))
        if inertias[-1] < min(inertias[:-1], default=math.inf):
            best = centroids
    return best, inertias


class MiniBatchKMeans:
    """PiCIE's k-means over a stream of batches: ``update(x)`` per batch, then ``finish()``.

    ``x`` is (N, D) pixel features (already L2-normalised). The first ``init_batches`` batches are
    kept (float32, as PiCIE) and clustered together; later batches refine the centroids by running
    means. With ``max_init_points`` set, each kept batch is subsampled uniformly so that the initial
    fit holds at most that many points (PiCIE keeps them all).
    """

    def __init__(
        self,
        k: int,
        init_batches: int,
        n_iter: int,
        seed: int,
        backend: str = "auto",
        max_init_points: int | None = None,
        restarts: int = 1,
    ) -> None:
        self.k, self.init_batches, self.n_iter, self.seed = k, init_batches, n_iter, seed
        self.backend, self.max_init_points, self.restarts = backend, max_init_points, restarts
        self.restart_inertias: list[float] = []  # each start's inertia on the initial fit's points
        self.centroids: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None
        self._kept = PointSet()
        self._batches_kept = 0
        self._gen = torch.Generator().manual_seed(int(seed))
        self.inertia_sum, self.n_points = 0.0, 0
        self._summed = False  # whether finish() has summed the k-means loss over the processes

    @classmethod
    def from_config(cls, cfg, seed: int, restarts: int = 1, init_batches: int | None = None) -> MiniBatchKMeans:
        """The k-means a ``Config`` describes (``n_clusters``, ``kmeans_*``), seeded with ``seed``; its
        initial fit on ``init_batches`` batches (default ``kmeans_init_batches``), the best of ``restarts``
        starts (training's: one, as PiCIE)."""
        return cls(
            cfg.n_clusters,
            init_batches or cfg.kmeans_init_batches,
            cfg.kmeans_iters,
            seed,
            cfg.kmeans_backend,
            cfg.kmeans_max_init_points,
            restarts,
        )

    def update(self, x: torch.Tensor | None) -> None:
        """One batch of pixel features (N, D). Under torchrun every process calls it once per global
        step with its share, None when it has none (``distributed.rank_batches``): the sums and
        counts of the step are summed over the processes, so that all hold the same centroids."""
        shared = distributed.joined()
        x = torch.empty(0, 0) if x is None else x.detach().float()
        if self.centroids is None:
            if self.max_init_points is not None and len(x):
                per_batch = max(1, self.max_init_points // (self.init_batches * distributed.world()))
                if len(x) > per_batch:
                    x = x[torch.randperm(len(x), generator=self._gen)[:per_batch].to(x.device)]
            self._kept.append(x)
            self._batches_kept += 1
            if self._batches_kept == self.init_batches:
                self._fit_initial()
            return
        x = x.to(self.centroids.device).reshape(-1, self.centroids.shape[1])
        assign, dist = nearest_centroid(x, self.centroids)
        self._record(assign, dist)
        batch_counts = torch.bincount(assign, minlength=self.k).to(self.counts.dtype)
        sums = torch.zeros_like(self.centroids).index_add_(0, assign, x)
        if shared:
            distributed.all_reduce_(batch_counts)
            distributed.all_reduce_(sums)
        hit = batch_counts > 0
        self.counts += batch_counts
        rate = (batch_counts[hit] / self.counts[hit]).float()[:, None]
        self.centroids[hit] = (1 - rate) * self.centroids[hit] + rate * sums[hit] / batch_counts[hit, None].float()

    def _fit_initial(self) -> None:
        data, self._kept = self._kept, PointSet()
        device = data.device
        if self.restarts == 1:
            self.centroids = kmeans(data, self.k, self.n_iter, self.seed, self.backend)
        else:
            self.centroids, self.restart_inertias = best_of_restarts(
                data, self.k, self.n_iter, self.seed, self.restarts, self.backend
            )
        self.centroids = self.centroids.float().to(device)
        counts = torch.zeros(self.k, dtype=torch.float64, device=device)
        for block in data.blocks():
            assign, dist = nearest_centroid(block.to(device), self.centroids)
            self._record(assign, dist)
            counts += torch.bincount(assign, minlength=self.k)
        self.counts = distributed.all_reduce_(counts)

    def _record(self, assign: torch.Tensor, dist: torch.Tensor) -> None:
        self.inertia_sum += float(dist.double().sum())
        self.n_points += len(dist)

    def finish(self) -> torch.Tensor:
        """The centroids (K, D); fits on what was kept when there were fewer batches than ``init_batches``.
        Under torchrun the k-means loss (``mean_distance``) is summed over the processes here."""
        if self.centroids is None:
            if not self._batches_kept:
                raise ValueError("MiniBatchKMeans.finish() before any update()")
            self._fit_initial()
        if distributed.joined() and not self._summed:
            self.inertia_sum = distributed.sum_scalar(self.inertia_sum)
            self.n_points = int(distributed.sum_scalar(self.n_points))
            self._summed = True
        return self.centroids

    @property
    def mean_distance(self) -> float:
        """Mean squared distance of the pixels to their centroid at assignment (PiCIE's k-means loss)."""
        return self.inertia_sum / max(1, self.n_points)


def assign_labels(features: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Nearest-centroid labels of a feature map (B, D, h, w) -> (B, h, w) (PiCIE's labelling)."""
    b, d, h, w = features.shape
    flat = features.permute(0, 2, 3, 1).reshape(-1, d)
    return nearest_centroid(flat, centroids)[0].view(b, h, w)
