"""A folder of your own images, with optional label maps and a class table (design section 4).

Layout::

    ROOT/images/**/*.{jpg,jpeg,png}      any depth, sorted by path
    ROOT/labels/**/*.png                 optional: same relative path and stem as the image, class ids, 255 = ignore
    ROOT/classes.yaml                    the class table (or any YAML/JSON file given as ``class_table``)

Splits: if ``ROOT/images/train`` or ``ROOT/images/val`` exists, split "train"/"val" reads that folder
(and ``ROOT/labels/<split>``); otherwise both splits are the same images (cluster and score on one set).

The class table: ``names: [sky, road, car, ...]`` (class id = position) and ``things: [2, ...]`` (the ids
counted as things; the rest are stuff), e.g. ``{"names": ["sky", "road", "car"], "things": [2]}``. Eval
mode needs it when the split has labels. Without a table the classes are ``class0 .. class{K-1}`` (K =
``n_classes``), all stuff; without labels, eval items carry all-ignore labels (training and clustering
need none).
"""

from __future__ import annotations

import json
from pathlib import Path

from picie_lib.data.images import ImageFiles, find_images, label_table
from picie_lib.yaml_text import read_yaml

IGNORE_VALUE = 255
TABLE_FILE = "classes.yaml"
TABLE_HELP = "a YAML or JSON mapping: names: [class names, id = position], things: [ids of the thing classes]"


def load_class_table(path: str | Path) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """(names, thing ids) from a class table file, checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no class table; expected {TABLE_HELP}")
    text = path.read_text()
    try:
        table = json.loads(text) if path.suffix.lower() == ".json" else read_yaml(text, str(path))
    except (json.JSONDecodeError, ValueError) as err:
        raise ValueError(f"{path}: unreadable ({err}); expected {TABLE_HELP}") from err
    if not isinstance(table, dict) or set(table) - {"names", "things"}:
        extra = sorted(set(table) - {"names", "things"}) if isinstance(table, dict) else []
        raise ValueError(
            f"{path}: {'unknown keys ' + ', '.join(extra) if extra else 'not a mapping'}; expected {TABLE_HELP}"
        )
    names, things = table.get("names"), table.get("things", [])
    if not (isinstance(names, list) and names and all(isinstance(n, str) and n for n in names)):
        raise ValueError(f"{path}: names={names!r}; expected a non-empty list of class names")
    if len(set(names)) != len(names) or len(names) > IGNORE_VALUE:
        raise ValueError(f"{path}: expected distinct names, at most {IGNORE_VALUE} (255 means ignore)")
    if not (isinstance(things, list) and all(isinstance(t, int) and 0 <= t < len(names) for t in things)):
        raise ValueError(f"{path}: things={things!r}; expected a list of class ids in 0..{len(names) - 1}")
    return tuple(names), tuple(sorted(set(things)))


class FolderDataset(ImageFiles):
    """Your own images (see the module docstring for the layout, splits and class table).

    Train mode: square base image (shorter side to ``base_res``, centre crop, as PiCIE). Eval mode: the
    full image and its label map if the split has labels (else all-ignore); the base class resizes the
    shorter side to ``res`` and centre-crops. With labels, every image needs one (checked here).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        mode: str = "train",
        res: int = 320,
        base_res: int = 640,
        class_table: str | Path | None = None,
        max_images: int | None = None,
        n_classes: int = 27,
    ) -> None:
        super().__init__(mode, res)
        if split not in ("train", "val"):
            raise ValueError(f"split={split!r}: expected 'train' or 'val'")
        self.root, self.base_size = Path(root), base_res
        images_root = self.root / "images"
        split_dirs = any((images_root / s).is_dir() for s in ("train", "val"))
        self.image_dir = images_root / split if split_dirs else images_root
        self.label_dir = self.root / "labels" / (split if split_dirs else "")
        images = find_images(self.image_dir)
        if not images:
            raise FileNotFoundError(f"{self.image_dir}: no .jpg/.jpeg/.png images; expected ROOT/images/**/*.jpg")
        self.images = images[:max_images] if max_images else images
        self.labelled = self.label_dir.is_dir()

        table = Path(class_table) if class_table else self.root / TABLE_FILE
        if class_table or table.is_file():
            names, things = load_class_table(table)
        elif self.labelled and mode == "eval":
            raise FileNotFoundError(
                f"{table}: no class table for the labels in {self.label_dir}; expected {TABLE_HELP}"
            )
        else:
            names, things = tuple(f"class{i}" for i in range(n_classes)), ()
        self.class_names, self.thing_classes = names, things
        self.stuff_classes = tuple(c for c in range(len(names)) if c not in things)
        self.label_table = label_table({c: c for c in range(len(names))}, ignore=(IGNORE_VALUE,))
        self.label_values = f"0..{len(names) - 1} and {IGNORE_VALUE}"
        self.label_meaning = "class ids of the class table"

        if mode == "eval" and self.labelled:
            self.check_labels_exist(
                f"one PNG per image in {self.label_dir}, same relative path and stem, class ids, 255 = ignore"
            )

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, index: int) -> Path:
        return self.images[index]

    def label_path(self, index: int) -> Path:
        return (self.label_dir / self.images[index].relative_to(self.image_dir)).with_suffix(".png")
