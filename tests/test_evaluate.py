"""Evaluation: the whole pipeline on known predictions, the prediction rules, the references."""

import numpy as np
import pytest
import torch

from picie_lib.config import load_preset
from picie_lib.data import build_dataset
from picie_lib.evaluate import cluster_logits, evaluate_model, evaluate_rgb, rgb_feature_fn, score_predictions
from picie_lib.picie import build_model

# slow: starts processes or trains, not in the unit tier (pytest -m 'not slow')
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke():
    cfg = load_preset("smoke")
    return cfg, build_dataset(cfg, "train", "eval"), build_dataset(cfg, "val", "eval")


def test_a_relabelled_perfect_prediction_scores_100(smoke):
    cfg, _, val = smoke
    perm = torch.randperm(27, generator=torch.Generator().manual_seed(0))
    labels = {}
    for i in range(len(val)):
        labels[i] = val[i][2]
    order = iter(range(len(val)))

    def predict_batch(images, size):  # the ground truth under a cluster permutation; -1 -> cluster 0
        batch = [labels[next(order)] for _ in range(len(images))]
        return torch.stack([perm[lab.clamp_min(0)] for lab in batch])

    result = score_predictions(predict_batch, val, cfg, 27)
    s = result["scores"]
    present = {c for lab in labels.values() for c in lab.unique().tolist() if c >= 0}
    assert s["acc_all"] == pytest.approx(100.0)
    assert s["acc_thing"] == pytest.approx(100.0) and s["acc_stuff"] == pytest.approx(100.0)
    assert s["miou_all"] == pytest.approx(100.0)
    assert [r["cluster"] for r in result["per_class"] if r["pixels"] > 0] == [int(perm[c]) for c in sorted(present)]
    assert all(r["fragments_per_object"] == 1 for r in result["per_class"] if r["pixels"] > 0)


def test_cluster_logits_rules():
    g = torch.Generator().manual_seed(1)
    f, c = torch.randn(2, 6, 4, 5, generator=g), torch.randn(7, 6, generator=g) * 2
    dist = ((f[:, None] - c[None, :, :, None, None]) ** 2).sum(2)
    assert torch.equal(cluster_logits(f, c, "nearest").argmax(1), dist.argmin(1))
    assert torch.allclose(cluster_logits(f, c, "dot"), torch.einsum("bdhw,kd->bkhw", f, c))


def test_rgb_features_are_pixel_values_averaged_over_the_feature_grid():
    img = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    feats = rgb_feature_fn(stride=4)(img)
    expected = torch.tensor(
        [
            [
                img[0, c, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].double().mean() / 255
                for c in range(3)
                for i in range(2)
                for j in range(2)
            ]
        ]
    )
    assert torch.allclose(feats.double().flatten(), expected.flatten(), atol=1e-6)


def test_evaluate_model_reports_both_protocols_and_per_class_tables(smoke):
    cfg, train, val = smoke
    result = evaluate_model(build_model(cfg, torch.device("cpu")), cfg, train, val)
    keys = {
        "acc_all",
        "miou_all",
        "acc_thing",
        "miou_thing",
        "acc_stuff",
        "miou_stuff",
        "global_acc_thing",
        "global_miou_thing",
        "global_acc_stuff",
        "global_miou_stuff",
        "code_acc_thing",
        "code_miou_thing",
        "code_acc_stuff",
        "code_miou_stuff",
    }
    assert set(result["scores"]) == keys
    assert all(0 <= v <= 100 for v in result["scores"].values() if not np.isnan(v))
    assert len(result["per_class"]) == 27 and np.asarray(result["confusion"]).shape == (27, 27)
    assert set(result["oversegmentation"]) == {"thing", "stuff"}
    # deterministic for a seed
    again = evaluate_model(build_model(cfg, torch.device("cpu")), cfg, train, val)
    assert again["confusion"] == result["confusion"]


def test_rgb_reference_runs(smoke):
    cfg, train, val = smoke
    result = evaluate_rgb(cfg, train, val)
    assert 0 < result["scores"]["acc_all"] <= 100


def test_running_statistics_evaluation_scores_a_copy_and_its_predictions_can_be_drawn_again(tmp_path):
    """``bn_eval: running``: the fresh k-means moves the running statistics of a copy, which scores in
    eval() mode; the saved weights stay as trained, and ``class_predictor`` (the figures) reproduces
    the scored predictions exactly (All Acc from its class maps equals the reported one)."""
    import hashlib

    from picie_lib.scores import class_predictor, evaluate_run
    from picie_lib.train import train

    cfg = load_preset("smoke", bn_eval="running", epochs_ce=1, device="cpu")
    train(cfg, tmp_path)
    checkpoint = tmp_path / "checkpoint.pt"
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    result = evaluate_run(tmp_path)
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == digest
    predict = class_predictor(tmp_path)
    val = build_dataset(cfg, "val", "eval")
    hits = total = 0
    for i in range(len(val)):  # one image at a time: eval() mode does not depend on the batch
        _, image, label = val[i]
        predicted = predict(image[None], tuple(label.shape))[0]
        hits += int(((predicted == label) & (label >= 0)).sum())
        total += int((label >= 0).sum())
    assert 100 * hits / total == pytest.approx(result["scores"]["acc_all"], abs=1e-9)


def test_evaluation_seeds_score_the_same_weights_once_per_kmeans_seed(smoke):
    cfg, train, val = smoke
    cfg = cfg.replace(eval_seeds=3, eval_kmeans_restarts=2)
    model = build_model(cfg, "cpu")
    result = evaluate_model(model, cfg, train, val)
    spread = result["eval_spread"]
    assert spread["seeds"] == [0, 1, 2]
    assert result["scores"]["acc_all"] == pytest.approx(np.mean(spread["acc_all"]["values"]))  # their mean
    assert result["scores"]["miou_all"] == pytest.approx(np.mean(spread["miou_all"]["values"]))
    # seed 2's score is what a one-seed evaluation of a run seeded 2 gives on the same weights
    alone = evaluate_model(model, cfg.replace(seed=2, eval_seeds=1), train, val)
    assert spread["acc_all"]["values"][2] == pytest.approx(alone["scores"]["acc_all"])
    assert spread["acc_all"]["range"] == pytest.approx(np.ptp(spread["acc_all"]["values"]))
    assert len(set(spread["miou_all"]["values"])) > 1  # the seeds do draw different k-means


def _pixels_read_in(order, dataset, cfg, extract):
    """The (N, 3) pixel features of ``dataset``'s batches read in ``order``, as the evaluation's k-means sees them."""
    from picie_lib.loader import Batches

    batches = Batches(dataset, order, cfg.batch_size_cluster, cfg)
    return torch.cat([extract(b[1]).permute(0, 2, 3, 1).reshape(-1, 3) for b in batches])


def test_an_initial_fit_on_every_batch_is_one_lloyd_fit_on_every_pixel(smoke):
    from picie_lib.clustering import lloyd_kmeans
    from picie_lib.evaluate import STREAM_EVAL_KMEANS, STREAM_EVAL_ORDER, fit_centroids
    from picie_lib.picie import derive_seed, permutation

    cfg, train, _ = smoke
    cfg = cfg.replace(eval_kmeans_init_batches=len(train), kmeans_backend="torch")  # more than the split's batches
    extract = rgb_feature_fn()
    centroids, _ = fit_centroids(extract, train, cfg, seed=3)
    order = permutation(len(train), derive_seed(3, STREAM_EVAL_ORDER))
    pixels = _pixels_read_in(order, train, cfg, extract)
    expected = lloyd_kmeans(pixels, cfg.n_clusters, cfg.kmeans_iters, derive_seed(3, STREAM_EVAL_KMEANS))
    assert torch.allclose(centroids, expected, atol=1e-5)
    # PiCIE's protocol (one initial batch here, then running means) ends elsewhere
    assert not torch.allclose(
        fit_centroids(extract, train, cfg.replace(eval_kmeans_init_batches=None), seed=3)[0], expected, atol=1e-3
    )


def test_an_order_seed_moves_the_reading_order_alone(smoke):
    from picie_lib.clustering import lloyd_kmeans
    from picie_lib.evaluate import STREAM_EVAL_KMEANS, STREAM_EVAL_ORDER, evaluate_clusters, fit_centroids
    from picie_lib.picie import derive_seed, permutation

    cfg, train, val = smoke
    cfg = cfg.replace(kmeans_backend="torch")
    extract = rgb_feature_fn()
    alone = fit_centroids(extract, train, cfg, seed=3)[0]
    assert torch.equal(fit_centroids(extract, train, cfg, seed=3, order_seed=3)[0], alone)
    assert not torch.allclose(fit_centroids(extract, train, cfg, seed=3, order_seed=4)[0], alone, atol=1e-4)
    # one Lloyd fit on the whole split read in order 4's order, from start 3's points
    whole = cfg.replace(eval_kmeans_init_batches=len(train))
    order = permutation(len(train), derive_seed(4, STREAM_EVAL_ORDER))
    pixels = _pixels_read_in(order, train, cfg, extract)
    expected = lloyd_kmeans(pixels, cfg.n_clusters, cfg.kmeans_iters, derive_seed(3, STREAM_EVAL_KMEANS))
    assert torch.allclose(fit_centroids(extract, train, whole, seed=3, order_seed=4)[0], expected, atol=1e-5)
    # the evaluation passes the order seed on
    scored = evaluate_clusters(extract, whole, "nearest", train, val, seed=3, order_seed=4)
    assert torch.allclose(scored["centroids"], expected, atol=1e-5)


def test_an_ib_focal_run_is_scored_at_its_switch_with_the_same_draws(tmp_path):
    """``evaluate_run`` on an IB-Focal run scores ``switch.pt`` (the weights its phase started from) beside the
    final weights, with the same k-means draws: its scores are those of exactly that file's weights, and the
    phase's effect is the mean of the draws' paired differences with their standard error, per score and class."""
    from picie_lib.checkpoints import SWITCH_KEYS, load_checkpoint
    from picie_lib.runs import weights_digest
    from picie_lib.scores import evaluate_run, read_metrics
    from picie_lib.train import train

    cfg = load_preset("smoke", loss="ib_focal", switch=1, eval_seeds=3, device="cpu")
    train(cfg, tmp_path)
    evaluate_run(tmp_path)
    metrics = read_metrics(tmp_path / "metrics.json")
    switch = load_checkpoint(tmp_path / "switch.pt", SWITCH_KEYS)
    at = metrics["at_switch"]
    assert at["checkpoint"] == {"file": "switch.pt", "epoch": 1, "weights_sha256": weights_digest(switch["model"])}
    model = build_model(cfg, "cpu")
    model.load_state_dict(switch["model"])
    alone = evaluate_model(model, cfg)  # the switch's weights, scored on their own
    assert at["scores"] == pytest.approx(alone["scores"], nan_ok=True)
    assert at["eval_spread"]["seeds"] == metrics["eval_spread"]["seeds"] == [0, 1, 2]
    effect = metrics["ib_phase_effect"]
    final, start = (np.array(m["eval_spread"]["acc_all"]["values"]) for m in (metrics, at))
    assert effect["scores"]["acc_all"]["difference"] == pytest.approx(np.mean(final - start))
    assert effect["scores"]["acc_all"]["se"] == pytest.approx(np.std(final - start, ddof=1) / np.sqrt(3))
    assert effect["scores"]["acc_all"]["difference"] == pytest.approx(
        metrics["scores"]["acc_all"] - at["scores"]["acc_all"]
    )
    c = next(i for i, r in enumerate(metrics["per_class"]) if r["pixels"] > 0)
    draws = np.array(metrics["per_class_draws"]["iou_all"])[:, c] - np.array(at["per_class_draws"]["iou_all"])[:, c]
    assert effect["per_class"][c]["class"] == metrics["per_class"][c]["class"]
    assert effect["per_class"][c]["iou_all"]["difference"] == pytest.approx(np.nanmean(draws))


def test_a_ce_run_has_no_switch_to_score(tmp_path):
    from picie_lib.scores import evaluate_run
    from picie_lib.train import train

    train(load_preset("smoke", epochs_ce=1, device="cpu"), tmp_path)
    result = evaluate_run(tmp_path)
    assert "at_switch" not in result and "ib_phase_effect" not in result


def test_a_try_reuses_the_draws_the_run_kept_and_leaves_its_scores_as_they_were(tmp_path, monkeypatch):
    """Re-scoring a run with fewer or more k-means draws, into a try's folder: the draws the run's metrics.json
    kept are not drawn again, the scores equal an evaluation from scratch, and the run's own files are untouched."""
    from picie_lib import evaluate
    from picie_lib.scores import current_evaluation, evaluate_run
    from picie_lib.train import train

    cfg = load_preset("smoke", epochs_ce=1, eval_seeds=3, device="cpu")
    run = tmp_path / "run"
    train(cfg, run)
    evaluate_run(run)
    kept = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    real, calls = evaluate.evaluate_clusters, []

    def counting(*args, seed=None, **kwargs):
        calls.append(seed)
        return real(*args, seed=seed, **kwargs)

    monkeypatch.setattr(evaluate, "evaluate_clusters", counting)
    fewer = current_evaluation(run, cfg.replace(eval_seeds=2), into=tmp_path / "tries" / "two" / "run")
    assert calls == [] and fewer["draws_reused"] == 2 and fewer["eval_spread"]["seeds"] == [0, 1]
    more = current_evaluation(run, cfg.replace(eval_seeds=5), into=tmp_path / "tries" / "five" / "run")
    assert calls == [3, 4] and more["draws_reused"] == 3
    monkeypatch.setattr(evaluate, "evaluate_clusters", real)
    model = build_model(cfg, "cpu")
    model.load_state_dict(__import__("torch").load(run / "checkpoint.pt", weights_only=True)["model"])
    scratch = evaluate_model(model, cfg.replace(eval_seeds=5))
    assert more["scores"] == pytest.approx(scratch["scores"]) and more["confusion"] == scratch["confusion"]
    for key in ("iou_all", "iou_subset", "effective_clusters", "fragments_per_object"):
        np.testing.assert_allclose(*([r[key] for r in x["per_class"]] for x in (more, scratch)), rtol=1e-9)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == kept  # the run's scores as they were
    again = current_evaluation(run, cfg.replace(eval_seeds=5), into=tmp_path / "tries" / "five" / "run")
    assert again["scores"] == pytest.approx(more["scores"]) and calls == [3, 4]  # read back, not scored again
