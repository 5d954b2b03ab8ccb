"""Data sources. Every source is a ``SceneDataset`` (see ``base``)."""

from __future__ import annotations

from picie_lib.data.base import IGNORE_INDEX, SceneDataset
from picie_lib.data.synthetic import SyntheticScenes

__all__ = ["IGNORE_INDEX", "SceneDataset", "SyntheticScenes", "build_dataset"]


def build_dataset(cfg, split: str, mode: str) -> SceneDataset:
    """The data set of ``cfg.dataset`` for ``split`` ("train" or "val") in ``mode`` ("train"/"eval")."""
    if cfg.dataset == "synthetic":
        n = cfg.n_train if split == "train" else cfg.n_val
        return SyntheticScenes(n, cfg.image_size, seed=cfg.data_seed, split=split, mode=mode, res=cfg.res)
    raise ValueError(f"dataset={cfg.dataset!r}: expected 'synthetic'")
