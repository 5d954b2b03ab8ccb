"""Reading images and label maps from disk, for every on-disk data set.

- ``read_image``: any image PIL decodes (RGB, L, 16-bit grey, P, RGBA, CMYK, ...) as RGB uint8 (3, H, W),
  optionally as PiCIE's square base image (``square_base``: shorter side to ``side``, centre crop).
- ``read_label``: a single-channel label PNG as an integer array (H, W).
- ``label_table`` / ``map_label``: raw label values to class ids through a lookup table; values the
  table does not allow raise ``BadFile``.

A file that is there but unusable (corrupt, truncated, a colour label map, bad values) raises
``BadFile`` naming it; a missing file raises ``FileNotFoundError``. Truncated files raise because PIL's
``ImageFile.LOAD_TRUNCATED_IMAGES`` is left at its default (False). EXIF orientation is not applied:
COCO's and Cityscapes' label maps are aligned with the stored pixels, as PiCIE reads them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from picie_lib.data.base import IGNORE_INDEX, BadFile, SceneDataset

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
NOT_ALLOWED = -2  # in a label table: a raw value that the data set never uses


def _open(path: Path, what: str) -> Image.Image:
    """Open and fully decode ``path`` (decoding is where corrupt and truncated files fail)."""
    try:
        with Image.open(path) as img:
            img.load()
            return img
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadFile(path, f"unreadable ({type(err).__name__}: {err})", what) from err


def to_rgb(img: Image.Image, path: Path | str = "<image>") -> Image.Image:
    """Any PIL mode to RGB. Alpha is dropped (PiCIE's ``convert('RGB')``); 16/32-bit grey is scaled to 8 bits."""
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        grey = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16") or grey.max(initial=0) > 255:
            grey = grey / 257  # 0..65535 -> 0..255
        img = Image.fromarray(np.clip(grey.round(), 0, 255).astype(np.uint8))
    elif img.mode == "P":
        img = img.convert("RGBA")  # a palette with transparency converts cleanly only through RGBA
    try:
        return img.convert("RGB")
    except ValueError as err:
        raise BadFile(path, f"an image of mode {img.mode} that PIL cannot convert to RGB", "an RGB image") from err


def square_base(img: Image.Image, side: int) -> Image.Image:
    """PiCIE's ``BaseTransform(res2)``: shorter side to ``side`` (bilinear), then a centre ``side`` x ``side``
    crop, with torchvision's rounding (longer side ``int(side * long / short)``, offsets ``round(d / 2)``)."""
    w, h = img.size
    if w <= h:
        new_w, new_h = side, int(side * h / w)
    else:
        new_w, new_h = int(side * w / h), side
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BILINEAR)
    left, top = int(round((new_w - side) / 2.0)), int(round((new_h - side) / 2.0))
    return img.crop((left, top, left + side, top + side))


def to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image as uint8 (3, H, W)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def read_image(path: Path | str, base: int | None = None, pil: bool = False) -> torch.Tensor | Image.Image:
    """uint8 (3, H, W) RGB, or the RGB PIL image if ``pil``; with ``base``, the square base image of that
    side (``square_base``)."""
    path = Path(path)
    img = to_rgb(_open(path, "an image file PIL can decode (JPEG or PNG)"), path)
    if base is not None:
        img = square_base(img, base)
    return img if pil else to_tensor(img)


def image_size(path: Path | str) -> tuple[int, int]:
    """(width, height) from the header only."""
    try:
        with Image.open(path) as img:
            return img.size
    except FileNotFoundError:
        raise
    except (OSError, SyntaxError, ValueError) as err:
        raise BadFile(path, f"unreadable ({type(err).__name__}: {err})", "an image file PIL can decode") from err


def read_label(path: Path | str) -> np.ndarray:
    """A single-channel label PNG (8- or 16-bit grey, or palette indices) as an integer array (H, W)."""
    path = Path(path)
    img = _open(path, "a single-channel PNG of class ids")
    if img.mode in ("L", "P", "1") or img.mode.startswith("I"):
        return np.asarray(img).astype(np.int64)
    raise BadFile(path, f"a label image of mode {img.mode} ({len(img.getbands())} channels)", "a single-channel PNG")


def label_table(mapping: Mapping[int, int], ignore: Iterable[int] = (255,), size: int = 256) -> np.ndarray:
    """A lookup table raw value -> class id: ``mapping`` plus ``ignore`` values -> -1, the rest not allowed."""
    table = np.full(size, NOT_ALLOWED, dtype=np.int64)
    for raw, cls in mapping.items():
        table[raw] = cls
    for raw in ignore:
        table[raw] = IGNORE_INDEX
    return table


def map_label(raw: np.ndarray, table: np.ndarray, path: Path | str, allowed: str, expected: str) -> torch.Tensor:
    """``table[raw]`` as int64 (H, W); raw values the table does not allow raise ``BadFile`` listing them."""
    if raw.size and (raw.min() < 0 or raw.max() >= len(table)):
        bad = np.unique(raw[(raw < 0) | (raw >= len(table))])
    else:
        bad = np.unique(raw[table[raw] == NOT_ALLOWED])
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
        raise BadFile(path, f"label values {{{shown}}} outside {allowed}", expected)
    return torch.from_numpy(table[raw])


def check_same_size(image: torch.Tensor, label: np.ndarray, label_path: Path | str, image_path: Path | str) -> None:
    if tuple(image.shape[-2:]) != tuple(label.shape):
        (h, w), (lh, lw) = image.shape[-2:], label.shape
        raise BadFile(label_path, f"a label map of {lw}x{lh} for the {w}x{h} image {image_path}", "the image's size")


def find_images(folder: Path) -> list[Path]:
    """Every .jpg/.jpeg/.png under ``folder`` (any depth, any case of the suffix), sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class ImageFiles(SceneDataset):
    """An on-disk data set: image files, and label PNGs mapped through ``label_table``.

    Subclasses set ``base_size`` (the side of the square training base), ``labelled``, ``label_table``,
    ``label_values`` (the raw values allowed, for messages) and ``label_meaning``, and implement
    ``image_path`` and ``label_path``.
    Train mode reads the square base image only (PiCIE's training never reads labels), as a PIL image.
    """

    labelled: bool = True
    label_table: np.ndarray
    label_values: str = ""
    label_meaning: str = ""

    def image_path(self, index: int) -> Path:
        raise NotImplementedError

    def label_path(self, index: int) -> Path:
        raise NotImplementedError

    def check_labels_exist(self, expected: str) -> None:
        """Eval mode: every image needs its label map, checked when the data set is built (a missing
        one is an error naming it and ``expected``: where it goes and where it comes from)."""
        missing = [p for p in map(self.label_path, range(len(self))) if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"{missing[0]}: missing ({len(missing)} of {len(self)} images have no label map); expected {expected}"
            )

    def load(self, index: int) -> tuple[torch.Tensor | Image.Image, torch.Tensor | None]:
        if self.mode == "train":  # PIL in, PIL out: the views are cut by PIL (``geometric_views``)
            return read_image(self.image_path(index), base=self.base_size, pil=True), None
        image = read_image(self.image_path(index))
        if not self.labelled:
            return image, None
        path = self.label_path(index)
        raw = read_label(path)
        check_same_size(image, raw, path, self.image_path(index))
        return image, map_label(raw, self.label_table, path, self.label_values, self.label_meaning)
