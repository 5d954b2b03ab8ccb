"""Interactive exploration in JupyterLab (``interactive=True`` in the notebooks).

Headless runs never call this: the notebooks draw the same views as static figures first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from picie_lib.data.base import SkippedItem
from picie_lib.plots import add_class_key, add_key, image_grid, overlay, to_rgb

Predictor = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]

# Okabe & Ito's colour-blind-safe palette: blue, vermillion, reddish purple, on light grey.
FOUND, MISSED, INVENTED, ELSEWHERE = (0.0, 0.447, 0.698), (0.835, 0.369, 0.0), (0.8, 0.475, 0.655), (0.88, 0.88, 0.88)
FAILURE_KEY = (
    ("found: the class, predicted", FOUND),
    ("missed: the class, predicted as another", MISSED),
    ("invented: predicted, but another class", INVENTED),
    ("other pixels", ELSEWHERE),
)


def failure_map(prediction: np.ndarray, label: np.ndarray, cls: int) -> np.ndarray:
    """(H, W, 3): where class ``cls`` is found, missed, or invented (predicted where another labelled
    class is), in ``FAILURE_KEY``'s colours; unlabelled pixels count as none of them."""
    out = np.empty((*label.shape, 3))
    out[:] = ELSEWHERE
    out[(label == cls) & (prediction == cls)] = FOUND
    out[(label == cls) & (prediction != cls)] = MISSED
    out[(label != cls) & (label >= 0) & (prediction == cls)] = INVENTED
    return out


def image_iou(prediction: np.ndarray, label: np.ndarray, cls: int) -> float | None:
    """IoU (%) of class ``cls`` on one image's labelled pixels; None when the image neither holds nor
    predicts it."""
    labelled = label >= 0
    truth, predicted = (label == cls), (prediction == cls) & labelled
    union = int((truth | predicted).sum())
    return None if union == 0 else 100 * int((truth & predicted).sum()) / union


class ClassIndex:
    """Which classes each image of an eval-mode data set holds, read lazily (one image at a time)."""

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self._classes: dict[int, set[int]] = {}

    def classes_of(self, index: int) -> set[int]:
        if index not in self._classes:
            item = self.dataset[index]
            labels = set() if isinstance(item, SkippedItem) else set(np.unique(item[2].numpy()).tolist())
            self._classes[index] = {c for c in labels if c >= 0}
        return self._classes[index]

    def step(self, cls: int, start: int, direction: int = 1) -> int | None:
        """The next image after ``start`` (previous with ``direction=-1``, wrapping) that holds ``cls``."""
        n = len(self.dataset)
        for offset in range(1, n + 1):
            index = (start + direction * offset) % n
            if cls in self.classes_of(index):
                return index
        return None


class BatchPredictions:
    """Every predictor's classes for image ``i`` of ``dataset`` (``predictions(i)``; None for a bad file),
    predicted within its evaluation batch of ``batch_size`` (BatchNorm uses batch statistics) and kept."""

    def __init__(self, dataset, predictors: dict[str, Predictor], batch_size: int) -> None:
        self.dataset, self.predictors, self.batch_size = dataset, predictors, batch_size
        self.cache: dict[int, dict] = {}

    def __call__(self, i: int) -> dict | None:
        start = i - i % self.batch_size
        if start not in self.cache:
            items = [self.dataset[j] for j in range(start, min(start + self.batch_size, len(self.dataset)))]
            usable = {item[0]: item for item in items if not isinstance(item, SkippedItem)}
            self.cache[start] = {}
            if usable:
                images = torch.stack([item[1] for item in usable.values()])
                size = tuple(next(iter(usable.values()))[2].shape)
                preds = {m: p(images, size) for m, p in self.predictors.items()}
                self.cache[start] = {j: {m: preds[m][k].numpy() for m in preds} for k, j in enumerate(usable)}
        return self.cache[start].get(i)


def panel_title(method: str, pred: np.ndarray, label: np.ndarray, cls: int, per_class: dict | None) -> str:
    """A method's panel title: its share of right pixels on this image, or, with class ``cls`` picked
    (``cls >= 0``), its IoU for the class here and on the whole data set (``per_class``)."""
    if cls < 0:
        labelled = label >= 0
        return f"{method}\n{100 * (pred[labelled] == label[labelled]).mean():.0f}% of pixels right here"
    here = image_iou(pred, label, cls)
    text = f"{method}\nIoU here " + ("-" if here is None else f"{here:.0f}")
    if per_class and method in per_class:
        text += f", data set {per_class[method][cls]['iou_all']:.0f}"
    return text


def browse(dataset, predictors: dict[str, Predictor], per_class: dict[str, Sequence[dict]] | None = None, batch_size=1):
    """A slider over the images of an eval-mode ``dataset`` and a class picker: the image, its label
    and every predictor's classes as overlays, with the classes' key; with a class picked, where each
    method finds, misses or invents it (``FAILURE_KEY``), its IoU on this image beside its IoU on the
    whole data set (``per_class``), and buttons that jump to the previous or next image holding it.
    Each image is predicted within its evaluation batch (``batch_size`` = ``eval_batch_size``:
    BatchNorm uses batch statistics)."""
    import ipywidgets as widgets
    from IPython.display import display

    names = dataset.class_names
    index = widgets.IntSlider(0, 0, len(dataset) - 1, description="image")
    cls = widgets.Dropdown(options=[("(all classes)", -1)] + [(n, c) for c, n in enumerate(names)], description="class")
    previous = widgets.Button(description="◀ previous with it", disabled=True)
    following = widgets.Button(description="next with it ▶", disabled=True)
    status, out = widgets.Label(), widgets.Output()
    predictions = BatchPredictions(dataset, predictors, batch_size)
    holding = ClassIndex(dataset)

    def draw(*_):
        item = dataset[index.value]
        previous.disabled = following.disabled = cls.value < 0
        with out:
            out.clear_output(wait=True)
            if isinstance(item, SkippedItem):
                print(f"left out of every pass: {item.reason}")
                return
            _, image, label = item
            preds, label, rgb = predictions(index.value), label.numpy(), to_rgb(image)
            row, titles = [rgb, overlay(rgb, label, len(names))], ["image", "ground truth"]
            for m, pred in preds.items():
                row.append(overlay(rgb, pred, len(names)) if cls.value < 0 else failure_map(pred, label, cls.value))
                titles.append(panel_title(m, pred, label, cls.value, per_class))
            fig = image_grid([row], titles)
            if cls.value < 0:
                add_class_key(fig, [label, *preds.values()], names, dataset.thing_classes)
            else:
                add_key(fig, FAILURE_KEY, f"{names[cls.value]} on this image", ncol=2)
            display(fig)
            plt.close(fig)

    def jump(direction: int):
        def go(_):
            found = holding.step(cls.value, index.value, direction)
            status.value = f"no image holds {names[cls.value]}" if found is None else ""
            if found is not None:
                index.value = found

        return go

    index.observe(draw, "value")
    cls.observe(draw, "value")
    previous.on_click(jump(-1))
    following.on_click(jump(1))
    draw()
    box = widgets.VBox([widgets.HBox([index, cls]), widgets.HBox([previous, following, status]), out])
    display(box)
    return box
