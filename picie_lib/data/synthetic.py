"""The built-in data set: procedural scenes with the 27 COCO-Stuff-27 classes (design section 4).

Each scene is a few large stuff regions (a warped Voronoi partition) with up to three thing
objects on top. Every class has its own texture (stripes, checks, dots, grids, waves, rings,
bricks, noise at some scale) and every thing class its own shape; colours are mostly random,
so class identity lies in texture and shape, and the photometric invariance has work to do.
Class frequencies are long-tailed (COCO-like order), at least 75% of the labelled pixels of
each image are stuff (the curated COCO rule), and a few images hold an unlabelled patch (-1).
Everything is a pure function of ``(seed, split, index)``.
"""

from __future__ import annotations

import colorsys
import functools
import math

import numpy as np
import torch
from scipy.ndimage import zoom

from picie_lib.data.base import IGNORE_INDEX, SceneDataset
from picie_lib.data.cocostuff_classes import COARSE_NAMES, STUFF_CLASSES, THING_CLASSES

REFERENCE_SIZE = 96  # texture periods below are in pixels of a 96-px image and scale with the size
MAX_THING_FRACTION = 0.25

# class -> (texture kind, parameters). Angles in degrees, periods in reference pixels.
TEXTURES: dict[int, tuple[str, dict]] = {
    0: ("stripes", {"angle": 135, "period": 5}),  # electronic
    1: ("grid", {"period": 6, "width": 1.5}),  # appliance
    2: ("dots", {"period": 5, "radius": 1.6}),  # food-things
    3: ("stripes", {"angle": 0, "period": 5}),  # furniture-things
    4: ("checker", {"angle": 0, "period": 4}),  # indoor
    5: ("rings", {"period": 5}),  # kitchen
    6: ("crosshatch", {"period": 5}),  # accessory
    7: ("waves", {"angle": 135, "period": 5}),  # animal
    8: ("stripes", {"angle": 90, "period": 6}),  # outdoor
    9: ("zigzag", {"period": 6}),  # person
    10: ("checker", {"angle": 45, "period": 4}),  # sports
    11: ("stripes", {"angle": 45, "period": 5}),  # vehicle
    12: ("grid", {"period": 12, "width": 2.0}),  # ceiling
    13: ("checker", {"angle": 0, "period": 8}),  # floor
    14: ("dots", {"period": 8, "radius": 2.5}),  # food-stuff
    15: ("stripes", {"angle": 90, "period": 10}),  # furniture-stuff
    16: ("crosshatch", {"period": 9}),  # rawmaterial
    17: ("waves", {"angle": 45, "period": 7}),  # textile
    18: ("bricks", {"period": 8}),  # wall
    19: ("grid", {"period": 22, "width": 3.0}),  # window
    20: ("checker", {"angle": 45, "period": 7}),  # building
    21: ("noise", {"scale": 1.5}),  # ground: fine grain
    22: ("noise", {"scale": 5}),  # plant: blobs
    23: ("plain", {}),  # sky: smooth gradient
    24: ("noise", {"scale": 14}),  # solid: large blobs
    25: ("stripes", {"angle": 45, "period": 10}),  # structural
    26: ("waves", {"angle": 0, "period": 9}),  # water
}
SHAPES = {
    0: "square",
    1: "tall_rect",
    2: "circle",
    3: "table",
    4: "triangle",
    5: "wide_ellipse",
    6: "diamond",
    7: "blob",
    8: "cross",
    9: "person",
    10: "star",
    11: "vehicle",
}

# COCO-like frequency order (most frequent first); probabilities fall as 1 / rank^0.9.
STUFF_ORDER = (22, 23, 18, 21, 20, 13, 25, 17, 15, 26, 24, 12, 14, 19, 16)
THING_ORDER = (9, 11, 3, 7, 2, 5, 10, 6, 8, 0, 4, 1)


def _zipf(order: tuple[int, ...], exponent: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    p = 1.0 / np.arange(1, len(order) + 1) ** exponent
    return np.array(order), p / p.sum()


STUFF_CLASS_IDS, STUFF_PROBS = _zipf(STUFF_ORDER)
THING_CLASS_IDS, THING_PROBS = _zipf(THING_ORDER)
# Class colours: hues spread by the golden ratio, two saturation and two brightness levels.
CLASS_HUES = {c: (c * 0.618034) % 1.0 for c in range(len(COARSE_NAMES))}
CLASS_SATS = {c: (0.45, 0.85)[c % 2] for c in range(len(COARSE_NAMES))}
CLASS_VALS = {c: (0.45, 0.75)[(c // 2) % 2] for c in range(len(COARSE_NAMES))}


def _smooth_noise(rng: np.random.Generator, size: int, cell: float) -> np.ndarray:
    """Zero-mean, unit-variance-ish noise with features of about ``cell`` pixels."""
    n = max(2, int(math.ceil(size / cell)) + 2)
    coarse = rng.standard_normal((n, n))
    fine = zoom(coarse, size / (n - 1), order=3)[:size, :size]
    return (fine - fine.mean()) / (fine.std() + 1e-8)


def _texture(kind: str, p: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """A 2-tone pattern ``t`` in [0, 1] of shape (size, size), at a random phase."""
    s = size / REFERENCE_SIZE
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    xx += rng.uniform(0, 100)
    yy += rng.uniform(0, 100)
    theta = math.radians(p.get("angle", 0) + rng.normal(0, 4))
    u = xx * math.cos(theta) + yy * math.sin(theta)
    v = -xx * math.sin(theta) + yy * math.cos(theta)
    period = p.get("period", 8) * s * rng.uniform(0.9, 1.1)

    def square(w: np.ndarray) -> np.ndarray:  # a slightly soft square wave of w in cycles
        return 1 / (1 + np.exp(-6 * np.sin(2 * np.pi * w)))

    if kind == "stripes":
        return square(u / period)
    if kind == "waves":
        return square((u + 0.35 * period * np.sin(2 * np.pi * v / (2.5 * period))) / period)
    if kind == "zigzag":
        return square((u + np.abs((v / period) % 2 - 1) * period) / period)
    if kind == "checker":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float64)
    if kind == "crosshatch":
        return np.maximum(square(u / period) * square(v / period), 0.0)
    if kind == "dots":
        du, dv = (u % period) - period / 2, (v % period) - period / 2
        return (du**2 + dv**2 < (p["radius"] * s) ** 2).astype(np.float64)
    if kind == "grid":
        w = max(1.0, p["width"] * s)
        return (((u % period) < w) | ((v % period) < w)).astype(np.float64)
    if kind == "bricks":
        row = np.floor(v / period)
        shifted = u + (row % 2) * period
        return (((v % period) < max(1.0, 1.5 * s)) | ((shifted % (2 * period)) < max(1.0, 1.5 * s))).astype(float)
    if kind == "rings":
        cx, cy = rng.uniform(-size, 2 * size, 2)
        r = np.hypot(xx - xx.min() - cx, yy - yy.min() - cy)
        return square(r / period)
    if kind == "noise":
        return (_smooth_noise(rng, size, p["scale"] * s) > 0).astype(np.float64)
    if kind == "plain":
        return np.clip(0.5 + 0.4 * (yy - yy.min()) / size - 0.2 + 0.05 * _smooth_noise(rng, size, 30 * s), 0, 1)
    raise ValueError(f"unknown texture {kind!r}")


def _shape_mask(shape: str, size: int, cx: float, cy: float, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean (size, size) mask of a thing's silhouette centred at (cx, cy)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    a = rng.normal(0, 0.2)  # a small random rotation
    u = ((xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)) / radius
    v = (-(xx - cx) * math.sin(a) + (yy - cy) * math.cos(a)) / radius
    r, phi = np.hypot(u, v), np.arctan2(v, u)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.8
    if shape == "tall_rect":
        return (np.abs(u) < 0.5) & (np.abs(v) < 0.95)
    if shape == "circle":
        return r < 0.9
    if shape == "table":
        top = (np.abs(v + 0.55) < 0.2) & (np.abs(u) < 0.95)
        legs = (np.abs(np.abs(u) - 0.75) < 0.14) & (v > -0.6) & (v < 0.95)
        return top | legs
    if shape == "triangle":
        return (v < 0.8) & (np.abs(u) < (v + 0.95) / 1.75 * 0.95)
    if shape == "wide_ellipse":
        return (u / 0.95) ** 2 + (v / 0.55) ** 2 < 1
    if shape == "diamond":
        return np.abs(u) + np.abs(v) < 0.95
    if shape == "blob":
        k1, k2 = rng.uniform(0, 2 * np.pi, 2)
        return r < 0.7 * (1 + 0.25 * np.sin(3 * phi + k1) + 0.15 * np.sin(5 * phi + k2))
    if shape == "cross":
        return ((np.abs(u) < 0.3) & (np.abs(v) < 0.95)) | ((np.abs(v) < 0.3) & (np.abs(u) < 0.95))
    if shape == "person":
        body = (u / 0.4) ** 2 + ((v - 0.25) / 0.7) ** 2 < 1
        head = np.hypot(u, v + 0.7) < 0.27
        return body | head
    if shape == "star":
        return r < 0.4 + 0.55 * np.clip(np.cos(5 * (phi - rng.uniform(0, 2 * np.pi))), 0, 1) ** 2
    if shape == "vehicle":
        body = (np.abs(u) < 0.95) & (np.abs(v) < 0.35)
        wheels = np.hypot(np.abs(u) - 0.55, v - 0.45) < 0.25
        return body | wheels
    raise ValueError(f"unknown shape {shape!r}")


def warped_voronoi(rng: np.random.Generator, size: int, n_regions: int) -> np.ndarray:
    """Region index per pixel: a Voronoi partition whose distances are warped by smooth noise."""
    centres = rng.uniform(0, size, (n_regions, 2))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    dist = np.stack(
        [np.hypot(xx - cx, yy - cy) + 0.25 * size * _smooth_noise(rng, size, size / 3) for cx, cy in centres]
    )
    return dist.argmin(0)


def two_tones(hue: float, sat: float, val: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An RGB colour and a lighter or darker tone of it (the two tones a texture alternates)."""
    val2 = float(np.clip(val + rng.choice([-1, 1]) * rng.uniform(0.2, 0.4), 0.05, 1.0))
    return np.array(colorsys.hsv_to_rgb(hue, sat, val)), np.array(colorsys.hsv_to_rgb(hue, sat, val2))


COLOUR_MODES = ("class", "instance")


def _colours(cls: int, rng: np.random.Generator, mode: str = "class") -> tuple[np.ndarray, np.ndarray]:
    """Two tones near the class's colour. Classes whose hues lie within PiCIE's hue jitter of each
    other (+-0.1) can only be told apart by texture and shape once the views are jittered.

    ``mode="class"``: every instance is close to its class's colour. ``mode="instance"``: colour is a
    nuisance within PiCIE's jitter range: each instance draws its hue within +-0.1 of the class's
    (ColorJitter hue=0.1) and scales its saturation and value by U(0.7, 1.3) (saturation and
    brightness 0.3), so that identity lies in texture and shape."""
    z_hue, z_sat, z_val = rng.normal(0, 1, 3)  # the same draws in both modes: the scene's layout is shared
    if mode == "instance":
        u_hue, u_sat, u_val = (0.5 * (1 + math.erf(z / math.sqrt(2))) for z in (z_hue, z_sat, z_val))  # U(0, 1)
        hue = (CLASS_HUES[cls] + 0.2 * u_hue - 0.1) % 1
        sat = float(np.clip(CLASS_SATS[cls] * (0.7 + 0.6 * u_sat), 0.1, 1))
        val = float(np.clip(CLASS_VALS[cls] * (0.7 + 0.6 * u_val), 0.15, 0.95))
    else:
        hue = (CLASS_HUES[cls] + 0.03 * z_hue) % 1
        sat = float(np.clip(CLASS_SATS[cls] + 0.08 * z_sat, 0.1, 1))
        val = float(np.clip(CLASS_VALS[cls] + 0.08 * z_val, 0.15, 0.95))
    return two_tones(hue, sat, val, rng)


def _paint(image: np.ndarray, mask: np.ndarray, cls: int, rng: np.random.Generator, colours: str) -> None:
    kind, params = TEXTURES[cls]
    t = _texture(kind, params, image.shape[0], rng)[mask][:, None]
    c1, c2 = _colours(cls, rng, colours)
    image[mask] = c1 * (1 - t) + c2 * t


def generate_scene(
    seed: int, split: str, index: int, size: int, colours: str = "class"
) -> tuple[np.ndarray, np.ndarray]:
    """One scene: uint8 image (size, size, 3) and int64 label (size, size), -1 = unlabelled.
    ``colours``: "class" or "instance" (see ``_colours``); the layout does not depend on it."""
    if colours not in COLOUR_MODES:
        raise ValueError(f"synthetic_colours={colours!r}: expected one of {COLOUR_MODES}")
    split_id = {"train": 0, "val": 1}[split]
    rng = np.random.default_rng([seed, split_id, index])
    image = np.zeros((size, size, 3))
    label = np.full((size, size), IGNORE_INDEX, dtype=np.int64)

    # Stuff: a Voronoi partition whose distances are warped by smooth noise (wobbly borders).
    n_regions = rng.choice([1, 2, 3, 4], p=[0.1, 0.35, 0.35, 0.2])
    classes = rng.choice(STUFF_CLASS_IDS, size=n_regions, replace=False, p=STUFF_PROBS)
    region = warped_voronoi(rng, size, n_regions)
    for r, cls in enumerate(classes):
        mask = region == r
        if mask.any():
            _paint(image, mask, int(cls), rng, colours)
            label[mask] = cls

    # Things: up to three objects, 30-50% of the side across, keeping >= 75% of the pixels stuff.
    n_things = rng.choice([0, 1, 2, 3], p=[0.05, 0.3, 0.4, 0.25])
    thing_pixels = np.zeros((size, size), dtype=bool)
    for cls in rng.choice(THING_CLASS_IDS, size=n_things, p=THING_PROBS):
        radius = rng.uniform(0.15, 0.25) * size
        cx, cy = rng.uniform(radius * 0.6, size - radius * 0.6, 2)
        mask = _shape_mask(SHAPES[int(cls)], size, cx, cy, radius, rng)
        if (thing_pixels | mask).mean() > MAX_THING_FRACTION:
            continue
        _paint(image, mask, int(cls), rng, colours)
        label[mask] = cls
        thing_pixels |= mask

    # Unlabelled pixels, as COCO has: now and then a small patch of clutter labelled -1.
    if rng.random() < 0.15:
        h, w = (rng.uniform(0.08, 0.16, 2) * size).astype(int) + 1
        top, left = rng.integers(0, size - h), rng.integers(0, size - w)
        image[top : top + h, left : left + w] = rng.uniform(0, 1, (h, w, 3))
        label[top : top + h, left : left + w] = IGNORE_INDEX

    image += rng.normal(0, 0.03, image.shape)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), label


@functools.lru_cache(maxsize=4)
def generate_scenes(
    n: int, size: int, seed: int, split: str, colours: str = "class"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` scenes as uint8 images (n, 3, size, size) and int8 labels (n, size, size); cached."""
    scenes = [generate_scene(seed, split, i, size, colours) for i in range(n)]
    images = torch.from_numpy(np.stack([s[0] for s in scenes])).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(np.stack([s[1] for s in scenes])).to(torch.int8)
    return images, labels


class SyntheticScenes(SceneDataset):
    """The built-in data set, generated in memory at construction.

    ``SyntheticScenes(n, size, seed, split, mode, res, colours)``; see ``SceneDataset`` for the modes
    and ``_colours`` for the colour modes.
    """

    class_names = COARSE_NAMES
    thing_classes = THING_CLASSES
    stuff_classes = STUFF_CLASSES

    def __init__(
        self,
        n: int,
        size: int,
        seed: int = 0,
        split: str = "train",
        mode: str = "eval",
        res: int | None = None,
        colours: str = "class",
    ) -> None:
        super().__init__(mode, res or size)
        if split not in ("train", "val"):
            raise ValueError(f"split={split!r}: expected 'train' or 'val'")
        self.images, self.labels = generate_scenes(n, size, seed, split, colours)
        self.base_size = size

    def __len__(self) -> int:
        return len(self.images)

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[index], self.labels[index].long()
