"""Reading images and label maps from disk, for every on-disk data set.

- ``read_image``: any image PIL decodes (RGB, L, 16-bit grey, P, RGBA, CMYK, ...) as RGB uint8 (3, H, W),
  optionally as PiCIE's square base image (``transforms.square_base``: shorter side to ``side``, centre crop).
- ``decode_images``: files' bytes as RGB uint8 (3, H, W) on a device: JPEGs by torchvision (in one batch by
  nvJPEG on a GPU; libjpeg on a CPU, PIL's pixels exactly), anything else, or a JPEG it refuses, by PIL.
- ``read_label``: a single-channel label PNG as an integer array (H, W).
- ``label_table`` / ``map_label``: raw label values to class ids through a lookup table; values the
  table does not allow raise ``BadFile``.

A file that is there but unusable (corrupt, truncated, a colour label map, bad values) raises
``BadFile`` naming it; a missing file raises ``FileNotFoundError``. Truncated files raise because PIL's
``ImageFile.LOAD_TRUNCATED_IMAGES`` is left at its default (False). EXIF orientation is not applied:
COCO's and Cityscapes' label maps are aligned with the stored pixels, as PiCIE reads them.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg

from picie_lib.data.base import IGNORE_INDEX, BadFile, SceneDataset, skip
from picie_lib.transforms import by_size, center_crop_resize, square_base

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# torchvision 0.29 announces that torchcodec takes over its image decoding; torchvision.io is what the GPU images
# ship with (nvJPEG included), so its notice would only repeat on every batch
warnings.filterwarnings("ignore", "The image decoding and encoding capabilities of TorchVision", DeprecationWarning)
NOT_ALLOWED = -2  # in a label table: a raw value that the data set never uses
# the most pixels an image or label map may have (PIL's decompression-bomb threshold, for every decoder): a file of a
# few MB can declare 65535 x 65535 pixels, 13 GB once decoded
MAX_PIXELS = Image.MAX_IMAGE_PIXELS


def check_pixels(path: Path | str, size: tuple[int, int], what: str) -> None:
    """``BadFile`` naming ``path`` when an image of ``size`` (width, height, from its header) exceeds ``MAX_PIXELS``."""
    width, height = size
    if width * height > MAX_PIXELS:
        raise BadFile(path, f"{width}x{height} = {width * height:,} pixels, over the limit of {MAX_PIXELS:,}", what)


def _open(path: Path, what: str, data: torch.Tensor | None = None) -> Image.Image:
    """Open and fully decode ``path``, from its bytes ``data`` if they were read already (decoding is where
    corrupt and truncated files fail; the error names ``path`` either way)."""
    try:
        with warnings.catch_warnings():  # PIL warns from MAX_PIXELS on, and check_pixels refuses there
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path if data is None else io.BytesIO(data.numpy().tobytes()))
        with img:
            check_pixels(path, img.size, what)  # from the header, before the pixels are decoded
            img.load()
            return img
    except FileNotFoundError:
        raise
    except UnidentifiedImageError as err:  # its own message names a BytesIO, not the file
        raise BadFile(path, "unreadable (UnidentifiedImageError: not an image format PIL knows)", what) from err
    except Image.DecompressionBombError as err:  # PIL refuses at open beyond twice the limit: the same words
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        counted = f"{int(pixels.group(1)):,} pixels" if pixels else "more pixels than twice the limit"
        raise BadFile(path, f"{counted}, over the limit of {MAX_PIXELS:,}", what) from err
    except (OSError, SyntaxError, ValueError) as err:
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


def to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB PIL image as uint8 (3, H, W)."""
    return torch.from_numpy(np.array(img, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def read_image(path: Path | str, base: int | None = None, data: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (3, H, W) RGB, decoded by PIL (from the file's bytes ``data`` if they were read already); with
    ``base``, the square base image of that side (``transforms.square_base``)."""
    path = Path(path)
    image = to_tensor(to_rgb(_open(path, "an image file PIL can decode (JPEG or PNG)", data), path))
    return image if base is None else square_base(image, base)


def read_bytes(path: Path | str) -> torch.Tensor:
    """A file's bytes as a uint8 tensor; a file that is there but cannot be read raises ``BadFile``."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise
    except OSError as err:
        raise BadFile(path, f"unreadable ({type(err).__name__}: {err})", "a readable image file") from err
    if not data:
        raise BadFile(path, "an empty file (0 bytes)", "an image file")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8)


def is_jpeg(data: torch.Tensor) -> bool:
    return data.dim() == 1 and len(data) > 3 and data[:3].tolist() == [0xFF, 0xD8, 0xFF]


SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # start of frame: baseline, progressive, ...


def jpeg_size(data: torch.Tensor) -> tuple[int, int]:
    """(width, height) a JPEG's frame header declares, read from its markers without decoding; (0, 0) where
    there is none (the decoder then names the file's problem)."""
    raw, at = data.numpy().tobytes(), 2
    while at + 9 <= len(raw) and raw[at] == 0xFF:
        marker, length = raw[at + 1], int.from_bytes(raw[at + 2 : at + 4], "big")
        if marker in SOF_MARKERS:
            return int.from_bytes(raw[at + 7 : at + 9], "big"), int.from_bytes(raw[at + 5 : at + 7], "big")
        at += 2 + length
    return 0, 0


# a RuntimeError that says the device failed, not the file: raised, never taken for a bad file
DEVICE_ERRORS = (torch.cuda.OutOfMemoryError, *([torch.AcceleratorError] if hasattr(torch, "AcceleratorError") else []))


def decode_images(encoded: list[torch.Tensor], paths: list[Path], device) -> list[torch.Tensor | BadFile]:
    """Images as RGB uint8 (3, H, W) on ``device``, or the ``BadFile`` of each file that cannot be used.
    ``encoded``: a JPEG file's bytes (``read_bytes``) or an image decoded already (moved as it is). The JPEGs
    are decoded by torchvision in one call (on a GPU by nvJPEG; on a CPU by libjpeg, PIL's pixels exactly); if
    that call fails (one bad file fails it), each on its own; one torchvision refuses (a CMYK one on a GPU, a
    truncated one) goes to PIL, whose verdict on the file counts (``read_image``, from the same bytes)."""
    out: list = [None] * len(encoded)
    jpegs = []
    for i, data in enumerate(encoded):
        if is_jpeg(data):
            try:
                check_pixels(paths[i], jpeg_size(data), "an image of at most that many pixels")
                jpegs.append(i)
            except BadFile as err:
                out[i] = err
    on_gpu = torch.device(device).type == "cuda"
    if jpegs and on_gpu:
        # nvJPEG's hardware engine can write its outputs, blocks the caching allocator has just recycled, before
        # the kernels queued on this stream have finished reading them: those kernels finish first
        torch.cuda.current_stream(device).synchronize()
    try:
        decoded = decode_jpeg([encoded[i] for i in jpegs], mode=ImageReadMode.RGB, device=device) if jpegs else []
        for i, image in zip(jpegs, decoded, strict=True):
            out[i] = image
    except RuntimeError as err:
        if isinstance(err, DEVICE_ERRORS):
            raise
        if on_gpu:  # a call that failed part-way may still be writing blocks it has given back
            torch.cuda.current_stream(device).synchronize()
        for i in jpegs:
            try:
                out[i] = decode_jpeg(encoded[i], mode=ImageReadMode.RGB, device=device)
            except RuntimeError as err:
                if isinstance(err, DEVICE_ERRORS):
                    raise
    for i, data in enumerate(encoded):
        if out[i] is None:
            try:
                out[i] = (data if data.dim() == 3 else read_image(paths[i], data=data)).to(device, non_blocking=True)
            except BadFile as err:
                out[i] = err
    return out


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


def check_same_size(image: torch.Tensor, label_size: tuple[int, int], label_path: Path | str, image_path: Path | str):
    """A label map of ``label_size`` (h, w) must have its image's size, else ``BadFile`` naming both."""
    if tuple(image.shape[-2:]) != tuple(label_size):
        (h, w), (lh, lw) = image.shape[-2:], label_size
        raise BadFile(label_path, f"a label map of {lw}x{lh} for the {w}x{h} image {image_path}", "the image's size")


def find_images(folder: Path) -> list[Path]:
    """Every .jpg/.jpeg/.png under ``folder`` (any depth, any case of the suffix), sorted."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


class ImageFiles(SceneDataset):
    """An on-disk data set: image files, and label PNGs mapped through ``label_table``.

    Subclasses set ``base_size`` (the side of the square training base), ``labelled``, ``label_table``,
    ``label_values`` (the raw values allowed, for messages) and ``label_meaning``, and implement
    ``image_path`` and ``label_path``.
    A worker reads the image file's bytes (``encoded``), and in eval mode the label map, decoded and mapped (PiCIE's
    training never reads labels); the images are decoded in batches on the network's device (``decode``).
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

    def checked_label(self, index: int, image: torch.Tensor) -> torch.Tensor | None:
        """``label_map``, which must have the decoded ``image``'s size (``BadFile`` naming both if not)."""
        label = self.label_map(index)
        if label is not None:
            check_same_size(image, label.shape, self.label_path(index), self.image_path(index))
        return label

    def label_map(self, index: int) -> torch.Tensor | None:
        """Item ``index``'s class ids, int64 (H, W), or None for a data set without labels."""
        if not self.labelled:
            return None
        path = self.label_path(index)
        return map_label(read_label(path), self.label_table, path, self.label_values, self.label_meaning)

    def encoded(self, index: int):
        """A JPEG's bytes (``read_bytes``; decoded in a batch, on the device), in eval mode with its label entry
        or the label file's ``BadFile`` (raised by ``check_label``, after the image's own errors). Any other
        format is decoded here, by PIL: the base image in train mode, the evaluation pair cut to ``res``."""
        path = self.image_path(index)
        data = read_bytes(path)
        if self.mode == "train":
            return data if is_jpeg(data) else read_image(path, base=self.base_size, data=data)
        if not is_jpeg(data):
            image = read_image(path, data=data)
            image, label = center_crop_resize(image, self.checked_label(index, image), self.res)
            return image, self.label_entry(label)
        try:
            return data, self.label_entry(self.label_map(index))
        except BadFile as err:
            return data, err

    def decode(self, indices: list[int], images: list, device) -> tuple[list[int], list[torch.Tensor], list]:
        """``encoded``'s images decoded on ``device``, the JPEGs in one batch (``decode_images``); a bad file is
        left out with a warning and returned as a ``SkippedItem``."""
        kept, decoded, skipped = [], [], []
        paths = [self.image_path(i) for i in indices]
        for index, image in zip(indices, decode_images(images, paths, device), strict=True):
            if isinstance(image, BadFile):
                skipped.append(skip(index, image))
            else:
                kept.append(index)
                decoded.append(image)
        return kept, decoded, skipped

    def bases(self, indices: list[int], images: list[torch.Tensor]) -> torch.Tensor:
        return by_size(images, lambda batch: square_base(batch, self.base_size))

    def check_label(self, index: int, image: torch.Tensor, entry) -> None:
        super().check_label(index, image, entry)
        if entry is not None:
            check_same_size(image, entry[1], self.label_path(index), self.image_path(index))

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One item decoded on the CPU as the passes decode it. Train mode: the square base image the views are
        cut from, no label (PiCIE's training never reads labels). Eval mode: the image and its class ids."""
        path = self.image_path(index)
        (image,) = decode_images([read_bytes(path)], [path], "cpu")
        if isinstance(image, BadFile):
            raise image
        if self.mode == "train":
            return square_base(image, self.base_size), None
        return image, self.checked_label(index, image)
