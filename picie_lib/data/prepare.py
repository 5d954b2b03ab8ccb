"""``python -m picie_lib prepare {cocostuff,cityscapes,folder} ROOT``: check an on-disk data set before a run.

Each ``prepare_*`` function prints what it finds and returns a report::

    {"dataset": ..., "root": ..., "splits": {name: {counts}}, "notes": [...], "problems": [...], "ok": bool}

A problem names the path expected and where it comes from; a note is something done or worth knowing
(label maps drawn from the JSON, a curated list built by the rule). For COCO-Stuff it also does the
one-off work: label PNGs from the COCO JSON when only that is there, curated lists by IIC's rule when the
official files are absent. ``verify=True`` decodes every image and label map that a run would read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from picie_lib.data import cityscapes, cocostuff
from picie_lib.data.base import BadFile
from picie_lib.data.folder import TABLE_FILE, TABLE_HELP, FolderDataset, load_class_table
from picie_lib.data.images import find_images, image_size
from picie_lib.progress import progress


class Report:
    """What ``prepare`` found: printed line by line, returned as a dict."""

    def __init__(self, dataset: str, root: Path) -> None:
        self.data = {"dataset": dataset, "root": str(root), "splits": {}, "notes": [], "problems": []}
        print(f"{dataset} at {root}")

    def count(self, split: str, **counts) -> None:
        self.data["splits"].setdefault(split, {}).update(counts)

    def note(self, text: str) -> None:
        self.data["notes"].append(text)
        print(f"  note: {text}")

    def problem(self, text: str) -> None:
        self.data["problems"].append(text)
        print(f"  MISSING OR UNREADABLE: {text}")

    def finish(self, dataset_key: str) -> dict:
        for split, counts in self.data["splits"].items():
            print(f"  {split}: " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in counts.items()))
        self.data["ok"] = not self.data["problems"]
        if self.data["ok"]:
            print(f"ready: -p dataset={dataset_key} -p data_root={self.data['root']}")
        else:
            print(f"{len(self.data['problems'])} problem(s); fix them and run prepare again")
        return self.data


def _verify(report: Report, what: str, load: Callable[[int], object], n: int, limit: int = 20) -> None:
    """Decode items 0..n-1 with ``load``; each unusable file becomes a problem (the first ``limit`` shown)."""
    bad = 0
    for i in progress(range(n), f"verify {what}"):
        try:
            load(i)
        except BadFile as err:
            bad += 1
            if bad <= limit:
                report.problem(str(err))
    if bad > limit:
        report.problem(f"{what}: {bad - limit} more unusable files")


def _peek(report: Report, *paths: Path) -> None:
    """Read the header of a sample of files (cheap; ``verify`` decodes them all)."""
    for path in paths:
        try:
            image_size(path)
        except (BadFile, FileNotFoundError) as err:
            report.problem(str(err))


# ---- COCO-Stuff-27 ---------------------------------------------------------------------------------
def prepare_cocostuff(root: str | Path, verify: bool = False, curated: bool = True) -> dict:
    """Check the COCO-Stuff layout; draw label PNGs from the JSON and build curated lists where needed.
    ``curated`` is the run's setting: True checks (and verifies) the curated images, False every image."""
    root = Path(root)
    report = Report("cocostuff27", root)
    if not root.is_dir():
        report.problem(f"{root}: no such folder; expected the data root holding images/, annotations/, curated/")
    for split, folder in cocostuff.SPLIT_FOLDERS.items():
        if curated:
            _prepare_coco_split(report, root, split, folder, verify)
        else:
            _prepare_coco_whole_split(report, root, split, folder, verify)
    return report.finish("cocostuff27")


def _read_curated_list(
    report: Report, path: Path, folder: str, images: set[str], image_dir: Path
) -> tuple[list[str] | None, str]:
    """``(ids, what they are)`` of the curated list at ``path``, or ``(None, "")`` when it is absent or
    unreadable (a problem reported); curated images missing from ``image_dir`` are reported."""
    if not path.is_file():
        return None, ""
    try:
        ids = cocostuff.read_curated(path)
    except ValueError as err:
        report.problem(str(err))
        return None, ""
    official = cocostuff.OFFICIAL_CURATED_COUNTS[folder]
    absent = [i for i in ids if i not in images]
    if images and absent:
        report.problem(
            f"{image_dir / (absent[0] + '.jpg')}: missing ({len(absent):,} of the {len(ids):,} curated "
            f"images); {cocostuff.image_source(folder)}"
        )
    return ids, "the official count" if len(ids) == official else f"not the official {official:,}"


def _prepare_coco_split(report: Report, root: Path, split: str, folder: str, verify: bool) -> None:
    image_dir, label_dir = cocostuff.image_dir(root, folder), cocostuff.label_dir(root, folder)
    images = cocostuff.stems(image_dir, ".jpg")
    if not images:
        report.problem(f"{image_dir}: no .jpg images; {cocostuff.image_source(folder)}")
    labels_before = cocostuff.stems(label_dir, ".png")
    has_labels = bool(labels_before) or cocostuff.has_json(root, folder)
    if not has_labels:
        report.problem(f"{label_dir}: no .png label maps; {cocostuff.label_source(folder)}")

    path = cocostuff.curated_path(root, folder)
    ids, source = _read_curated_list(report, path, folder, images, image_dir)

    # Label maps of the images a run reads (all of them when the curated list is still to be built).
    needed = ids if ids is not None else sorted(images)
    missing = cocostuff.ensure_labels(root, folder, needed) if has_labels else needed
    labels = cocostuff.stems(label_dir, ".png")
    if len(labels) > len(labels_before):
        report.note(f"drew {len(labels) - len(labels_before):,} label maps from the COCO JSON into {label_dir}")
    if missing and has_labels:
        report.problem(str(cocostuff.missing_labels_error(root, folder, missing, len(needed))))

    if ids is None and not path.is_file():
        if images and not missing:
            ids, unreadable = cocostuff.build_curated(root, folder, needed)
            for problem in unreadable:
                report.problem(problem)
            source = "built by IIC's rule, not the official list"
            report.note(f"{path}: absent, so built by IIC's rule (sides >= 360 px, >= 75% of all pixels stuff)")
            if not ids:
                report.problem(f"{path}: no {folder} image meets the curated rule")
        else:
            report.problem(
                f"{path}: missing; {cocostuff.CURATED_SOURCE}, or built here by IIC's rule once the images and "
                "label maps are in"
            )

    counts = {"images": len(images), "label_maps": len(labels)}
    if ids:
        counts["curated"] = len(ids)
        print(f"  {folder}: curated list of {len(ids):,} images ({source})")
        usable = [i for i in ids if i in images and i in labels]
        if usable and not verify:
            _peek(report, image_dir / f"{usable[0]}.jpg", label_dir / f"{usable[0]}.png")
        if verify and len(usable) == len(ids):
            dataset = cocostuff.CocoStuff27(root, split, "eval")
            _verify(report, f"{folder} images and labels", dataset.load, len(dataset))
    report.count(folder, **counts)


def _prepare_coco_whole_split(report: Report, root: Path, split: str, folder: str, verify: bool) -> None:
    """``curated=false``: a run reads every image of the split and its label map."""
    image_dir, label_dir = cocostuff.image_dir(root, folder), cocostuff.label_dir(root, folder)
    images = sorted(cocostuff.stems(image_dir, ".jpg"))
    if not images:
        report.problem(f"{image_dir}: no .jpg images; {cocostuff.image_source(folder)}")
    labels_before = cocostuff.stems(label_dir, ".png")
    if not labels_before and not cocostuff.has_json(root, folder):
        report.problem(f"{label_dir}: no .png label maps; {cocostuff.label_source(folder)}")
        missing = images
    else:
        missing = cocostuff.ensure_labels(root, folder, images)
        if missing:
            report.problem(str(cocostuff.missing_labels_error(root, folder, missing, len(images))))
    labels = cocostuff.stems(label_dir, ".png")
    if len(labels) > len(labels_before):
        report.note(f"drew {len(labels) - len(labels_before):,} label maps from the COCO JSON into {label_dir}")
    report.note(f"{folder}: curated=false, so every image of the split is read (the curated list is not used)")
    if images and not missing:
        if verify:
            dataset = cocostuff.CocoStuff27(root, split, "eval", curated=False)
            _verify(report, f"{folder} images and labels (all, curated=false)", dataset.load, len(dataset))
        else:
            _peek(report, image_dir / f"{images[0]}.jpg", label_dir / f"{images[0]}.png")
    report.count(folder, images=len(images), label_maps=len(labels))


# ---- Cityscapes-27 ---------------------------------------------------------------------------------
def prepare_cityscapes(root: str | Path, verify: bool = False) -> dict:
    """Check the Cityscapes layout PiCIE uses: leftImg8bit/{test,train_extra,val,train}, gtFine/{val,train}."""
    root = Path(root)
    report = Report("cityscapes27", root)
    for split, folders in cityscapes.SPLIT_FOLDERS.items():
        found, absent = cityscapes.split_images(root, split)
        for folder in absent:
            text = (
                f"{root / 'leftImg8bit' / folder}: missing; expected <city>/*{cityscapes.IMAGE_SUFFIX} from "
                f"{cityscapes.SOURCES[folder]}, {cityscapes.SITE}"
            )
            if folder == "train_extra":  # PiCIE trains on test + train_extra; without the 44 GB zip, on test only
                report.note(text + "; training uses test only")
            else:
                report.problem(text)
        for folder in folders:
            report.count(f"leftImg8bit/{folder}", images=sum(1 for f, _ in found if f == folder))
        if split == "val" and found:
            missing = [p for p in (cityscapes.label_path_for(root, f, img) for f, img in found) if not p.is_file()]
            if missing:
                report.problem(
                    f"{missing[0]}: missing ({len(missing):,} of {len(found):,} val + train images have no fine label "
                    f"map); expected gtFine/<split>/<city>/*{cityscapes.LABEL_SUFFIX} under {root} or "
                    f"{root / 'annotations'}, from {cityscapes.SOURCES['gtFine']}"
                )
            elif not verify:
                _peek(report, found[0][1], cityscapes.label_path_for(root, *found[0]))
            else:
                dataset = cityscapes.Cityscapes27(root, "val", "eval")
                _verify(report, "val + train images and labels", dataset.load, len(dataset))
        elif found and verify:
            dataset = cityscapes.Cityscapes27(root, split, "eval")
            _verify(report, "test + train_extra images", dataset.load, len(dataset))
    return report.finish("cityscapes27")


# ---- a folder of your own images --------------------------------------------------------------------
def prepare_folder(root: str | Path, class_table: str | Path | None = None, verify: bool = False) -> dict:
    """Check ROOT/images (and ROOT/labels, the class table) as ``FolderDataset`` reads them."""
    root = Path(root)
    report = Report("folder", root)
    table = Path(class_table) if class_table else root / TABLE_FILE
    if class_table or table.is_file():
        try:
            names, things = load_class_table(table)
            print(f"  class table {table}: {len(names)} classes, things {list(things)}")
        except (ValueError, FileNotFoundError) as err:
            report.problem(str(err))
    if (root / "labels").is_dir() and not (class_table or table.is_file()):
        report.problem(f"{table}: no class table for the labels in {root / 'labels'}; expected {TABLE_HELP}")
    split_dirs = any((root / "images" / s).is_dir() for s in ("train", "val"))
    if not split_dirs:
        report.note("no images/train or images/val: both splits are the same images")
    for split in ("train", "val") if split_dirs else ("train",):
        image_root = root / "images" / (split if split_dirs else "")
        label_root = root / "labels" / (split if split_dirs else "")
        images = find_images(image_root)
        if not images:
            report.problem(f"{image_root}: no .jpg/.jpeg/.png images")
            continue
        counts = {"images": len(images)}
        if label_root.is_dir():
            missing = [p for p in images if not (label_root / p.relative_to(image_root)).with_suffix(".png").is_file()]
            counts["label_maps"] = len(images) - len(missing)
            if missing:
                expected = (label_root / missing[0].relative_to(image_root)).with_suffix(".png")
                report.problem(f"{expected}: missing ({len(missing):,} of {len(images):,} images have no label map)")
        report.count(str(image_root.relative_to(root)), **counts)
        if verify and not report.data["problems"]:
            dataset = FolderDataset(root, split, "eval", class_table=class_table)
            _verify(report, f"{split} images and labels", dataset.load, len(dataset))
    return report.finish("folder")


PREPARE = {"cocostuff": prepare_cocostuff, "cityscapes": prepare_cityscapes, "folder": prepare_folder}
