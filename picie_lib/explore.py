"""Interactive exploration in JupyterLab (``interactive=True`` in the notebooks).

Headless runs never call this: the notebooks draw the same views as static figures first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

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


def browse(dataset, predictors: dict[str, Predictor], per_class: dict[str, Sequence[dict]] | None = None):
    """A slider over the images of an eval-mode ``dataset`` and a class picker: the image, its label
    and every predictor's classes as overlays; with a class picked, where each method finds (green),
    misses (red) or invents (blue) it, and its IoU per method."""
    import ipywidgets as widgets
    from IPython.display import display

    names = dataset.class_names
    index = widgets.IntSlider(0, 0, len(dataset) - 1, description="image")
    cls = widgets.Dropdown(options=[("(all classes)", -1)] + [(n, c) for c, n in enumerate(names)], description="class")
    out = widgets.Output()

    def draw(*_):
        _, image, label = dataset[index.value]
        size = tuple(label.shape)
        preds = {m: p(image[None], size)[0].numpy() for m, p in predictors.items()}
        label = label.numpy()
        rgb = to_rgb(image)
        row = [rgb, overlay(rgb, label, len(names))]
        titles = ["image", "ground truth"]
        for m, pred in preds.items():
            row.append(overlay(rgb, pred, len(names)) if cls.value < 0 else failure_map(pred, label, cls.value))
            iou = ""
            if cls.value >= 0 and per_class and m in per_class:
                iou = f" IoU {per_class[m][cls.value]['iou_all']:.1f}"
            titles.append(m + iou)
        with out:
            out.clear_output(wait=True)
            fig = image_grid([row], titles)
            display(fig)
            plt.close(fig)

    index.observe(draw, "value")
    cls.observe(draw, "value")
    draw()
    box = widgets.VBox([widgets.HBox([index, cls]), out])
    display(box)
    return box
