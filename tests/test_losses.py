"""Losses against independent computations: torch's cross-entropy and the literal formulas."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from picie_lib.losses import centroid_logits, class_weights, cross_entropy, focal_loss, ib_focal_loss, ib_loss


def _batch(n=200, k=7, d=16, seed=0, ignore_frac=0.2):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, k, (n,), generator=g)
    target[torch.rand(n, generator=g) < ignore_frac] = -1
    features = F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    weight = torch.rand(k, generator=g, dtype=torch.float64) + 0.1
    return logits, target, features, weight


def _reference(logits, target, features, weight, gamma, alpha=None, eps=1e-3, weighted_pt=False):
    """Per-pixel terms written out with numpy, straight from the formulas of the design (with
    ``weighted_pt``, the focal factor's p is exp(-w_t ce), as the IB authors' code)."""
    z, t = logits.detach().numpy(), target.numpy()
    keep = t >= 0
    z, t = z[keep], t[keep]
    zmax = z.max(1, keepdims=True)
    softmax = np.exp(z - zmax) / np.exp(z - zmax).sum(1, keepdims=True)
    p = softmax[np.arange(len(t)), t]
    ce = -np.log(p)
    w = np.ones(len(t)) if weight is None else weight.numpy()[t]
    q = np.exp(-w * ce) if weighted_pt else p
    terms = w * (1 - q) ** gamma * ce
    if alpha is not None:
        onehot = np.eye(z.shape[1])[t]
        g = np.abs(softmax - onehot).sum(1)
        h = np.abs(features.detach().numpy()[keep]).sum(1)
        terms = terms * alpha / (g * h + eps)
    return terms.mean()


@pytest.mark.parametrize("use_weight", [False, True])
def test_cross_entropy_is_torchs_weighted_mean(use_weight):
    logits, target, _, weight = _batch()
    w = weight if use_weight else None
    expected = F.cross_entropy(logits, target, weight=w, ignore_index=-1)
    assert torch.allclose(cross_entropy(logits, target, w).double(), expected, atol=1e-6)
    if use_weight:  # the weighted mean sum(w ce) / sum(w), not a plain mean
        keep = target >= 0
        ce = F.cross_entropy(logits[keep], target[keep], reduction="none")
        manual = (weight[target[keep]] * ce).sum() / weight[target[keep]].sum()
        assert torch.allclose(expected, manual)


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0, 3.5])
@pytest.mark.parametrize("use_weight", [False, True])
def test_focal_matches_formula(gamma, use_weight):
    logits, target, features, weight = _batch(seed=1)
    w = weight if use_weight else None
    got = focal_loss(logits, target, gamma=gamma, weight=w)
    assert float(got) == pytest.approx(_reference(logits, target, features, w, gamma), rel=1e-5)


def test_focal_with_gamma_zero_is_unweighted_mean_ce():
    logits, target, _, _ = _batch(seed=2)
    assert torch.allclose(
        focal_loss(logits, target, gamma=0.0).double(), F.cross_entropy(logits, target, ignore_index=-1), atol=1e-6
    )


def test_focal_uses_unweighted_probability():
    # p_t comes from the unweighted softmax: scaling the weights scales the loss linearly
    logits, target, _, weight = _batch(seed=3)
    assert float(focal_loss(logits, target, weight=3 * weight)) == pytest.approx(
        3 * float(focal_loss(logits, target, weight=weight)), rel=1e-6
    )


@pytest.mark.parametrize("weighted_pt", [False, True])
@pytest.mark.parametrize("use_weight", [False, True])
@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
def test_ib_focal_matches_formula_values_and_gradients(use_weight, gamma, weighted_pt):
    logits, target, features, weight = _batch(seed=4)
    w = weight if use_weight else None
    logits.requires_grad_(True)
    features = features.clone().requires_grad_(True)
    got = ib_focal_loss(
        logits, target, features, alpha=1000.0, gamma=gamma, eps=1e-3, weight=w, weighted_pt=weighted_pt
    )
    expected = _reference(logits, target, features, w, gamma, alpha=1000.0, weighted_pt=weighted_pt)
    assert float(got.detach()) == pytest.approx(expected, rel=1e-5)

    # gradients against the IB authors' literal form (losses.py: weighted CE with reduction="none",
    # p from it when weighted_pt, |softmax - onehot|), built with torch autograd
    z2 = logits.detach().clone().requires_grad_(True)
    f2 = features.detach().clone().requires_grad_(True)
    keep = target >= 0
    zk, tk, fk = z2[keep], target[keep], f2[keep]
    ce_w = F.cross_entropy(zk, tk, weight=w, reduction="none")  # w_t ce
    p = torch.exp(-ce_w) if weighted_pt else torch.exp(-F.cross_entropy(zk, tk, reduction="none"))
    g = (zk.softmax(1) - F.one_hot(tk, zk.shape[1])).abs().sum(1)
    h = fk.abs().sum(1)
    literal = ((1 - p) ** gamma * ce_w * 1000.0 / (g * h + 1e-3)).mean()
    literal.backward()
    got.backward()
    assert torch.allclose(logits.grad, z2.grad, rtol=1e-4, atol=1e-8)
    assert torch.allclose(features.grad, f2.grad, rtol=1e-4, atol=1e-8)
    assert features.grad.abs().sum() > 0  # nothing detached by default: the feature norm gets gradient


def test_ib_loss_is_ib_focal_with_gamma_zero():
    logits, target, features, weight = _batch(seed=5)
    assert torch.allclose(
        ib_loss(logits, target, features, weight=weight),
        ib_focal_loss(logits, target, features, gamma=0.0, weight=weight),
    )


def test_ib_detach_treats_the_factor_as_a_weight():
    logits, target, features, _ = _batch(seed=6)
    logits.requires_grad_(True)
    features.requires_grad_(True)
    loss = ib_focal_loss(logits, target, features, detach=True)
    loss.backward()
    assert features.grad is None or features.grad.abs().sum() == 0
    # the logits' gradient is the focal gradient scaled by the (constant) IB factor
    keep = target >= 0
    ce = F.cross_entropy(logits[keep].detach(), target[keep], reduction="none")
    factor = 1000.0 / (2 * (1 - torch.exp(-ce)) * features[keep].detach().abs().sum(1) + 1e-3)
    z = logits.detach().clone().requires_grad_(True)
    ce_z = F.cross_entropy(z[keep], target[keep], reduction="none")
    ((1 - torch.exp(-ce_z)) ** 2 * ce_z * factor).mean().backward()
    assert torch.allclose(logits.grad, z.grad, rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("fn", ["ce", "focal", "ib_focal"])
def test_all_ignored_gives_zero_with_a_graph(fn):
    logits = torch.randn(10, 4, requires_grad=True)
    target = torch.full((10,), -1)
    features = torch.randn(10, 8)
    loss = {
        "ce": lambda: cross_entropy(logits, target),
        "focal": lambda: focal_loss(logits, target),
        "ib_focal": lambda: ib_focal_loss(logits, target, features),
    }[fn]()
    assert float(loss.detach()) == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)


def test_class_missing_from_batch_is_fine():
    logits, target, features, weight = _batch(k=5, seed=7, ignore_frac=0)
    target[target == 2] = 0  # class 2 absent
    for loss in (
        cross_entropy(logits, target, weight),
        focal_loss(logits, target, weight=weight),
        ib_focal_loss(logits, target, features, weight=weight),
    ):
        assert torch.isfinite(loss)


def test_ib_focal_stays_finite_for_confident_pixels_and_tiny_features():
    g = torch.Generator().manual_seed(8)
    target = torch.randint(0, 6, (64,), generator=g)
    logits = (F.one_hot(target, 6).float() * 200.0).requires_grad_(True)  # p_t == 1 in float32
    features = (torch.randn(64, 16, generator=g) * 1e-12).requires_grad_(True)
    loss = ib_focal_loss(logits, target, features)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and torch.isfinite(features.grad).all()
    # temperature-scaled logits that are nearly but not exactly saturated
    logits2 = (F.one_hot(target, 6).float() * 12.0 + torch.randn(64, 6, generator=g)).requires_grad_(True)
    loss2 = ib_focal_loss(logits2, target, F.normalize(torch.randn(64, 16, generator=g), dim=1))
    loss2.backward()
    assert torch.isfinite(loss2) and torch.isfinite(logits2.grad).all()


def test_class_weights_modes():
    counts = torch.tensor([10.0, 30.0, 0.0, 60.0])
    assert torch.allclose(class_weights(counts, "picie"), torch.tensor([0.1, 0.3, 0.0, 0.6]))
    inverse = class_weights(counts, "inverse")
    inv = np.array([1 / 10, 1 / 30, 1 / 60])
    expected = inv / inv.sum() * 4
    assert np.allclose(inverse.numpy()[[0, 1, 3]], expected, rtol=1e-6)
    assert inverse[2] == 0 and float(inverse.sum()) == pytest.approx(4.0)
    assert class_weights(counts, "none") is None
    with pytest.raises(ValueError, match="balance='oops'"):
        class_weights(counts, "oops")


def test_centroid_logits_is_a_frozen_1x1_conv_with_temperature():
    g = torch.Generator().manual_seed(9)
    f = F.normalize(torch.randn(2, 16, 5, 6, generator=g), dim=1)
    c = torch.randn(4, 16, generator=g)
    expected = F.conv2d(f, c[:, :, None, None]) / 0.5
    assert torch.allclose(centroid_logits(f, c, temperature=0.5), expected, atol=1e-6)


def test_bounded_cosine_logits_cap_the_target_probability():
    # unit features and centroids of norm <= 1: p_t <= e^2 / (e^2 + K - 1) for K = 27 (losses.md section 3)
    g = torch.Generator().manual_seed(10)
    c = F.normalize(torch.randn(27, 8, generator=g), dim=1)
    f = c[:1].clone()  # the feature equal to centroid 0: the most confident case
    p = centroid_logits(f[:, :, None, None], c).flatten().softmax(0)[0]
    assert float(p) <= math.exp(2) / (math.exp(2) + 26) + 1e-6
    sharp = centroid_logits(f[:, :, None, None], c, temperature=0.05).flatten().softmax(0)[0]
    assert float(sharp) > 0.9  # a temperature lets the focal factor move
