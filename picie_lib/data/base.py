"""The dataset interface every data source implements, and its two modes.

A source only says how to load image ``i`` at its base resolution (and its label map, if any).
``SceneDataset`` turns that into the geometry of PiCIE's two training views (``mode="train"``; their
photometric ops run later, batched on the network's device: ``transforms.augment``) or into an
evaluation pair (``mode="eval"``: shorter side to ``res``, centre crop). Items hold uint8 images: a
quarter of float32's bytes to move between processes and to the GPU.

Train-mode views are made in batches (``train_views``) from what ``encoded`` reads: for files on disk, the
file's bytes, so that with a GPU the data-loader workers only read files and the JPEGs are decoded and the
views cut on the GPU (``loader.Batches``). Without a GPU the same functions run on CPU tensors, per item,
in the workers (``__getitem__``).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch.utils.data import Dataset

from picie_lib.transforms import ViewParams, center_crop_resize, cut_views

IGNORE_INDEX = -1


class BadFile(ValueError):
    """One file of a data set that cannot be used (corrupt, truncated, wrong size or values).

    Raised by ``load``; the passes skip the item with a warning and count it (docs/faults.md).
    """

    def __init__(self, path, problem: str, expected: str) -> None:
        super().__init__(f"{path}: {problem}; expected {expected}")
        self.path, self.problem, self.expected = str(path), problem, expected

    def __reduce__(self):  # crosses from a data-loader worker intact
        return type(self), (self.path, self.problem, self.expected)


class BadFileWarning(UserWarning):
    """An item left out of a pass because its file is bad; the pass counts it."""


def warn_skipped(files: list[str], what: str) -> None:
    """One warning at the end of a pass or run: ``"N bad file(s) {what}: the first five"``."""
    if files:
        shown = ", ".join(files[:5]) + (" ..." if len(files) > 5 else "")
        warnings.warn(f"{len(files)} bad file(s) {what}: {shown}", BadFileWarning, stacklevel=3)


class SkippedItem(NamedTuple):
    """What ``SceneDataset[i]`` gives for an item whose file is bad: the loaders leave it out."""

    index: int
    path: str  # the bad file: the image, or its label map
    reason: str


def skip(index: int, err: BadFile) -> SkippedItem:
    """Item ``index`` left out because of ``err``, with a warning (one per item, where it is read)."""
    warnings.warn(f"skipped: {err}", BadFileWarning, stacklevel=3)
    return SkippedItem(index, err.path, str(err))


def first_usable(dataset, count: int) -> list[tuple]:
    """The first ``count`` items of ``dataset`` that are not ``SkippedItem`` (for figures)."""
    items = []
    for i in range(len(dataset)):
        if len(items) == count:
            break
        item = dataset[i]
        if not isinstance(item, SkippedItem):
            items.append(item)
    return items


class SceneDataset(Dataset):
    """Base class. Subclasses set ``class_names``, ``thing_classes``, ``stuff_classes`` and
    implement ``__len__`` and ``load(i) -> (uint8 (3, H, W), int64 (H, W) with -1 = ignore, or None)``;
    in train mode the base image must be square, of side ``base_size`` (the crops are fractions of its side).
    Sources on disk also implement ``encoded`` and ``decode_bases`` (``images.ImageFiles``).

    ``mode="train"`` items are ``(index, views)``, ``views`` uint8 (2, 3, res, res) from
    ``transforms.cut_views`` (view 1's crop and flip, view 2 whole), and need ``set_view_params`` once per
    epoch; ``base_size`` is then the side of the square base images (the blur's unit).
    ``mode="eval"`` items are ``(index, image, label)``: uint8 (3, res, res) and int64 (res, res).
    """

    class_names: tuple[str, ...] = ()
    thing_classes: tuple[int, ...] = ()
    stuff_classes: tuple[int, ...] = ()

    def __init__(self, mode: str, res: int) -> None:
        if mode not in ("train", "eval"):
            raise ValueError(f"mode={mode!r}: expected 'train' or 'eval'")
        self.mode, self.res = mode, res
        self.view_params: ViewParams | None = None
        self.base_size: int | None = None  # train mode: the side of the square base images

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def set_view_params(self, params: ViewParams) -> None:
        """The epoch's view parameters; their crop boxes are rounded to whole base pixels (in place, so the
        caller's ``params`` name the boxes the views are cut from: ``ViewParams.snap_to``)."""
        if len(params) != len(self):
            raise ValueError(f"view parameters for {len(params)} images, dataset has {len(self)}")
        self.view_params = params.snap_to(self.base_size)

    # ---- train mode: what a worker reads, and the views made from it in batches -----------------------
    def encoded(self, index: int):
        """Train mode: what item ``index``'s views are made from, as a data-loader worker reads it (here the
        base image; a source on disk returns the file's bytes). May raise ``BadFile``."""
        return self.load(index)[0]

    def decode_bases(self, indices: list[int], encoded: list, device) -> tuple[list[int], torch.Tensor, list]:
        """The square base images of ``encoded`` (from ``encoded(i)`` for ``i`` in ``indices``) on
        ``device``: ``(kept indices, uint8 (B, 3, S, S), SkippedItems)``."""
        for index, image in zip(indices, encoded, strict=True):
            size = tuple(image.shape[-2:])
            if size != (self.base_size, self.base_size):
                raise ValueError(
                    f"{type(self).__name__}[{index}]: a base image of {size}; train mode needs square base "
                    f"images of side base_size={self.base_size} (sources centre-crop them, as PiCIE's BaseTransform)"
                )
        side = self.base_size
        bases = torch.stack(encoded) if encoded else torch.empty((0, 3, side, side), dtype=torch.uint8)
        return list(indices), bases.to(device, non_blocking=True), []

    def train_views(self, indices: list[int], encoded: list, device) -> tuple[torch.Tensor, torch.Tensor, list]:
        """A batch's views, made on ``device``: ``(index (B,), uint8 (B, 2, 3, res, res), SkippedItems)``; the
        items whose file turns out bad when decoded are left out and returned as ``SkippedItem``s."""
        kept, bases, skipped = self.decode_bases(indices, encoded, device)
        if self.view_params is None:
            raise RuntimeError("train mode needs set_view_params() for the epoch before loading")
        index = torch.tensor(kept, dtype=torch.int64)
        return index, cut_views(bases, self.view_params.crop[index], self.view_params.flip[index], self.res), skipped

    def __getitem__(self, index: int):
        """The item, or a ``SkippedItem`` when its file is bad (``BadFile``): the loaders leave it out and
        count it."""
        try:
            if self.mode == "train":
                _, views, skipped = self.train_views([index], [self.encoded(index)], "cpu")
                return skipped[0] if skipped else (index, views[0])
            image, label = self.load(index)
        except BadFile as err:
            return skip(index, err)
        if label is None:
            label = torch.full(image.shape[-2:], IGNORE_INDEX, dtype=torch.int64)
        image, label = center_crop_resize(image, label, self.res)
        return index, image, label
