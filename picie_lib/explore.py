"""Interactive exploration in JupyterLab (``interactive=True`` in the notebooks).

Headless runs never call this: the notebooks draw the same views as static figures first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from picie_lib.data.base import SkippedItem
from picie_lib.plots import image_grid, overlay, to_rgb

Predictor = Callable[[torch.Tensor, tuple[int, int]], torch.Tensor]


def failure_map(prediction: np.ndarray, label: np.ndarray, cls: int) -> np.ndarray:
    """(H, W, 3): green where class ``cls`` is found, red where it is missed, blue where it is
    predicted but absent; grey elsewhere."""
    out = np.full((*label.shape, 3), 0.85)
    out[(label == cls) & (prediction == cls)] = (0.1, 0.7, 0.2)
    out[(label == cls) & (prediction != cls)] = (0.9, 0.1, 0.1)
    out[(label != cls) & (label >= 0) & (prediction == cls)] = (0.1, 0.3, 0.9)
    return out


def browse(
    dataset,
    predictors: dict[str, Predictor],
    per_class: dict[str, Sequence[dict]] | None = None,
    batch_size: int = 1,
):
    """A slider over the images of an eval-mode ``dataset`` and a class picker: the image, its label
    and every predictor's classes as overlays; with a class picked, where each method finds (green),
    misses (red) or invents (blue) it, and its IoU per method. Each image is predicted within its
    evaluation batch (``batch_size`` = ``eval_batch_size``: BatchNorm uses batch statistics)."""
    import ipywidgets as widgets
    from IPython.display import display

    names = dataset.class_names
    index = widgets.IntSlider(0, 0, len(dataset) - 1, description="image")
    cls = widgets.Dropdown(options=[("(all classes)", -1)] + [(n, c) for c, n in enumerate(names)], description="class")
    out = widgets.Output()
    cache: dict[int, dict] = {}

    def predictions(i: int) -> dict | None:
        start = i - i % batch_size
        if start not in cache:
            items = [dataset[j] for j in range(start, min(start + batch_size, len(dataset)))]
            usable = {item[0]: item for item in items if not isinstance(item, SkippedItem)}
            if usable:
                images = torch.stack([item[1] for item in usable.values()])
                size = tuple(next(iter(usable.values()))[2].shape)
                preds = {m: p(images, size) for m, p in predictors.items()}
                cache[start] = {j: {m: preds[m][k].numpy() for m in preds} for k, j in enumerate(usable)}
            else:
                cache[start] = {}
        return cache[start].get(i)

    def draw(*_):
        item = dataset[index.value]
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
                iou = ""
                if cls.value >= 0 and per_class and m in per_class:
                    iou = f" IoU {per_class[m][cls.value]['iou_all']:.1f}"
                titles.append(m + iou)
            fig = image_grid([row], titles)
            display(fig)
            plt.close(fig)

    index.observe(draw, "value")
    cls.observe(draw, "value")
    draw()
    box = widgets.VBox([widgets.HBox([index, cls]), out])
    display(box)
    return box
