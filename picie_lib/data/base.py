"""The dataset interface every data source implements, and its two modes.

A source only says how to load image ``i`` at its base resolution (and its label map, if any).
``SceneDataset`` turns that into the geometry of PiCIE's two training views (``mode="train"``; their
photometric ops run later, batched on the network's device: ``transforms.augment``) or into an
evaluation pair (``mode="eval"``: shorter side to ``res``, centre crop). Items hold uint8 images: a
quarter of float32's bytes to move between processes and to the GPU.

Items are made in batches (``train_views``, ``eval_pairs``) from what ``encoded`` reads: for files on disk, the
image file's bytes (and in eval mode its label map), so that with a GPU the data-loader workers only read files
and the JPEGs are decoded, and the views cut or the evaluation crops made, on the GPU (``loader.Batches``).
Without a GPU the same functions run on CPU tensors, per item, in the workers (``__getitem__``).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import torch
from torch.utils.data import Dataset

from picie_lib.transforms import ViewParams, by_size, center_crop_label, center_crop_resize, cut_views

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
    Sources on disk also implement ``encoded``, ``decode``, ``bases`` and ``check_label`` (``images.ImageFiles``).

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
        if self.base_size is None:
            raise ValueError(f"{type(self).__name__}: base_size is not set; train mode needs its square base's side")
        self.view_params = params.snap_to(self.base_size)

    # ---- what a worker reads, and the batches made from it on a device --------------------------------
    def encoded(self, index: int):
        """What item ``index`` is made from, as a data-loader worker reads it: the image (train mode: the base
        image), in eval mode with its ``label_entry``. A source on disk returns the image file's bytes in place
        of the image (``images.ImageFiles``). May raise ``BadFile``."""
        image, label = self.load(index)
        return image if self.mode == "train" else (image, self.label_entry(label))

    def label_entry(self, label: torch.Tensor | None):
        """A label map as a worker hands it over: None (no labels), or ``(the map cut as its image will be, at
        res, as int16; its size before)``: a small part of the full map to move, and the size to check."""
        return None if label is None else (center_crop_label(label, self.res).to(torch.int16), tuple(label.shape))

    def decode(self, indices: list[int], images: list, device) -> tuple[list[int], list[torch.Tensor], list]:
        """``encoded``'s images of items ``indices`` as uint8 (3, H, W) on ``device``: ``(kept indices, images,
        SkippedItems)``. Here they are images already; a source on disk decodes its files' bytes."""
        return list(indices), [image.to(device, non_blocking=True) for image in images], []

    def bases(self, indices: list[int], images: list[torch.Tensor]) -> torch.Tensor:
        """Items ``indices``' square base images, uint8 (B, 3, side, side), from their decoded images (here: they
        are bases already)."""
        for index, image in zip(indices, images, strict=True):
            if tuple(image.shape[-2:]) != (self.base_size, self.base_size):
                raise ValueError(
                    f"{type(self).__name__}[{index}]: a base image of {tuple(image.shape[-2:])}; train mode needs "
                    f"square base images of side base_size={self.base_size} (sources centre-crop them, as PiCIE's "
                    "BaseTransform)"
                )
        return torch.stack(images)

    def check_label(self, index: int, image: torch.Tensor, entry) -> None:
        """Raise the label file's ``BadFile`` if ``entry`` is one (a source on disk also checks the size)."""
        if isinstance(entry, BadFile):
            raise entry

    def train_views(self, indices: list[int], encoded: list, device) -> tuple[torch.Tensor, torch.Tensor, list]:
        """A train-mode batch made on ``device``: ``(index (B,), views uint8 (B, 2, 3, res, res), SkippedItems)``;
        an item whose file turns out bad when decoded is left out and returned as a ``SkippedItem``."""
        kept, images, skipped = self.decode(indices, encoded, device)
        side = self.base_size
        if kept:
            bases = self.bases(kept, images)
        else:
            bases = torch.empty((0, 3, side, side), dtype=torch.uint8, device=device)
        if self.view_params is None:
            raise RuntimeError("train mode needs set_view_params() for the epoch before loading")
        index = torch.tensor(kept, dtype=torch.int64)
        return index, cut_views(bases, self.view_params.crop[index], self.view_params.flip[index], self.res), skipped

    def eval_pairs(self, indices: list[int], encoded: list, device) -> tuple[torch.Tensor, ...]:
        """An eval-mode batch made from ``encoded``'s ``(image, label)``: ``(index (B,), images uint8 (B, 3, res,
        res) on ``device``, labels int64 (B, res, res) on the CPU, SkippedItems)``: shorter side to ``res``,
        centre crop (``center_crop_resize``); items with a bad file are left out, as in ``train_views``."""
        kept, images, skipped = self.decode(indices, [image for image, _ in encoded], device)
        entries = {index: entry for index, (_, entry) in zip(indices, encoded, strict=True)}
        index, usable, labels, res = [], [], [], self.res
        for i, image in zip(kept, images, strict=True):
            try:
                self.check_label(i, image, entries[i])
            except BadFile as err:
                skipped.append(skip(i, err))
                continue
            index.append(i)
            usable.append(image)
            labels.append(torch.full((res, res), IGNORE_INDEX) if entries[i] is None else entries[i][0].long())
        if usable:
            images, labels = by_size(usable, lambda batch: center_crop_resize(batch, None, res)[0]), torch.stack(labels)
        else:
            images = torch.empty((0, 3, res, res), dtype=torch.uint8, device=device)
            labels = torch.empty((0, res, res), dtype=torch.int64)
        return torch.tensor(index, dtype=torch.int64), images, labels, skipped

    def __getitem__(self, index: int):
        """The item, made on the CPU by the batch functions above, or a ``SkippedItem`` when its file is bad
        (``BadFile``): the loaders leave it out and count it."""
        try:
            encoded = self.encoded(index)
        except BadFile as err:
            return skip(index, err)
        if self.mode == "train":
            _, views, skipped = self.train_views([index], [encoded], "cpu")
            return skipped[0] if skipped else (index, views[0])
        _, images, labels, skipped = self.eval_pairs([index], [encoded], "cpu")
        return skipped[0] if skipped else (index, images[0], labels[0])
