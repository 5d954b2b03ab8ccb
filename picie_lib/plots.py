"""Figures of the notebooks and the report. Each function returns a matplotlib figure;
``save_figure`` writes it atomically. Nothing here computes a result: the numbers come from
``evaluate``, ``metrics`` and the run files."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt  # headless, matplotlib falls back to Agg by itself
import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from picie_lib.config import LOSS_NAMES, METHOD_NAMES
from picie_lib.data.base import first_usable
from picie_lib.eval_seeds import CLASS_THRESHOLD
from picie_lib.runs import atomic_write_bytes
from picie_lib.transforms import denormalize

THING_COLOUR, STUFF_COLOUR = "#d95f02", "#1b9e77"
METHOD_COLOURS = dict(zip(METHOD_NAMES, plt.get_cmap("tab10").colors, strict=False))  # one per method, every figure
# One colour per class of the 27-class sets, at least 33 CIELAB units (Delta E 1976) from every other so that
# neighbouring regions never look alike. COCO-Stuff-27's frequent classes get the colours a reader expects: sky
# light blue (23), plant green (22), ground brown (21), building grey (20), water blue (26), wall cream (18),
# person crimson (9), vehicle navy (11); the others were picked greedily, farthest from those already taken.
CLASS_PALETTE = (
    "#ff00ff",
    "#ffe800",
    "#ffa2ff",
    "#0000ff",
    "#00ff00",
    "#00ffd1",
    "#741746",
    "#174617",
    "#ff00a2",
    "#dc143c",
    "#ff7400",
    "#1a237e",
    "#8b5dff",
    "#ff8ba2",
    "#a2a22e",
    "#a2e817",
    "#a22ea2",
    "#2ea28b",
    "#f0e0b0",
    "#00ff8b",
    "#8c8c8c",
    "#a0662d",
    "#2ca02c",
    "#87cefa",
    "#5d8bff",
    "#e8a200",
    "#1f78b4",
)


def class_colours(n: int) -> np.ndarray:
    """n distinct RGB colours in [0, 1], one per class (``CLASS_PALETTE``, then tab20 beyond 27 classes);
    index -1 (the row after the last class) is black."""
    from matplotlib.colors import to_rgb as hex_to_rgb

    listed = [hex_to_rgb(c) for c in CLASS_PALETTE] + list(plt.get_cmap("tab20").colors)
    return np.array([listed[i % len(listed)] for i in range(n)] + [(0.0, 0.0, 0.0)])


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
            if i == 0 and j < len(titles):  # wrapped to the panel's width, so neighbouring titles never collide
                ax.set_title("\n".join(textwrap.fill(line, 26) for line in titles[j].split("\n")), fontsize=9)
            if j == 0 and i < len(row_labels):
                ax.set_ylabel(row_labels[i], fontsize=9)
    fig.tight_layout()
    return fig


def add_key(fig, entries: Sequence[tuple[str, Sequence[float]]], title: str = "", ncol: int = 0):
    """A legend of coloured squares under the figure's axes: ``entries`` = (name, RGB) pairs."""
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=colour, edgecolor="black", linewidth=0.4, label=name) for name, colour in entries]
    width = fig.get_size_inches()[0]
    fig.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=ncol or max(1, min(len(handles), int(width / 1.6))),
        fontsize=8,
        title=title or None,
        title_fontsize=8,
        frameon=False,
    )
    return fig


def add_class_key(fig, maps: Sequence[np.ndarray], class_names: Sequence[str], things: Sequence[int] = ()):
    """The colour of every class that appears in ``maps`` (labels or predictions), under the figure."""
    present = sorted({int(c) for m in maps for c in np.unique(np.asarray(m)) if c >= 0})
    colours = class_colours(len(class_names))
    entries = [(class_names[c] + (" *" if c in things else ""), colours[c]) for c in present]
    return add_key(fig, entries, "classes in these maps" + (" (* = thing)" if things else ""))


def views_figure(bases, view1s, view2s, crops, flips):
    """Per image: the base image (uint8 (3, S, S)) with view 1's crop drawn (dashed when flipped), view 1,
    view 2."""
    bases = [to_rgb(b) for b in bases]
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


def predict_examples(dataset, predictors: dict, count: int = 4, batch_size: int | None = None) -> dict:
    """The first ``count`` usable images of an eval-mode data set, their labels and each predictor's
    classes (``predictor(images, size) -> (B, H, W)``, see ``scores.class_predictor``), as numpy.

    BatchNorm runs on batch statistics, so a pixel's prediction depends on its batch: the images go
    through each predictor as the evaluation's first batch (``batch_size`` = ``eval_batch_size``), so
    that the figure shows the predictions that were scored."""
    items = first_usable(dataset, max(count, batch_size or count))
    images = torch.stack([image for _, image, _ in items])
    size = tuple(items[0][2].shape)
    predicted = {name: predict(images, size)[:count].numpy() for name, predict in predictors.items()}
    return {
        "images": [to_rgb(image) for image in images[:count]],
        "labels": [label.numpy() for _, _, label in items[:count]],
        "predicted": {name: list(p) for name, p in predicted.items()},
        "class_names": dataset.class_names,
        "things": dataset.thing_classes,
    }


def prediction_grid(examples: dict):
    """``predict_examples``' images: image, ground truth, each predictor's classes; the classes' key below."""
    n = len(examples["class_names"])
    rows = [
        [image, colourise(label, n), *(colourise(p[k], n) for p in examples["predicted"].values())]
        for k, (image, label) in enumerate(zip(examples["images"], examples["labels"], strict=True))
    ]
    fig = image_grid(rows, ["image", "ground truth", *examples["predicted"]])
    maps = [*examples["labels"], *(m for p in examples["predicted"].values() for m in p)]
    return add_class_key(fig, maps, examples["class_names"], examples["things"])


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
    ax.set_title("Pixel frequency per class (log scale): the long tail")
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)  # beside the bars, never on them
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
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)  # beside the bars, never on them
    fig.tight_layout()
    return fig


def confusion_heatmap(confusion: np.ndarray, class_names: Sequence[str], assignment: Sequence[int], method: str = ""):
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
    ax.set_title(f"{method + ': ' if method else ''}each class's pixels across clusters (rows sum to 1)")
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    return fig


PHASE_MARKERS = {"ce": "o", "focal": "s", "ib_focal": "^"}
PHASE_STYLE = {phase: (marker, METHOD_COLOURS[phase]) for phase, marker in PHASE_MARKERS.items()}  # colours as 07's


def loss_curves(log: Sequence[dict], title: str = ""):
    """Training loss, the k-means loss and how far each epoch moved the weights, per epoch, from ``log.jsonl``. A
    second phase (IB-Focal after its CE warm-up) gets its own y axis on the right, in its colour: its loss is on
    another scale than CE's. The switch is a dashed line; a CE epoch past the minimum (discarded, the run went
    back) a grey cross."""
    kept = [r for r in log if not r.get("discarded")]
    phases = [p for p in LOSS_NAMES if any(r["phase"] == p for r in kept)]
    fig, (ax, ax_kmeans, ax_moved) = plt.subplots(1, 3, figsize=(14, 3.4))
    for i, phase in enumerate(phases):
        target = ax if i == 0 else ax.twinx()
        marker, colour = PHASE_STYLE[phase]
        points = [(r["epoch"], r["loss"]) for r in kept if r["phase"] == phase]
        target.plot(*zip(*points, strict=True), marker=marker, color=colour, label=f"{LOSS_NAMES[phase]} loss")
        target.set_ylabel(f"{LOSS_NAMES[phase]} loss" + (" (right axis)" if i else ""), color=colour)
        target.tick_params(axis="y", colors=colour)
        moved = [(r["epoch"], 100 * r["weights_moved"]) for r in kept if r["phase"] == phase and "weights_moved" in r]
        if moved:
            ax_moved.plot(*zip(*moved, strict=True), marker=marker, color=colour, label=LOSS_NAMES[phase])
    dropped = [(r["epoch"], r["loss"]) for r in log if r.get("discarded")]
    if dropped:
        ax.scatter(*zip(*dropped, strict=True), marker="x", color="grey", label="CE past its minimum (discarded)")
    if len(phases) > 1:
        switch = min(r["epoch"] for r in kept if r["phase"] == phases[1])
        for a in (ax, ax_kmeans, ax_moved):
            a.axvline(switch - 0.5, color="black", ls="--", lw=0.8)
        ax.annotate(
            f"switch to {LOSS_NAMES[phases[1]]}",
            (switch - 0.5, 1.0),
            xycoords=("data", "axes fraction"),
            fontsize=8,
            ha="center",
            va="bottom",
        )
    ax.set_xlabel("epoch")
    handles = [h for a in fig.axes if a not in (ax_kmeans, ax_moved) for h in a.get_legend_handles_labels()[0]]
    ax.legend(handles=handles, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, frameon=False)
    ax_kmeans.plot([r["epoch"] for r in kept], [np.mean(r["kmeans_loss"]) for r in kept], marker="o", color="black")
    ax_kmeans.set_xlabel("epoch")
    ax_kmeans.set_ylabel("mean k-means distance")
    ax_kmeans.set_title("k-means loss (both views)", fontsize=10)
    ax_moved.set_xlabel("epoch")
    ax_moved.set_ylabel("% of the weights' norm")
    ax_moved.set_title("how far each epoch moved the weights", fontsize=10)
    ax_moved.set_ylim(bottom=0)
    for a in (ax, ax_kmeans, ax_moved):
        a.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def gains_over_baseline(effects: dict[str, Sequence[dict]], names: dict[str, str], baseline: str = "ce"):
    """Per-class IoU gain of every method over the baseline, things and stuff apart. ``effects``: method -> its
    classes' gains (``eval_seeds.gains_over``: the mean over the seeds and both noises); a whisker spans
    ``CLASS_THRESHOLD`` standard errors of the larger noise, so a bar whose whisker crosses zero is within the noise."""
    methods = list(effects)
    classes = {
        kind: [r["class"] for r in next(iter(effects.values())) if r["kind"] == kind] for kind in ("thing", "stuff")
    }
    widths = [max(1, len(classes[kind])) for kind in ("thing", "stuff")]  # one bar slot per class
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=True, gridspec_kw={"width_ratios": widths})
    width = 0.8 / max(1, len(methods))
    for ax, kind in zip(axes, ("thing", "stuff"), strict=True):
        x = np.arange(len(classes[kind]))
        for i, method in enumerate(methods):
            by_class = {r["class"]: r for r in effects[method]}
            gains = [by_class[c]["difference"] if c in by_class else np.nan for c in classes[kind]]
            whiskers = [CLASS_THRESHOLD * by_class[c]["noise"] if c in by_class else np.nan for c in classes[kind]]
            ax.bar(
                x + (i - (len(methods) - 1) / 2) * width,
                gains,
                width,
                color=METHOD_COLOURS.get(method),
                label=names.get(method, method),
                yerr=np.nan_to_num(whiskers),
                capsize=2,
                ecolor="black",
            )
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(x, classes[kind], rotation=75, fontsize=7)
        ax.set_ylabel("IoU gain (points)")
        ax.set_title(f"{kind}: IoU gain over {names.get(baseline, baseline)}")
    seeds = max((r["seeds"] for rows in effects.values() for r in rows), default=1)
    title = f"mean over {seeds} seeds" if seeds > 1 else "one seed"
    title += f"; whiskers: {CLASS_THRESHOLD:g} standard errors of the larger noise (the seeds' or the k-means draws')"
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(
        handles,
        labels,
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=len(labels),
        fontsize=8,
        frameon=False,
        title=title,
        title_fontsize=8,
    )
    fig.tight_layout()
    return fig


def save_figure(fig, path: Path, dpi: int = 110, reading: str | None = None) -> Path:
    """Write ``fig`` to ``path`` (the format from its suffix), atomically (``runs.atomic_write_bytes``);
    with ``reading`` (what to look for in it) also ``reading_path(path)``, which the report shows under it."""
    path = Path(path)
    image = io.BytesIO()
    fig.savefig(image, format=path.suffix.lstrip("."), dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, image.getvalue())
    if reading is not None:
        atomic_write_bytes(reading_path(path), (reading.strip() + "\n").encode())
    return path


def reading_path(figure: Path) -> Path:
    """Where ``save_figure`` keeps a figure's reading: ``NAME.reading.md`` beside ``NAME.png``."""
    return Path(figure).with_suffix(".reading.md")


def publish(fig, path: Path, reading: str) -> None:
    """What a notebook does with a figure: save it with its reading, show it, the reading under it."""
    from IPython.display import Markdown, display

    save_figure(fig, path, reading=reading)
    display(fig)
    plt.close(fig)
    display(Markdown(f"**What to look for.** {reading}"))
