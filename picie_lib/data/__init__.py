"""Data sources. Every source is a ``SceneDataset`` (see ``base``)."""

from __future__ import annotations

from picie_lib.data.base import IGNORE_INDEX, BadFile, SceneDataset
from picie_lib.data.cityscapes import Cityscapes27
from picie_lib.data.cocostuff import CocoStuff27
from picie_lib.data.folder import FolderDataset
from picie_lib.data.synthetic import SyntheticScenes

__all__ = [
    "IGNORE_INDEX",
    "BadFile",
    "Cityscapes27",
    "CocoStuff27",
    "FolderDataset",
    "SceneDataset",
    "SyntheticScenes",
    "build_dataset",
]


def build_dataset(cfg, split: str, mode: str) -> SceneDataset:
    """The data set of ``cfg.dataset`` for ``split`` ("train" or "val") in ``mode`` ("train"/"eval")."""
    if cfg.dataset == "synthetic":
        n = cfg.n_train if split == "train" else cfg.n_val
        return SyntheticScenes(
            n, cfg.image_size, seed=cfg.data_seed, split=split, mode=mode, res=cfg.res, colours=cfg.synthetic_colours
        )
    common = {"split": split, "mode": mode, "res": cfg.res, "base_res": cfg.base_res, "max_images": cfg.max_images}
    if cfg.dataset == "cocostuff27":
        return CocoStuff27(cfg.data_root, curated=cfg.curated, **common)
    if cfg.dataset == "cityscapes27":
        return Cityscapes27(cfg.data_root, **common)
    if cfg.dataset == "folder":
        return FolderDataset(cfg.data_root, class_table=cfg.class_table, n_classes=cfg.n_clusters, **common)
    raise ValueError(f"dataset={cfg.dataset!r}: expected synthetic, cocostuff27, cityscapes27 or folder")
