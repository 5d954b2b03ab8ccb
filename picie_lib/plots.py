"""Figures of the notebooks and the report. Each function returns a matplotlib figure;
``save_figure`` writes it atomically. Nothing here computes a result: the numbers come from
``evaluate``, ``metrics`` and the run files."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt  # headless, matplotlib falls back to Agg by itself
import numpy as np
import torch
from PIL import Image

from picie_lib.data.base import first_usable
from picie_lib.runs import atomic_write_bytes
from picie_lib.transforms import denormalize

THING_COLOUR, STUFF_COLOUR = "#d95f02", "#1b9e77"


def class_colours(n: int) -> np.ndarray:
    """n distinct RGB colours in [0, 1] (tab20, then tab20b), one per class; index -1 is black."""
    cmap = [*plt.get_cmap("tab20").colors, *plt.get_cmap("tab20b").colors]
    return np.array([cmap[i % len(cmap)] for i in range(n)] + [(0.0, 0.0, 0.0)])


def colourise(label: np.ndarray | torch.Tensor, n_classes: int) -> np.ndarray:
    """(H, W) class ids (-1 = ignore, black) -> (H, W, 3) colours."""
    label = np.asarray(label)
    return class_colours(n_classes)[np.where(label < 0, n_classes, label)]


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """A (3, H, W) image, uint8 or a normalised network input, as (H, W, 3) in [0, 1] for display."""
    image = image.detach().cpu()
    image = image.float() / 255 if image.dtype == torch.uint8 else denormalize(image.float())
    return image.permute(1, 2, 0).numpy()


def overlay(image: np.ndarray, label: np.ndarray, n_classes: int, alpha: float = 0.5) -> np.ndarray:
    """Class colours blended over an (H, W, 3) image; ignored pixels keep the image."""
    colours = colourise(label, n_classes)
    mix = (1 - alpha) * image + alpha * colours
    return np.where(np.asarray(label)[..., None] < 0, image, mix)


def image_grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str] = (), row_labels: Sequence[str] = ()):
    """A grid of (H, W, 3) images or (H, W) maps, one list per row; column titles on the first row."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.2 * n_cols, 2.2 * n_rows), squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            if j < len(row):
                ax.imshow(row[j], interpolation="nearest")
            else:
                ax.axis("off")
            if i == 0 and j < len(titles):
                ax.set_title(titles[j], fontsize=9)
            if j == 0 and i < len(row_labels):
                ax.set_ylabel(row_labels[i], fontsize=9)
    fig.tight_layout()
    return fig


def views_figure(bases, view1s, view2s, crops, flips):
    """Per image: the base image (uint8 tensor or PIL) with view 1's crop drawn (dashed when flipped),
    view 1, view 2."""
    bases = [np.asarray(b) / 255 if isinstance(b, Image.Image) else to_rgb(b) for b in bases]
    fig = image_grid(
        [[b, to_rgb(v1), to_rgb(v2)] for b, v1, v2 in zip(bases, view1s, view2s, strict=True)],
        ["base image, view 1's crop", "view 1 (cropped, flipped)", "view 2 (whole image)"],
    )
    for ax, base, (x0, y0, side), flip in zip(fig.axes[::3], bases, crops.tolist(), flips.tolist(), strict=True):
        size = base.shape[1]
        ax.add_patch(
            plt.Rectangle(
                (x0 * size - 0.5, y0 * size - 0.5),
                side * size,
                side * size,
                fill=False,
                color="white",
                lw=2,
                ls="--" if flip else "-",
            )
        )
    return fig


def feature_pca_rgb(*feature_maps: torch.Tensor) -> list[np.ndarray]:
    """(B, D, h, w) maps -> (B, h, w, 3) colours: all projected on the first three principal components
    of their pixels together and scaled together, so equal colours mean equal features across maps."""
    pixels = torch.cat([f.permute(0, 2, 3, 1).reshape(-1, f.shape[1]) for f in feature_maps]).double()
    mean = pixels.mean(0)
    v = torch.linalg.svd(pixels - mean, full_matrices=False).Vh[:3].T
    projected = [((f.permute(0, 2, 3, 1).double() - mean) @ v) for f in feature_maps]
    lo = torch.stack([p.reshape(-1, 3).min(0).values for p in projected]).min(0).values
    hi = torch.stack([p.reshape(-1, 3).max(0).values for p in projected]).max(0).values
    return [((p - lo) / (hi - lo).clamp_min(1e-12)).numpy() for p in projected]


def prediction_grid(dataset, predictors: dict, count: int = 4, batch_size: int | None = None):
    """The first ``count`` usable images of an eval-mode data set: image, ground truth, and each
    predictor's classes (``predictor(images, size) -> (B, H, W)``, see ``evaluate.class_predictor``).

    BatchNorm runs on batch statistics, so a pixel's prediction depends on its batch: the images go
    through each predictor as the evaluation's first batch (``batch_size`` = ``eval_batch_size``), so
    that the figure shows the predictions that were scored."""
    items = first_usable(dataset, max(count, batch_size or count))
    images = torch.stack([image for _, image, _ in items])
    size = tuple(items[0][2].shape)
    predicted = {name: predict(images, size) for name, predict in predictors.items()}
    n = dataset.n_classes
    rows = [
        [to_rgb(image), colourise(label, n), *(colourise(p[k], n) for p in predicted.values())]
        for k, (_, image, label) in enumerate(items[:count])
    ]
    return image_grid(rows, ["image", "ground truth", *predictors])


def class_legend(class_names: Sequence[str], things: Sequence[int]):
    """The colour of every class, things first, as a one-figure legend."""
    colours = class_colours(len(class_names))
    fig, ax = plt.subplots(figsize=(10, 1.6))
    for c, name in enumerate(class_names):
        x, y = c % 7, c // 7
        ax.add_patch(plt.Rectangle((x, -y), 0.18, 0.7, color=colours[c]))
        ax.text(x + 0.22, -y + 0.35, name + (" *" if c in things else ""), va="center", fontsize=7)
    ax.set_xlim(0, 7), ax.set_ylim(-(len(class_names) // 7) - 0.2, 0.9)
    ax.axis("off")
    ax.set_title("class colours (* = thing)", fontsize=9)
    return fig


def class_frequency(pixels: Sequence[float], class_names: Sequence[str], things: Sequence[int]):
    """Share of labelled pixels per class, sorted, things and stuff coloured (seaborn)."""
    import pandas as pd
    import seaborn as sns

    pixels = np.asarray(pixels, dtype=float)
    frame = pd.DataFrame(
        {
            "class": list(class_names),
            "share (%)": 100 * pixels / max(pixels.sum(), 1),
            "kind": ["thing" if c in things else "stuff" for c in range(len(class_names))],
        }
    ).sort_values("share (%)", ascending=False)
    fig, ax = plt.subplots(figsize=(11, 3.6))
    sns.barplot(
        frame, x="class", y="share (%)", hue="kind", palette={"thing": THING_COLOUR, "stuff": STUFF_COLOUR}, ax=ax
    )
    ax.set_yscale("log")
    ax.tick_params(axis="x", rotation=75, labelsize=7)
    ax.set_xlabel("")
    ax.set_title("Pixel frequency per class (log scale): the long tail PiCIE's CE weights follow")
    fig.tight_layout()
    return fig


def per_class_bars(per_class: Sequence[dict], key: str = "iou_all", title: str = "", ylabel: str = "IoU (%)"):
    """One bar per class of ``per_class[key]`` (rows of ``per_class.csv``), things and stuff coloured."""
    import pandas as pd
    import seaborn as sns

    frame = pd.DataFrame(per_class)
    fig, ax = plt.subplots(figsize=(11, 3.4))
    sns.barplot(frame, x="class", y=key, hue="kind", palette={"thing": THING_COLOUR, "stuff": STUFF_COLOUR}, ax=ax)
    ax.tick_params(axis="x", rotation=75, labelsize=7)
    ax.set_xlabel(""), ax.set_ylabel(ylabel), ax.set_title(title or key)
    fig.tight_layout()
    return fig


def confusion_heatmap(confusion: np.ndarray, class_names: Sequence[str], assignment: Sequence[int]):
    """Rows: classes; columns: clusters, in the order of the classes they were matched to, so a good
    clustering is a bright diagonal; each row normalised to sum to 1."""
    import seaborn as sns

    confusion = np.asarray(confusion, dtype=float)
    order = [k for k in assignment if k >= 0]
    order += [k for k in range(confusion.shape[1]) if k not in order]
    rows = confusion[:, order] / np.maximum(confusion.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(9, 7.5))
    sns.heatmap(rows, ax=ax, cmap="viridis", vmin=0, vmax=1, yticklabels=class_names, xticklabels=order)
    ax.set_xlabel("cluster (ordered by the class it is matched to)")
    ax.set_title("Confusion, each class's pixels across clusters")
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


def loss_curves(log: Sequence[dict], title: str = ""):
    """Training loss and the k-means loss per epoch from ``log.jsonl``; the IB-Focal switch marked."""
    kept = [r for r in log if not r.get("discarded")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for phase, marker in (("ce", "o"), ("focal", "s"), ("ib_focal", "^")):
        pts = [(r["epoch"], r["loss"]) for r in kept if r["phase"] == phase]
        if pts:
            axes[0].plot(*zip(*pts, strict=True), marker=marker, label=phase)
    dropped = [(r["epoch"], r["loss"]) for r in log if r.get("discarded")]
    if dropped:
        axes[0].scatter(*zip(*dropped, strict=True), marker="x", color="grey", label="discarded (past the minimum)")
    axes[0].set_xlabel("epoch"), axes[0].set_ylabel("training loss"), axes[0].legend(fontsize=8)
    axes[1].plot([r["epoch"] for r in kept], [np.mean(r["kmeans_loss"]) for r in kept], marker="o")
    axes[1].set_xlabel("epoch"), axes[1].set_ylabel("mean k-means distance")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def gains_over_baseline(per_class: dict[str, Sequence[dict]], baseline: str = "ce", key: str = "iou_subset"):
    """Per-class IoU gain of every method over the baseline (points), things and stuff apart."""
    import pandas as pd
    import seaborn as sns

    base = {r["class"]: r[key] for r in per_class[baseline]}
    frame = pd.DataFrame(
        [
            {
                "class": r["class"],
                "kind": r["kind"],
                "method": m,
                "gain (IoU points)": r[key] - base[r["class"]],
            }
            for m, rows in per_class.items()
            if m != baseline
            for r in rows
        ]
    )
    widths = [max(1, int((frame.kind == kind).sum())) for kind in ("thing", "stuff")]  # one bar slot per class
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.6), sharey=True, gridspec_kw={"width_ratios": widths})
    for ax, kind in zip(axes, ("thing", "stuff"), strict=True):
        sns.barplot(frame[frame.kind == kind], x="class", y="gain (IoU points)", hue="method", ax=ax)
        ax.axhline(0, color="black", lw=0.8)
        ax.tick_params(axis="x", rotation=75, labelsize=7)
        ax.set_xlabel(""), ax.set_title(f"{kind}: IoU gain over {baseline}")
    fig.tight_layout()
    return fig


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Write ``fig`` to ``path`` (the format from its suffix), atomically (``runs.atomic_write_bytes``)."""
    path = Path(path)
    image = io.BytesIO()
    fig.savefig(image, format=path.suffix.lstrip("."), dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, image.getvalue())
    return path
