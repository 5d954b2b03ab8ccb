"""COCO-Stuff-27 (reference: cocostuff27.md, picie.md section 6): the data set (its classes:
``cocostuff_classes``).

- Layout (PiCIE's and STEGO's): ``ROOT/images/{train2017,val2017}/*.jpg``, the stuffthingmaps PNGs in
  ``ROOT/annotations/{train2017,val2017}/*.png`` and the curated id lists
  ``ROOT/curated/{train2017,val2017}/Coco164kFull_Stuff_Coarse_7.txt``.
- Where only the COCO JSON is there (``ROOT/annotations/stuff_{split}2017.json`` and
  ``instances_{split}2017.json``), ``labels_from_json`` draws the same label maps with pycocotools and
  caches them as PNGs in the layout above, once.
- Curated lists (IIC, 49,629 train / 2,175 val images): the official files when present, else built by
  IIC's rule (``is_curated``) and written where the official file would be.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from picie_lib.data.base import BadFile
from picie_lib.data.cocostuff_classes import (
    COARSE_NAMES,
    FINE_NAMES,
    FIRST_STUFF_FINE,
    LABEL_TABLE,
    STUFF_CLASSES,
    THING_CLASSES,
    UNLABELED,
)
from picie_lib.data.images import ImageFiles, read_label
from picie_lib.progress import progress
from picie_lib.runs import atomic_write_bytes, atomic_write_text

SPLIT_FOLDERS = {"train": "train2017", "val": "val2017"}
CURATED_FILE = "Coco164kFull_Stuff_Coarse_7.txt"
OFFICIAL_CURATED_COUNTS = {"train2017": 49_629, "val2017": 2_175}
# IIC's curation (xu-ji/IIC, code/datasets/segmentation/util/coco164k_prepare.py, "version 7").
CURATED_MIN_SIDE = 360
CURATED_STUFF_SHARE = 0.75

# Where each piece comes from (sizes as the COCO-Stuff README lists them).
IMAGE_ZIPS = {"train2017": "train2017.zip (18 GB)", "val2017": "val2017.zip (1 GB)"}
IMAGES_URL = "http://images.cocodataset.org/zips/"
STUFFTHINGMAPS = (
    "stuffthingmaps_trainval2017.zip (659 MB, "
    "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/stuffthingmaps_trainval2017.zip)"
)
JSON_ZIPS = (
    "stuff_trainval2017.zip (543 MB, COCO-Stuff) and annotations_trainval2017.zip (241 MB, "
    "http://images.cocodataset.org/annotations/annotations_trainval2017.zip)"
)
CURATED_SOURCE = "the curated/ folder of https://github.com/janghyuncho/PiCIE (IIC's lists)"


# ---- layout ------------------------------------------------------------------------------------
def image_dir(root: Path, folder: str) -> Path:
    return Path(root) / "images" / folder


def label_dir(root: Path, folder: str) -> Path:
    return Path(root) / "annotations" / folder


def curated_path(root: Path, folder: str) -> Path:
    return Path(root) / "curated" / folder / CURATED_FILE


def json_paths(root: Path, folder: str) -> tuple[Path, Path]:
    """The COCO-format stuff and instance annotations of a split (category ids 92..183 and 1..90)."""
    annotations = Path(root) / "annotations"
    return annotations / f"stuff_{folder}.json", annotations / f"instances_{folder}.json"


def has_json(root: Path, folder: str) -> bool:
    return all(p.is_file() for p in json_paths(root, folder))


def image_source(folder: str) -> str:
    return f"unzip {IMAGE_ZIPS[folder]} from {IMAGES_URL}{folder}.zip into images/"


def label_source(folder: str) -> str:
    return (
        f"unzip {STUFFTHINGMAPS} into annotations/ (its {folder}/ folder), or put stuff_{folder}.json and "
        f"instances_{folder}.json from {JSON_ZIPS} in annotations/ to build them"
    )


def stems(folder: Path, suffix: str) -> set[str]:
    """Names (without ``suffix``) of the files of ``folder`` ending in ``suffix``; empty if no folder."""
    if not folder.is_dir():
        return set()
    with os.scandir(folder) as entries:
        return {e.name[: -len(suffix)] for e in entries if e.name.endswith(suffix)}


def split_folder(split: str) -> str:
    if split not in SPLIT_FOLDERS:
        raise ValueError(f"split={split!r}: expected 'train' or 'val'")
    return SPLIT_FOLDERS[split]


# ---- labels from the COCO JSON ---------------------------------------------------------------------
def fine_label_from_json(info: dict, stuff, things) -> np.ndarray:
    """One image's fine-id map (uint8 (H, W), 255 = unlabeled) from pycocotools ``COCO`` objects.

    Stuff category c (92..182) -> fine c - 1; 183 'other' (all things merged) is no label: its pixels
    are left to the instance masks, else 255. Thing instances (category c in 1..91 -> fine c - 1, crowd
    regions included) are painted over the stuff, largest first, so smaller objects stay on top.
    """
    fine = np.full((info["height"], info["width"]), UNLABELED, dtype=np.uint8)
    for ann in stuff.loadAnns(stuff.getAnnIds(imgIds=info["id"])):
        if FIRST_STUFF_FINE + 1 <= ann["category_id"] <= len(FINE_NAMES):
            fine[stuff.annToMask(ann) > 0] = ann["category_id"] - 1
    if info["id"] in things.imgs:
        anns = things.loadAnns(things.getAnnIds(imgIds=info["id"]))
        for ann in sorted(anns, key=lambda a: -a.get("area", 0)):
            if 1 <= ann["category_id"] <= FIRST_STUFF_FINE:
                fine[things.annToMask(ann) > 0] = ann["category_id"] - 1
    return fine


def png_bytes(label: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(label.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def labels_from_json(root: Path, folder: str, ids: list[str] | None = None) -> list[str]:
    """Draw the label PNGs of ``ids`` (default: every image of the JSON) into ``annotations/<folder>/``.

    Returns the ids written. Needs pycocotools, and memory for the JSON (several GB for train2017).
    """
    try:
        from pycocotools.coco import COCO
    except ImportError as err:
        raise ImportError("building label maps from the COCO JSON needs pycocotools: pip install pycocotools") from err
    stuff_path, things_path = json_paths(root, folder)
    with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints its timings
        stuff, things = COCO(str(stuff_path)), COCO(str(things_path))
    by_stem = {Path(img["file_name"]).stem: img for img in [*things.dataset["images"], *stuff.dataset["images"]]}
    wanted = [i for i in (sorted(by_stem) if ids is None else ids) if i in by_stem]
    out = label_dir(root, folder)
    for stem in progress(wanted, f"label maps {folder}"):
        atomic_write_bytes(out / f"{stem}.png", png_bytes(fine_label_from_json(by_stem[stem], stuff, things)))
    return wanted


def ensure_labels(root: Path, folder: str, ids: list[str]) -> list[str]:
    """Make sure every id has a label PNG, drawing missing ones from the JSON when it is there (once:
    later calls find the PNGs). Returns the ids still without one."""
    present = stems(label_dir(root, folder), ".png")
    missing = [i for i in ids if i not in present]
    if missing and has_json(root, folder):
        print(f"{folder}: drawing {len(missing)} label maps from the COCO JSON into {label_dir(root, folder)} (once)")
        written = set(labels_from_json(root, folder, missing))
        missing = [i for i in missing if i not in written]
    return missing


def missing_labels_error(root: Path, folder: str, missing: list[str], total: int) -> FileNotFoundError:
    path = label_dir(root, folder) / f"{missing[0]}.png"
    return FileNotFoundError(
        f"{path}: missing ({len(missing)} of {total} {folder} images have no label map); expected one PNG of "
        f"COCO-Stuff fine ids per image in {label_dir(root, folder)}: {label_source(folder)}"
    )


# ---- curated lists ---------------------------------------------------------------------------------
def is_curated(fine: np.ndarray) -> bool:
    """IIC's rule: both sides >= 360 px and at least 75% of *all* pixels stuff (fine 91..181).

    Unlabeled pixels (255) count in the denominator, as in IIC's ``meets_conditions`` (h * w * 0.75).
    """
    h, w = fine.shape
    if h < CURATED_MIN_SIDE or w < CURATED_MIN_SIDE:
        return False
    n_stuff = np.count_nonzero((fine >= FIRST_STUFF_FINE) & (fine < len(FINE_NAMES)))
    return n_stuff >= h * w * CURATED_STUFF_SHARE


def read_curated(path: Path) -> list[str]:
    """The ids of a curated list (one 12-digit COCO id per line; blank lines are skipped). An id listed
    twice is refused with both line numbers: it would be trained on and scored twice."""
    lines = [(n, line.strip()) for n, line in enumerate(Path(path).read_text().splitlines(), 1) if line.strip()]
    bad = [(n, i) for n, i in lines if not (i.isdigit() and len(i) == 12)]
    if bad:
        raise ValueError(f"{path}: line {bad[0][0]} is {bad[0][1]!r}; expected one 12-digit COCO image id per line")
    if not lines:
        raise ValueError(f"{path}: empty; expected one 12-digit COCO image id per line ({CURATED_SOURCE})")
    first: dict[str, int] = {}
    repeats = []
    for n, i in lines:
        if i in first:
            repeats.append(f"{i} on lines {first[i]} and {n}")
        first.setdefault(i, n)
    if repeats:
        shown = "; ".join(repeats[:3]) + (f"; and {len(repeats) - 3} more" if len(repeats) > 3 else "")
        raise ValueError(f"{path}: {len(repeats)} id(s) listed twice ({shown}); keep each id once")
    return [i for _, i in lines]


def build_curated(root: Path, folder: str, ids: list[str]) -> tuple[list[str], list[str]]:
    """Apply ``is_curated`` to the label maps of ``ids`` and write the list where the official one goes.

    Returns (selected ids, problems with unreadable label maps, which are left out).
    """
    selected, problems = [], []
    for i in progress(ids, f"curating {folder}"):
        try:
            if is_curated(read_label(label_dir(root, folder) / f"{i}.png")):
                selected.append(i)
        except BadFile as err:
            problems.append(str(err))
    if selected:
        atomic_write_text(curated_path(root, folder), "".join(f"{i}\n" for i in selected))
    return selected, problems


def curated_ids(root: Path, folder: str, images: set[str]) -> list[str]:
    """The official curated list of a split if present; otherwise built by the rule, with a message."""
    path = curated_path(root, folder)
    if path.is_file():
        return read_curated(path)
    everything = sorted(images)
    missing = ensure_labels(root, folder, everything)
    if missing:
        raise FileNotFoundError(
            f"{path}: missing ({CURATED_SOURCE}); building it by IIC's rule needs every label map, "
            f"but {missing_labels_error(root, folder, missing, len(everything))}"
        )
    print(f"{path}: absent; building it by IIC's rule (sides >= {CURATED_MIN_SIDE}, >= 75% stuff pixels)")
    selected, problems = build_curated(root, folder, everything)
    for problem in problems:
        print(f"  left out, unreadable: {problem}")
    if not selected:
        raise ValueError(f"{path}: no {folder} image meets the curated rule; use curated=False for all images")
    print(f"{path}: {len(selected)} of {len(everything)} images; built by the rule, not the official list")
    return selected


# ---- the data set ----------------------------------------------------------------------------------
class CocoStuff27(ImageFiles):
    """COCO-Stuff-27 as PiCIE reads it (``TrainCOCO`` / ``EvalCOCO``).

    ``mode="train"``: two views cut from the square base image (shorter side to ``base_res``, centre crop:
    PiCIE's ``BaseTransform(res2)``); labels are never read. ``mode="eval"``: the full image and its coarse
    label map (-1 = unlabeled); the base class resizes the shorter side to ``res`` and centre-crops.
    ``curated=False`` uses every image of the split; ``max_images`` keeps the first N (quick trials).
    In eval mode every image must have a label map: a missing one is an error here, not at load time.
    """

    class_names = COARSE_NAMES
    thing_classes = THING_CLASSES
    stuff_classes = STUFF_CLASSES
    label_table = LABEL_TABLE
    label_values, label_meaning = "0..181 and 255", "COCO-Stuff fine ids"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        mode: str = "train",
        res: int = 320,
        base_res: int = 640,
        curated: bool = True,
        max_images: int | None = None,
    ) -> None:
        super().__init__(mode, res)
        self.root, self.folder, self.base_size = Path(root), split_folder(split), base_res
        self.image_dir, self.label_dir = image_dir(self.root, self.folder), label_dir(self.root, self.folder)
        images = stems(self.image_dir, ".jpg")
        if not images:
            problem = "no .jpg images in it" if self.image_dir.is_dir() else "no such folder"
            raise FileNotFoundError(
                f"{self.image_dir}: {problem}; expected the COCO {self.folder} images: {image_source(self.folder)}"
            )
        ids = curated_ids(self.root, self.folder, images) if curated else sorted(images)
        absent = [i for i in ids if i not in images]
        if absent:
            raise FileNotFoundError(
                f"{self.image_dir / (absent[0] + '.jpg')}: missing ({len(absent)} of the {len(ids)} listed "
                f"{self.folder} images); expected the COCO images: {image_source(self.folder)}"
            )
        self.ids = ids[:max_images] if max_images else ids
        if mode == "eval":
            missing = ensure_labels(self.root, self.folder, self.ids)
            if missing:
                raise missing_labels_error(self.root, self.folder, missing, len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        return self.image_dir / f"{self.ids[index]}.jpg"

    def label_path(self, index: int) -> Path:
        return self.label_dir / f"{self.ids[index]}.png"
