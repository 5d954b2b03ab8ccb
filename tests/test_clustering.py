"""k-means: torch against faiss against scikit-learn, and PiCIE's running-mean update by hand."""

import pytest
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from picie_lib import clustering
from picie_lib.clustering import (
    MiniBatchKMeans,
    assign_labels,
    faiss_kmeans,
    kmeans,
    lloyd_kmeans,
    nearest_centroid,
    resolve_backend,
)

faiss_missing = pytest.mark.skipif(clustering.faiss is None, reason="faiss is not installed")


def _blobs(n_per=200, k=6, d=8, spread=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(k, d, generator=g) * 3
    x = torch.cat([c + spread * torch.randn(n_per, d, generator=g) for c in centres])
    y = torch.arange(k).repeat_interleave(n_per)
    perm = torch.randperm(len(x), generator=g)
    return x[perm], y[perm], centres


def _matched_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    cost = torch.cdist(a.double(), b.double()).numpy()
    r, c = linear_sum_assignment(cost)
    return float(cost[r, c].max())


def test_nearest_centroid_matches_brute_force():
    g = torch.Generator().manual_seed(1)
    x, c = torch.randn(500, 16, generator=g), torch.randn(9, 16, generator=g)
    idx, dist = nearest_centroid(x, c)
    d = torch.cdist(x.double(), c.double()) ** 2
    assert torch.equal(idx, d.argmin(1))
    assert torch.allclose(dist.double(), d.min(1).values, atol=1e-4)


def _one_point_per_blob(x, y, k):
    return torch.stack([x[y == j][0] for j in range(k)])


def test_torch_kmeans_matches_sklearn_from_the_same_start():
    x, y, centres = _blobs(spread=0.8)  # overlapping a little, so that Lloyd has work to do
    init = _one_point_per_blob(x, y, 6)
    c = lloyd_kmeans(x, 6, n_iter=50, seed=0, init=init)
    sk = KMeans(6, init=init.numpy(), n_init=1, max_iter=50, tol=0).fit(x.numpy())
    assert torch.allclose(c, torch.from_numpy(sk.cluster_centers_).float(), atol=1e-4)
    assert adjusted_rand_score(sk.labels_, nearest_centroid(x, c)[0].numpy()) == 1.0


def test_torch_kmeans_finds_separated_blobs():
    x, y, centres = _blobs()
    c = lloyd_kmeans(x, 6, n_iter=20, seed=0, init=_one_point_per_blob(x, y, 6))
    assert adjusted_rand_score(y.numpy(), nearest_centroid(x, c)[0].numpy()) == 1.0
    assert _matched_distance(c, centres) < 0.05
    # from faiss's random start (k distinct points) the result is a Lloyd fixed point:
    # every centroid is the mean of the points nearest to it
    c = lloyd_kmeans(x, 6, n_iter=50, seed=1)
    idx = nearest_centroid(x, c)[0]
    assert torch.allclose(c, torch.stack([x[idx == j].mean(0) for j in range(6)]), atol=1e-5)


@faiss_missing
def test_faiss_and_torch_kmeans_agree():
    x, y, _ = _blobs(seed=2, spread=0.8)
    init = _one_point_per_blob(x, y, 6)
    cf, ct = faiss_kmeans(x, 6, n_iter=30, seed=3, init=init), lloyd_kmeans(x, 6, n_iter=30, seed=3, init=init)
    assert torch.allclose(cf, ct, atol=1e-4)
    # and on well-separated blobs from their own random starts, both are Lloyd fixed points
    xs, ys, _ = _blobs(seed=2)
    cf = faiss_kmeans(xs, 6, n_iter=30, seed=3)
    idx = nearest_centroid(xs, cf)[0]
    assert torch.allclose(cf, torch.stack([xs[idx == j].mean(0) for j in range(6)]), atol=1e-4)


def test_kmeans_is_deterministic_for_a_seed():
    x, _, _ = _blobs(seed=4, spread=1.0)
    for backend in ("torch", *(("faiss",) if clustering.faiss else ())):
        assert torch.equal(kmeans(x, 6, 10, seed=5, backend=backend), kmeans(x, 6, 10, seed=5, backend=backend))


def test_an_empty_cluster_takes_over_half_of_the_largest():
    x, y, _ = _blobs(n_per=100, k=4, seed=3, spread=0.5)
    init = torch.cat([_one_point_per_blob(x, y, 4), torch.full((1, 8), 1000.0)])  # centroid 4 gets nothing
    c = lloyd_kmeans(x, 5, n_iter=20, seed=0, init=init)
    assert torch.isfinite(c).all() and c.abs().max() < 100
    counts = torch.bincount(nearest_centroid(x, c)[0], minlength=5)
    assert (counts > 0).all()  # every cluster holds points at the end


def test_fewer_distinct_points_than_clusters_stays_finite():
    x = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]).repeat_interleave(20, 0)
    c = lloyd_kmeans(x, 5, n_iter=10, seed=0)
    assert torch.isfinite(c).all()
    for point in x[::20]:
        assert (c - point).norm(dim=1).min() < 0.05  # every point keeps a centroid


def test_minibatch_running_mean_by_hand():
    """After the initial fit on the first batch, each later batch moves a centroid to the running
    mean of all points it has received: c_k <- (1 - n_k/count_k) c_k + n_k/count_k mean_k."""
    x, _, _ = _blobs(n_per=60, seed=6, spread=0.3)
    batches = list(x.split(90))
    km = MiniBatchKMeans(6, init_batches=1, n_iter=20, seed=0, backend="torch")
    km.update(batches[0])
    c = km.centroids.double().clone()
    counts = torch.bincount(nearest_centroid(batches[0], km.centroids)[0], minlength=6).double()
    for b in batches[1:]:
        idx = torch.cdist(b.double(), c).argmin(1)
        for k in range(6):
            n = int((idx == k).sum())
            if n:
                counts[k] += n
                rate = n / counts[k]
                c[k] = (1 - rate) * c[k] + rate * b[idx == k].double().mean(0)
        km.update(b)
    assert torch.allclose(km.finish().double(), c, atol=1e-5)
    assert torch.equal(km.counts, counts)


def test_minibatch_ends_at_the_mean_of_all_assigned_points(monkeypatch):
    # Lloyd's centroids are means of their points, so the running mean is the mean of everything
    # (as long as no point changes cluster: separated blobs, an initial fit that finds them)
    x, y, _ = _blobs(n_per=100, seed=7)
    monkeypatch.setattr(
        clustering,
        "kmeans",
        lambda data, k, n_iter, seed, backend: lloyd_kmeans(data, k, n_iter, seed, init=_one_point_per_blob(x, y, 6)),
    )
    km = MiniBatchKMeans(6, init_batches=2, n_iter=20, seed=0, backend="torch")
    for b in x.split(50):
        km.update(b)
    c = km.finish()
    idx = nearest_centroid(x, c)[0]
    means = torch.stack([x[idx == k].mean(0) for k in range(6)])
    assert torch.allclose(c, means, atol=1e-5)


def test_minibatch_fits_on_what_it_has_when_there_are_few_batches(monkeypatch):
    x, y, _ = _blobs(n_per=50, seed=8)
    fitted = {}

    def spy(data, k, n_iter, seed, backend):
        fitted["n"] = len(data)
        return lloyd_kmeans(data, k, n_iter, seed, init=_one_point_per_blob(x, y, 6))

    monkeypatch.setattr(clustering, "kmeans", spy)
    km = MiniBatchKMeans(6, init_batches=20, n_iter=20, seed=0, backend="torch")
    for b in x.split(100):
        km.update(b)
    assert km.centroids is None
    c = km.finish()
    assert fitted["n"] == len(x)
    assert adjusted_rand_score(y.numpy(), nearest_centroid(x, c)[0].numpy()) == 1.0


def test_max_init_points_bounds_the_initial_fit(monkeypatch):
    seen = {}

    def spy(data, k, n_iter, seed, backend):
        seen["n"] = len(data)
        return data.rows(torch.arange(k))

    monkeypatch.setattr(clustering, "kmeans", spy)
    km = MiniBatchKMeans(4, init_batches=3, n_iter=5, seed=0, max_init_points=90)
    for _ in range(3):
        km.update(torch.randn(1000, 4))
    assert seen["n"] == 90


def test_a_point_set_reads_back_its_pieces_as_one_matrix():
    g = torch.Generator().manual_seed(3)
    pieces = [torch.randn(n, 5, generator=g) for n in (7, 1, 12)]
    whole = torch.cat(pieces)
    points = clustering.PointSet(pieces)
    assert len(points) == 20
    assert torch.equal(torch.cat(list(points.blocks())), whole)
    index = torch.tensor([19, 0, 7, 8, 6])  # across piece boundaries, in any order
    assert torch.equal(points.rows(index), whole[index])
    matrix = points.to_cpu_matrix()
    assert torch.equal(matrix, whole) and len(points.pieces) == 1  # the pieces were released for the matrix


def test_lloyd_on_pieces_equals_lloyd_on_the_whole_matrix():
    x, _, _ = _blobs(n_per=80, spread=0.9, seed=4)
    pieces = clustering.PointSet(list(x.split(70)))
    assert torch.allclose(lloyd_kmeans(pieces, 6, 15, seed=3), lloyd_kmeans(x, 6, 15, seed=3), atol=1e-5)


def test_backend_resolution(monkeypatch):
    monkeypatch.setattr(clustering, "faiss", None)
    assert resolve_backend("auto", "cpu") == "torch"
    with pytest.raises(ImportError, match="faiss is not installed"):
        resolve_backend("faiss", "cpu")

    class FakeFaiss:
        @staticmethod
        def get_num_gpus():
            return 0

    monkeypatch.setattr(clustering, "faiss", FakeFaiss)
    assert resolve_backend("auto", "cpu") == "faiss"
    assert resolve_backend("auto", "cuda") == "torch"  # a GPU faiss cannot use: torch on the GPU
    assert resolve_backend("torch", "cpu") == "torch"


def test_assign_labels_is_nearest_centroid_per_pixel():
    g = torch.Generator().manual_seed(9)
    f, c = torch.randn(2, 8, 5, 7, generator=g), torch.randn(4, 8, generator=g)
    labels = assign_labels(f, c)
    d = ((f[:, None] - c[None, :, :, None, None]) ** 2).sum(2)  # (B, K, h, w)
    assert labels.shape == (2, 5, 7) and torch.equal(labels, d.argmin(1))


def _inertia(x: torch.Tensor, centroids: torch.Tensor) -> float:
    """The k-means objective by brute force: squared distance to the nearest centre, summed."""
    return float(torch.cdist(x.double(), centroids.double()).pow(2).min(1).values.sum())


@pytest.mark.parametrize("backend", ["torch", pytest.param("faiss", marks=faiss_missing)])
def test_restarts_keep_the_lowest_inertia_start(backend):
    # overlapping blobs, few iterations: the starts end in different local minima
    x, _, _ = _blobs(n_per=60, k=8, d=4, spread=1.5, seed=3)
    seed, restarts = 7, 6
    singles = [kmeans(x, 8, 3, clustering.restart_seed(seed, r), backend) for r in range(restarts)]
    inertias = [_inertia(x, c) for c in singles]
    assert len({round(v, 3) for v in inertias}) > 1, "the starts should differ, or the test shows nothing"
    best, reported = clustering.best_of_restarts(x, 8, 3, seed, restarts, backend)
    assert reported == pytest.approx(inertias, rel=1e-4)
    assert torch.allclose(best, singles[int(torch.tensor(inertias).argmin())])
    assert _inertia(x, best) == pytest.approx(min(inertias), rel=1e-4)


def test_one_restart_is_the_single_fit_and_restart_seeds_differ():
    x, _, _ = _blobs(seed=4)
    assert clustering.restart_seed(5, 0) == 5
    assert len({clustering.restart_seed(5, r) for r in range(10)}) == 10
    best, inertias = clustering.best_of_restarts(x, 6, 5, 5, 1, "torch")
    assert torch.equal(best, kmeans(x, 6, 5, 5, "torch")) and len(inertias) == 1


def test_minibatch_restarts_fit_the_initial_batches_with_the_best_start():
    x, _, _ = _blobs(n_per=40, k=8, d=4, spread=1.5, seed=5)
    batches = list(x.split(80))
    one, many = (MiniBatchKMeans(8, len(batches), 3, 11, "torch", restarts=r) for r in (1, 8))
    for km in (one, many):
        for b in batches:
            km.update(b)
        km.finish()
    assert len(many.restart_inertias) == 8 and one.restart_inertias == []
    assert min(many.restart_inertias) == pytest.approx(_inertia(x, many.centroids), rel=1e-4)
    assert _inertia(x, many.centroids) <= _inertia(x, one.centroids) + 1e-6
