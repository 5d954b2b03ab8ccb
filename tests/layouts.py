"""Tiny data sets written in the real on-disk layouts, for the tests.

- ``write_cocostuff``: COCO-Stuff as PiCIE lays it out (JPEGs, stuffthingmaps-style PNGs of fine ids,
  optional curated lists), or with the labels only as COCO JSON (RLE masks written by pycocotools).
- ``write_cityscapes``: leftImg8bit / gtFine labelIds PNGs.
- ``write_folder``: a folder of your own images, optional label PNGs and a class table.

Every writer returns what it wrote (paths, the exact label arrays), so that the tests can check the
loaders against their own computation. The scenes are hand-placed, not random, where a test depends on
them: the COCO scenes include images with >= 75% stuff and with fewer (for the curated rule), one whose
stuff is >= 75% of the labelled pixels but < 75% of all pixels (the rule counts unlabeled pixels), images
smaller than a 320 crop, a grayscale and a CMYK JPEG (COCO has both), 255 (unlabeled) pixels, and one
small thing on top of a larger one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

UNLABELED = 255


@dataclass
class CocoScene:
    """One COCO image: size, stuff bands, thing boxes (fractions of the sides), an unlabeled box."""

    height: int
    width: int
    stuff: tuple[int, ...]  # fine ids 91..181 of horizontal bands, top to bottom
    things: tuple[tuple[int, tuple[float, float, float, float]], ...] = ()  # (fine id 0..90, (y0, x0, y1, x1))
    unlabeled: tuple[float, float, float, float] | None = None
    mode: str = "RGB"  # JPEG colour mode: RGB, L (grayscale) or CMYK
    curated: bool = False  # what IIC's rule must decide (sides >= 360 and stuff >= 75% of all pixels)
    crowd: tuple[int, ...] = ()  # indices of ``things`` written as crowd regions (uncompressed RLE)


# Thing boxes are listed largest first: the JSON converter paints larger instances first, so a small one
# inside a large one stays on top; the PNG here is drawn in the same order.
COCO_SCENES = {
    "train2017": [
        CocoScene(400, 520, (156, 123), ((0, (0.5, 0.4, 0.8, 0.7)),), (0.0, 0.0, 0.1, 0.2), curated=True),
        CocoScene(480, 640, (148, 95), ((2, (0.2, 0.1, 0.9, 0.7)), (17, (0.4, 0.3, 0.6, 0.45))), crowd=(1,)),
        # stuff is 81% of the labelled pixels but 68% of all: not curated (the rule counts unlabeled pixels)
        CocoScene(380, 400, (170, 100), ((61, (0.0, 0.0, 0.4, 0.4)),), (0.6, 0.0, 1.0, 0.4)),
        CocoScene(300, 420, (154,), mode="L"),  # all stuff, but a side < 360: not curated; smaller than 320
        CocoScene(600, 400, (105, 168, 139), ((45, (0.85, 0.4, 0.95, 0.6)),), mode="CMYK", curated=True),
        CocoScene(48, 60, (134, 149), ((20, (0.3, 0.3, 0.7, 0.7)),)),  # tiny
    ],
    "val2017": [
        CocoScene(427, 640, (156, 172), ((0, (0.6, 0.45, 1.0, 0.6)),), (0.0, 0.9, 0.1, 1.0), curated=True),
        CocoScene(500, 375, (114, 97), ((56, (0.1, 0.1, 0.9, 0.9)),)),
        CocoScene(360, 360, (123,), ((8, (0.0, 0.0, 0.45, 0.5)),), mode="L", curated=True),  # 77.5% stuff
        CocoScene(240, 320, (141, 181), ((72, (0.2, 0.2, 0.5, 0.5)),)),  # smaller than 320 on one side
    ],
}


def _box(h: int, w: int, frac: tuple[float, float, float, float]) -> tuple[slice, slice]:
    y0, x0, y1, x1 = frac
    return slice(round(y0 * h), round(y1 * h)), slice(round(x0 * w), round(x1 * w))


def coco_fine(scene: CocoScene) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """The fine-id map (uint8 (H, W), 255 unlabeled) and the thing instances (fine id, mask) of a scene."""
    h, w = scene.height, scene.width
    fine = np.empty((h, w), dtype=np.uint8)
    edges = np.linspace(0, h, len(scene.stuff) + 1).round().astype(int)
    for fid, top, bottom in zip(scene.stuff, edges[:-1], edges[1:], strict=True):
        fine[top:bottom] = fid
    instances = []
    for fid, frac in scene.things:
        mask = np.zeros((h, w), dtype=bool)
        mask[_box(h, w, frac)] = True
        fine[mask] = fid
        instances.append((fid, mask))
    if scene.unlabeled:
        fine[_box(h, w, scene.unlabeled)] = UNLABELED
    return fine, [(fid, mask & (fine != UNLABELED)) for fid, mask in instances]


def picture(label: np.ndarray, seed: int) -> np.ndarray:
    """An RGB picture (uint8 (H, W, 3)) whose colours follow the label map, with a little noise."""
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(12345).integers(30, 226, size=(256, 3))
    noise = rng.integers(-12, 13, size=(*label.shape, 3))
    return np.clip(palette[label] + noise, 0, 255).astype(np.uint8)


def _save_jpeg(rgb: np.ndarray, path: Path, mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).convert(mode).save(path, format="JPEG", quality=95)


def _save_png(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (what crowd regions use): run lengths over the column-major pixels, from 0s."""
    flat = mask.flatten(order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat[0] == 1:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def compressed_rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _bbox(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]


def _write_coco_json(root: Path, folder: str, entries: list[tuple[int, CocoScene]]) -> None:
    images, stuff_anns, thing_anns = [], [], []
    for image_id, scene in entries:
        images.append(
            {"id": image_id, "file_name": f"{image_id:012d}.jpg", "height": scene.height, "width": scene.width}
        )
        fine, instances = coco_fine(scene)
        for fid in sorted(set(np.unique(fine).tolist()) - {UNLABELED}):
            if fid >= 91:  # stuff: one annotation per class, category id = fine + 1
                mask = fine == fid
                stuff_anns.append((image_id, fid + 1, mask, False))
        # COCO-Stuff's 'other' (183) merges all things; here it also covers the unlabeled box, whose pixels
        # no instance claims: they must stay 255
        other = (fine <= 90) | (fine == UNLABELED)
        if other.any():
            stuff_anns.append((image_id, 183, other, False))
        for k, (fid, mask) in enumerate(instances):
            thing_anns.append((image_id, fid + 1, mask, k in scene.crowd))

    def annotations(raw: list) -> list[dict]:
        out = []
        for n, (image_id, category, mask, crowd) in enumerate(raw, 1):
            segmentation = uncompressed_rle(mask) if crowd else compressed_rle(mask)
            out.append(
                {
                    "id": n,
                    "image_id": image_id,
                    "category_id": category,
                    "segmentation": segmentation,
                    "area": float(mask.sum()),
                    "bbox": _bbox(mask),
                    "iscrowd": int(crowd),
                }
            )
        return out

    def document(raw: list, categories: range) -> str:
        cats = [{"id": c, "name": f"category{c}", "supercategory": "x"} for c in categories]
        return json.dumps({"images": images, "annotations": annotations(raw), "categories": cats})

    annotations_dir = root / "annotations"
    annotations_dir.mkdir(parents=True, exist_ok=True)
    (annotations_dir / f"stuff_{folder}.json").write_text(document(stuff_anns, range(92, 184)))
    (annotations_dir / f"instances_{folder}.json").write_text(document(thing_anns, range(1, 91)))


@dataclass
class CocoLayout:
    root: Path
    ids: dict[str, list[str]] = field(default_factory=dict)  # folder -> 12-digit ids, sorted
    fine: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # folder -> id -> fine-id map
    scenes: dict[str, dict[str, CocoScene]] = field(default_factory=dict)

    def curated(self, folder: str) -> list[str]:
        """The ids the curated rule must select (as designed, see ``COCO_SCENES``)."""
        return [i for i in self.ids[folder] if self.scenes[folder][i].curated]


def write_cocostuff(
    root: Path, source: str = "png", curated_lists: dict[str, list[str]] | None = None, seed: int = 0
) -> CocoLayout:
    """COCO-Stuff in PiCIE's layout under ``root``: ``source="png"`` writes the label PNGs in
    ``annotations/<folder>/``, ``source="json"`` only ``annotations/{stuff,instances}_<folder>.json``.
    ``curated_lists`` (folder -> ids) are written as the official list files; None writes none."""
    assert source in ("png", "json")
    root = Path(root)
    layout = CocoLayout(root)
    for f_index, (folder, scenes) in enumerate(COCO_SCENES.items()):
        entries = [(139 + 1000 * f_index + 17 * k, scene) for k, scene in enumerate(scenes)]
        layout.ids[folder] = [f"{i:012d}" for i, _ in entries]
        layout.fine[folder], layout.scenes[folder] = {}, {}
        for image_id, scene in entries:
            stem = f"{image_id:012d}"
            fine, _ = coco_fine(scene)
            layout.fine[folder][stem], layout.scenes[folder][stem] = fine, scene
            _save_jpeg(picture(fine, seed + image_id), root / "images" / folder / f"{stem}.jpg", scene.mode)
            if source == "png":
                _save_png(fine, root / "annotations" / folder / f"{stem}.png")
        if source == "json":
            _write_coco_json(root, folder, entries)
        if curated_lists and folder in curated_lists:
            path = root / "curated" / folder / "Coco164kFull_Stuff_Coarse_7.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(f"{i}\n" for i in curated_lists[folder]))
    return layout


# ---- Cityscapes --------------------------------------------------------------------------------------
CITY_FOLDERS = {"train": 2, "val": 2, "test": 2, "train_extra": 3}  # images per folder (over two cities)


@dataclass
class CityscapesLayout:
    root: Path
    images: dict[str, list[Path]] = field(default_factory=dict)  # folder -> image paths, sorted
    label_ids: dict[Path, np.ndarray] = field(default_factory=dict)  # image path -> raw labelIds (val, train)


def write_cityscapes(root: Path, label_root: str = "gtFine", size: tuple[int, int] = (40, 80)) -> CityscapesLayout:
    """Cityscapes under ``root`` (images 1:2 like the real 1024 x 2048); labelIds PNGs for val and train
    (every id 0..33 occurs) under ``root/<label_root>``; test and train_extra get no fine labels."""
    root = Path(root)
    layout = CityscapesLayout(root)
    h, w = size
    rng = np.random.default_rng(7)
    for folder, n in CITY_FOLDERS.items():
        layout.images[folder] = []
        for k in range(n):
            city = ("aachen", "bremen")[k % 2]
            stem = f"{city}_{k:06d}_000019"
            ids = rng.integers(0, 34, size=(h // 4, w // 4)).repeat(4, 0).repeat(4, 1).astype(np.uint8)
            ids.flat[:34] = np.arange(34)  # every labelId at least once
            image_path = root / "leftImg8bit" / folder / city / f"{stem}_leftImg8bit.png"
            _save_png(picture(ids, k), image_path)
            layout.images[folder].append(image_path)
            if folder in ("val", "train"):
                _save_png(ids, root / label_root / folder / city / f"{stem}_gtFine_labelIds.png")
                layout.label_ids[image_path] = ids
        layout.images[folder].sort()
    return layout


# ---- a folder of your own images ----------------------------------------------------------------------
FOLDER_NAMES = ["sky", "grass", "dog", "ball"]
FOLDER_THINGS = [2, 3]


@dataclass
class FolderLayout:
    root: Path
    images: dict[str, list[Path]] = field(default_factory=dict)  # split ("all" without split folders) -> paths
    labels: dict[Path, np.ndarray] = field(default_factory=dict)  # image path -> raw label map


def write_folder(root: Path, splits: bool = False, labels: bool = True, table: str | None = "yaml") -> FolderLayout:
    """Images of several kinds (JPEG, .jpeg, grayscale JPEG, RGBA PNG, a nested folder, one smaller than a
    64 crop), optional label PNGs (ids 0..3, 255 = ignore) and a class table (``table``: yaml, json, None)."""
    root = Path(root)
    layout = FolderLayout(root)
    kinds = [  # relative path, (h, w), how to save
        ("beach.jpg", (90, 120), "RGB"),
        ("park/dog.jpeg", (100, 80), "RGB"),
        ("park/grey.jpg", (72, 96), "L"),
        ("park/deep/alpha.png", (80, 80), "RGBA"),
        ("small.png", (40, 50), "RGB"),
    ]
    for split in ("train", "val") if splits else ("all",):
        base = root / "images" / (split if splits else "")
        layout.images[split] = []
        for k, (rel, (h, w), mode) in enumerate(kinds):
            label = np.zeros((h, w), dtype=np.uint8)
            label[h // 2 :] = 1
            label[h // 4 : h // 2, w // 4 : w // 2] = 2
            label[-5:, -5:] = 3
            label[:3, :3] = 255
            rgb = picture(label, k)
            path = base / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if mode == "RGBA":
                alpha = np.full((h, w, 1), 128, dtype=np.uint8)
                Image.fromarray(np.concatenate([rgb, alpha], axis=2)).save(path)  # mode inferred: RGBA
            elif path.suffix == ".png":
                Image.fromarray(rgb).save(path)
            else:
                _save_jpeg(rgb, path, mode)
            layout.images[split].append(path)
            if labels:
                _save_png(label, (root / "labels" / (split if splits else "") / rel).with_suffix(".png"))
                layout.labels[path] = label
        layout.images[split].sort()
    content = {"names": FOLDER_NAMES, "things": FOLDER_THINGS}
    if table == "yaml":
        (root / "classes.yaml").write_text("names: [sky, grass, dog, ball]\nthings: [2, 3]\n")
    elif table == "json":
        (root / "table.json").write_text(json.dumps(content))
    return layout
