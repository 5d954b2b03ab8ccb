"""Cityscapes-27 as PiCIE uses it (picie.md section 6; PiCIE's ``data/cityscapes_*_dataset.py``).

- Images: ``ROOT/leftImg8bit/<folder>/<city>/*_leftImg8bit.png``. Split "train" (training, and the fresh
  k-means of the final evaluation) = folders ``test`` + ``train_extra`` (1,525 + 19,998 images); split "val"
  (scored) = ``val`` + ``train`` (500 + 2,975).
- Labels (split "val" only): ``gtFine/<folder>/<city>/*_gtFine_labelIds.png`` under ``ROOT`` or, as PiCIE
  reads them, under ``ROOT/annotations``. labelIds 7..33 -> classes 0..26 (the 27 classes of issues #15/#16,
  not the 19 trainIds); every other id (0..6: unlabeled, ego vehicle, ...) -> -1. Split "train" has no fine
  labels (train_extra has only coarse ones), so its eval items carry all-ignore labels, as PiCIE's.
- Things: the Cityscapes categories with instances (person ... bicycle, classes 17..26); the rest stuff.
"""

from __future__ import annotations

from pathlib import Path

from picie_lib.data.images import ImageFiles, label_table

# The 27 classes, in labelId order 7..33 (cityscapesScripts' labels.py).
CITYSCAPES_NAMES = (
    "road",
    "sidewalk",
    "parking",
    "rail track",
    "building",
    "wall",
    "fence",
    "guard rail",
    "bridge",
    "tunnel",
    "pole",
    "polegroup",
    "traffic light",
    "traffic sign",
    "vegetation",
    "terrain",
    "sky",
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "caravan",
    "trailer",
    "train",
    "motorcycle",
    "bicycle",
)
FIRST_LABEL_ID = 7
CITYSCAPES_THINGS = tuple(range(17, 27))  # hasInstances: person, rider, car, ..., bicycle
CITYSCAPES_STUFF = tuple(range(17))
# labelIds 7..33 -> 0..26; every other value of an 8-bit map (0..6, 34..255) -> ignore.
LABEL_TABLE = label_table(
    {FIRST_LABEL_ID + c: c for c in range(len(CITYSCAPES_NAMES))},
    ignore=[v for v in range(256) if not FIRST_LABEL_ID <= v < FIRST_LABEL_ID + len(CITYSCAPES_NAMES)],
)
SPLIT_FOLDERS = {"train": ("test", "train_extra"), "val": ("val", "train")}
IMAGE_SUFFIX, LABEL_SUFFIX = "_leftImg8bit.png", "_gtFine_labelIds.png"
SOURCES = {
    "test": "leftImg8bit_trainvaltest.zip (about 11 GB)",
    "train": "leftImg8bit_trainvaltest.zip (about 11 GB)",
    "val": "leftImg8bit_trainvaltest.zip (about 11 GB)",
    "train_extra": "leftImg8bit_trainextra.zip (about 44 GB)",
    "gtFine": "gtFine_trainvaltest.zip (about 241 MB)",
}
SITE = "https://www.cityscapes-dataset.com/downloads/ (free registration)"


def label_root(root: Path) -> Path:
    """``ROOT/gtFine``, or ``ROOT/annotations/gtFine`` (PiCIE's place) when only that exists."""
    root = Path(root)
    for candidate in (root / "gtFine", root / "annotations" / "gtFine"):
        if candidate.is_dir():
            return candidate
    return root / "gtFine"


def split_images(root: Path, split: str) -> tuple[list[tuple[str, Path]], list[str]]:
    """(folder, image path) pairs of a split, sorted, and the names of its absent folders."""
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"split={split!r}: expected 'train' (test + train_extra) or 'val' (val + train)")
    found, absent = [], []
    for folder in SPLIT_FOLDERS[split]:
        path = Path(root) / "leftImg8bit" / folder
        if not path.is_dir():
            absent.append(folder)
            continue
        found += [(folder, p) for p in sorted(path.glob(f"*/*{IMAGE_SUFFIX}"))]
    return found, absent


def label_path_for(root: Path, folder: str, image: Path) -> Path:
    stem = image.name[: -len(IMAGE_SUFFIX)]
    return label_root(root) / folder / image.parent.name / f"{stem}{LABEL_SUFFIX}"


class Cityscapes27(ImageFiles):
    """Cityscapes with the 27 classes of labelIds 7..33, PiCIE's splits (see the module docstring).

    Train mode: square base image (shorter side to ``base_res``, centre crop). Eval mode: the full
    image and label; the base class resizes the shorter side to ``res`` and centre-crops. A split
    folder that is absent is named in a printed note and skipped; no image at all is an error.
    """

    class_names = CITYSCAPES_NAMES
    thing_classes = CITYSCAPES_THINGS
    stuff_classes = CITYSCAPES_STUFF
    label_table = LABEL_TABLE
    label_values, label_meaning = "0..255", "Cityscapes labelIds"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        mode: str = "train",
        res: int = 320,
        base_res: int = 640,
        max_images: int | None = None,
    ) -> None:
        super().__init__(mode, res)
        self.root, self.split, self.base_size = Path(root), split, base_res
        found, absent = split_images(self.root, split)
        expected = " + ".join(f"leftImg8bit/{f}" for f in SPLIT_FOLDERS[split])
        if not found:
            raise FileNotFoundError(
                f"{self.root / 'leftImg8bit'}: no *{IMAGE_SUFFIX} images of split {split!r}; expected {expected}"
                f"/<city>/ from {', '.join(sorted({SOURCES[f] for f in SPLIT_FOLDERS[split]}))}, {SITE}"
            )
        for folder in absent:
            print(f"note: {self.root / 'leftImg8bit' / folder} absent ({SOURCES[folder]}); split {split!r} without it")
        self.items = found[:max_images] if max_images else found
        self.labelled = split == "val"
        if mode == "eval" and self.labelled:
            self.check_labels_exist(
                f"gtFine/<split>/<city>/*{LABEL_SUFFIX} under {self.root} or {self.root / 'annotations'}"
                f", from {SOURCES['gtFine']}, {SITE}"
            )

    def __len__(self) -> int:
        return len(self.items)

    def image_path(self, index: int) -> Path:
        return self.items[index][1]

    def label_path(self, index: int) -> Path:
        folder, image = self.items[index]
        return label_path_for(self.root, folder, image)
