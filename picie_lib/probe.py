"""The ceiling reference: a supervised linear probe on the network's frozen features (as STEGO's)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from picie_lib.config import Config
from picie_lib.data import build_dataset
from picie_lib.data.base import warn_skipped
from picie_lib.evaluate import network_feature_fn, predict, score_predictions
from picie_lib.loader import Batches
from picie_lib.picie import derive_seed, labelling_bn
from picie_lib.progress import progress

STREAM_PROBE = 13  # after the evaluation's streams (evaluate.STREAM_EVAL_ORDER, STREAM_EVAL_KMEANS)


def linear_probe(model: torch.nn.Module, cfg: Config, train_set=None, val_set=None, lr: float = 1e-2) -> dict:
    """Reference (the ceiling): a supervised 1x1 linear classifier on the frozen, normalised features.

    Trained with Adam and plain cross-entropy (as STEGO's probe) for ``cfg.probe_epochs`` epochs on
    the train split, against the label at each feature pixel's centre (the features are computed once);
    scored on val at the label resolution, without matching (class i = output i). Under torchrun every
    process reads every train image and trains the same head (same seed); the scoring is split.
    """
    train_set = train_set or build_dataset(cfg, "train", mode="eval")
    val_set = val_set or build_dataset(cfg, "val", mode="eval")
    extract = network_feature_fn(model, cfg, labelling_bn(cfg))
    device = next(model.parameters()).device
    start = time.perf_counter()
    feats, labels = [], []
    batches = Batches(train_set, list(range(len(train_set))), cfg.eval_batch_size, cfg, split=False)
    for _, images, target in progress(batches, "probe features"):
        f = extract(images)
        stride = target.shape[-1] // f.shape[-1]
        feats.append(f.cpu())
        labels.append(target[:, stride // 2 :: stride, stride // 2 :: stride][:, : f.shape[-2], : f.shape[-1]])
    feats, labels = torch.cat(feats), torch.cat(labels)
    torch.manual_seed(derive_seed(cfg.seed, STREAM_PROBE))
    head = torch.nn.Conv2d(feats.shape[1], train_set.n_classes, kernel_size=1).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    for epoch in progress(range(cfg.probe_epochs), "probe epochs"):
        shuffle = torch.randperm(len(feats), generator=torch.Generator().manual_seed(epoch))
        for idx in shuffle.split(cfg.eval_batch_size):
            loss = F.cross_entropy(head(feats[idx].to(device)), labels[idx].to(device), ignore_index=-1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    with torch.no_grad():
        result = score_predictions(
            lambda x, size: predict(extract, x, size, head=head), val_set, cfg, val_set.n_classes, match=False
        )
    result["skipped_files"] = batches.skipped_files + result["skipped_files"]
    warn_skipped(result["skipped_files"], "left out of the linear probe (metrics.json lists them)")
    result["seconds"] = time.perf_counter() - start
    return result
