"""The three losses of the paper, per pixel (design section 3, loss contract; losses.md).

All take logits ``z`` (N, K), targets ``t`` (N,) int64 with -1 = ignore, and optional class
weights ``w`` (K,). With ``ce_i = -log softmax(z_i)[t_i]`` and ``p_i = exp(-ce_i)`` from the
*unweighted* softmax (IB-Focal's focal factor may take the weighted one, as its authors' code),
means run over the non-ignored pixels. When every pixel is ignored the loss
is an exact zero that still belongs to the graph (PyTorch's cross-entropy would give NaN).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IGNORE_INDEX = -1


def centroid_logits(features: torch.Tensor, centroids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """PiCIE's frozen 1x1 classifier: logits (B, K, h, w) = f . c_k / temperature, zero bias.

    With unit features and centroids of norm <= 1 the logits lie in [-1, 1], so for K = 27 the
    probability of the target never exceeds e^2 / (e^2 + 26) = 0.22 and the focal factor hardly
    moves (losses.md section 3); a temperature below 1 lets it.
    """
    return torch.einsum("bdhw,kd->bkhw", features, centroids.to(features.dtype)) / temperature


def _kept(logits: torch.Tensor, target: torch.Tensor, *others: torch.Tensor | None):
    if logits.ndim != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"expected logits (N, K) and target (N,), got {tuple(logits.shape)} and {tuple(target.shape)}")
    keep = target != IGNORE_INDEX
    return (logits[keep].float(), target[keep], *(o[keep] if o is not None else None for o in others))


def _class_weight(weight: torch.Tensor | None, target: torch.Tensor) -> torch.Tensor | float:
    return 1.0 if weight is None else weight.to(target.device, torch.float32)[target]


def _unweighted_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, target, reduction="none")


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """PiCIE's loss: PyTorch's cross-entropy, a weighted mean ``sum w_t ce / sum w_t``."""
    z, t = _kept(logits, target)
    if len(t) == 0:
        return logits.sum() * 0.0
    w = None if weight is None else weight.to(z.device, torch.float32)
    return F.cross_entropy(z, t, weight=w)


def focal_loss(
    logits: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Method 1 (Lin et al.): ``mean_i w_t (1 - p_i)^gamma ce_i``, a plain mean."""
    z, t = _kept(logits, target)
    if len(t) == 0:
        return logits.sum() * 0.0
    ce = _unweighted_ce(z, t)
    one_minus_p = -torch.expm1(-ce)  # 1 - p, accurate when p is close to 1
    return (_class_weight(weight, t) * one_minus_p.pow(gamma) * ce).mean()


def ib_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    features: torch.Tensor,
    alpha: float = 1000.0,
    gamma: float = 2.0,
    eps: float = 1e-3,
    weight: torch.Tensor | None = None,
    detach: bool = False,
    weighted_pt: bool = True,
) -> torch.Tensor:
    """Method 2 (Park et al.'s IB loss with Focal): ``mean_i w_t (1-q_i)^gamma ce_i alpha / (g_i h_i + eps)``.

    ``g_i = sum_k |softmax(z_i)_k - onehot(t_i)_k|``, which is exactly ``2 (1 - p_i)`` (values and
    gradients alike on the simplex), and ``h_i = ||features_i||_1``, the L1 norm of ``features`` (N, D),
    the classifier's input by default. ``q_i`` is ``exp(-w_t ce_i) = p_i^w_t`` when ``weighted_pt``, as
    the IB authors' ``ib_focal_loss`` takes p from the weighted cross-entropy (losses.py L39, L56), else
    ``p_i``. A plain mean, as theirs. Nothing is detached unless ``detach``; with ``detach`` the IB
    factor acts as a plain per-pixel weight.
    """
    if features.shape[:1] != logits.shape[:1]:
        raise ValueError(f"features {tuple(features.shape)} and logits {tuple(logits.shape)} differ in N")
    z, t, f = _kept(logits, target, features)
    if len(t) == 0:
        return logits.sum() * 0.0 + features.sum() * 0.0
    ce = _unweighted_ce(z, t)
    w = _class_weight(weight, t)
    one_minus_p = -torch.expm1(-ce)
    focal_base = -torch.expm1(-w * ce) if weighted_pt and weight is not None else one_minus_p
    grad_norm = 2.0 * one_minus_p  # g_i
    feat_norm = f.float().abs().sum(dim=1)  # h_i
    influence = alpha / (grad_norm * feat_norm + eps)
    if detach:
        influence = influence.detach()
    return (w * focal_base.pow(gamma) * ce * influence).mean()


def ib_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    features: torch.Tensor,
    alpha: float = 1000.0,
    eps: float = 1e-3,
    weight: torch.Tensor | None = None,
    detach: bool = False,
) -> torch.Tensor:
    """The IB loss itself: ``ib_focal_loss`` with gamma = 0 (so ``weighted_pt`` does not matter)."""
    return ib_focal_loss(logits, target, features, alpha=alpha, gamma=0.0, eps=eps, weight=weight, detach=detach)


def class_weights(counts: torch.Tensor, mode: str) -> torch.Tensor | None:
    """Per-cluster weights from the pixel counts of the epoch's labels.

    - ``"picie"``: ``counts / counts.sum()``, PiCIE's default, proportional to frequency (sic).
    - ``"inverse"``: the IB authors' ``(1/n_k) / sum_j (1/n_j) * K``; empty clusters (which no
      pixel targets) get 0 and are left out of the normalisation, so the rest sum to K.
    - ``"none"``: no weights.
    """
    counts = counts.double()
    if mode == "none":
        return None
    if mode == "picie":
        return (counts / counts.sum().clamp_min(1)).float()
    if mode == "inverse":
        inv = torch.where(counts > 0, 1.0 / counts.clamp_min(1), torch.zeros_like(counts))
        return (inv / inv.sum().clamp_min(1e-300) * len(counts)).float()
    raise ValueError(f"balance={mode!r}: expected 'picie', 'inverse' or 'none'")


def cosine_logit_max_probability(n_classes: int, temperature: float, others: str = "opposite") -> float:
    """The largest ``p_t`` that PiCIE's logits ``z_k = f . c_k / T`` allow (``|f| = |c_k| = 1``, so
    ``z`` lies in ``[-1/T, 1/T]``): the pixel on its centroid and every other centroid opposite it
    (``others="opposite"``, the bound) or orthogonal to it (``"orthogonal"``, the typical case in
    128 dimensions). With T = 1 and K = 27 these are 0.22 and 0.09: the Focal factor (1 - p_t)^2
    never falls below 0.6, so Focal cannot switch off easy pixels as it does with free logits."""
    other = {"opposite": -1.0 / temperature, "orthogonal": 0.0}[others]
    top = 1.0 / temperature
    return float(1.0 / (1.0 + (n_classes - 1) * torch.exp(torch.tensor(other - top, dtype=torch.float64))))


def reachable_l1_norms(dim: int) -> tuple[float, float]:
    """The range of IB's ``h = ||f||_1`` for an L2-normalised ``dim``-d feature (``ib_feature: normalized``):
    1 when the feature is one axis, ``sqrt(dim)`` when all its entries are equal (Cauchy-Schwarz)."""
    return 1.0, math.sqrt(dim)
