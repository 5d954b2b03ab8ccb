"""COCO-Stuff-27: the 27 coarse classes (cocostuff27.md). Coarse 0..11 are things, 12..26 stuff."""

from __future__ import annotations

COARSE_NAMES = (
    "electronic-things",
    "appliance-things",
    "food-things",
    "furniture-things",
    "indoor-things",
    "kitchen-things",
    "accessory-things",
    "animal-things",
    "outdoor-things",
    "person-things",
    "sports-things",
    "vehicle-things",
    "ceiling-stuff",
    "floor-stuff",
    "food-stuff",
    "furniture-stuff",
    "rawmaterial-stuff",
    "textile-stuff",
    "wall-stuff",
    "window-stuff",
    "building-stuff",
    "ground-stuff",
    "plant-stuff",
    "sky-stuff",
    "solid-stuff",
    "structural-stuff",
    "water-stuff",
)
FIRST_STUFF_INDEX = 12
THING_CLASSES = tuple(range(FIRST_STUFF_INDEX))
STUFF_CLASSES = tuple(range(FIRST_STUFF_INDEX, len(COARSE_NAMES)))
