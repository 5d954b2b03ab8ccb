"""A backbone pretrained on a built-in task whose classes are not the demo's, as ImageNet is for the paper.

The pretext task is supervised texture segmentation of generated scenes: 22 texture classes, each a
texture kind at parameters that none of the 27 demo classes uses (``PRETEXT_TEXTURES``), painted in
random colours on a warped Voronoi partition; no things, no shapes, no demo class. A ResNet-18 + FPN
with a 1x1 classifier learns it with cross-entropy at stride 4; the backbone's weights are saved as a
ResNet-18 state dict, which ``pretrained: PATH`` loads (the FPN starts random, as from ImageNet).

    python -m picie_lib pretext --out outputs/pretext/backbone.pt      # then -p pretrained=that path

``pretrained: pretext`` (the demo preset's) names the default backbone, ``PRETEXT_CACHE``: the first
run that needs it trains it (90 to 150 s on two CPU cores), later runs reuse it. The file is written
once, atomically, with ``<out>.json`` beside it (parameters, seconds, the pretext accuracy per
epoch); a call with other parameters trains it again.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from picie_lib.data.synthetic import TEXTURES, _texture, two_tones, warped_voronoi
from picie_lib.model import FEATURE_DIM, PanopticFPN, bf16_autocast
from picie_lib.progress import progress
from picie_lib.run_folder import exclusive
from picie_lib.runs import atomic_torch_save, environment, write_json
from picie_lib.transforms import to_network_input

PRETEXT_TEXTURES: tuple[tuple[str, dict], ...] = (
    ("stripes", {"angle": 22, "period": 3.5}),
    ("stripes", {"angle": 67, "period": 8}),
    ("stripes", {"angle": 112, "period": 3.5}),
    ("stripes", {"angle": 157, "period": 8}),
    ("waves", {"angle": 90, "period": 6}),
    ("waves", {"angle": 22, "period": 4}),
    ("zigzag", {"period": 3.5}),
    ("zigzag", {"period": 10}),
    ("checker", {"angle": 22, "period": 6}),
    ("checker", {"angle": 67, "period": 11}),
    ("crosshatch", {"period": 3.5}),
    ("crosshatch", {"period": 13}),
    ("dots", {"period": 6, "radius": 1.2}),
    ("dots", {"period": 12, "radius": 4}),
    ("grid", {"period": 9, "width": 1.0}),
    ("grid", {"period": 16, "width": 2.5}),
    ("rings", {"period": 9}),
    ("rings", {"period": 3.5}),
    ("bricks", {"period": 5}),
    ("bricks", {"period": 12}),
    ("noise", {"scale": 3}),
    ("noise", {"scale": 9}),
)
assert not {(k, json.dumps(p, sort_keys=True)) for k, p in PRETEXT_TEXTURES} & {
    (k, json.dumps(p, sort_keys=True)) for k, p in TEXTURES.values()
}, "a pretext class equals a demo class"


PRETEXT_CACHE = Path(__file__).resolve().parents[1] / "outputs" / "pretext" / "backbone.pt"


def pretext_scene(seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One pretext scene: uint8 image (size, size, 3) and int64 labels in [0, 22) (size, size)."""
    rng = np.random.default_rng([seed, 7, index])  # 7: a stream no demo split uses
    n_regions = int(rng.integers(2, 6))
    region = warped_voronoi(rng, size, n_regions)
    image = np.zeros((size, size, 3))
    label = np.zeros((size, size), dtype=np.int64)
    for r in range(n_regions):
        cls = int(rng.integers(len(PRETEXT_TEXTURES)))
        kind, params = PRETEXT_TEXTURES[cls]
        mask = region == r
        t = _texture(kind, params, size, rng)[mask][:, None]
        tone1, tone2 = two_tones(rng.uniform(0, 1), rng.uniform(0.3, 0.9), rng.uniform(0.35, 0.85), rng)
        image[mask] = tone1 * (1 - t) + tone2 * t
        label[mask] = cls
    image += rng.normal(0, 0.03, image.shape)
    return (np.clip(image, 0, 1) * 255).round().astype(np.uint8), label


def pretrain_backbone(
    out: Path,
    n_images: int = 4096,
    epochs: int = 4,
    size: int = 96,
    batch_size: int = 32,
    lr: float = 1e-3,
    seed: int = 0,
    amp: bool = True,
) -> Path:
    """Train the pretext task and save the backbone to ``out`` with its record ``out.json`` (reused when its
    parameters match). The folder is held while it trains (``run_folder.exclusive``); an ``out`` that is not a
    pretext backbone of this command (no pretext record beside it) is refused, named, before any work."""
    out = Path(out)
    amp = bf16_autocast("cpu", amp)  # float32 on a CPU without bfloat16 instructions (recorded as such)
    parameters = dict(n_images=n_images, epochs=epochs, size=size, batch_size=batch_size, lr=lr, seed=seed, amp=amp)
    record = out.with_name(out.name + ".json")
    if out.is_file() and _pretext_parameters(record) == parameters:
        return out  # reused silently: every model the demo builds starts here
    with exclusive(out.parent):
        for path in (out, record):
            if os.path.lexists(path) and _pretext_parameters(record) is None:
                raise FileExistsError(
                    f"{path} exists and is not a pretext backbone this command wrote (no pretext record {record.name} "
                    "beside it); choose another --out, or move it away"
                )
        print(f"pretext backbone: training it once into {out} ({n_images} scenes, {epochs} epochs)", flush=True)
        start = time.perf_counter()
        state, history = train_pretext(parameters)
        atomic_torch_save(state, out)
        seconds = time.perf_counter() - start
        write_json(
            record, {"parameters": parameters, "history": history, "seconds": seconds, "environment": environment()}
        )
    accuracy = history[-1]["pixel_accuracy"]
    print(
        f"pretext backbone: {n_images} scenes, {epochs} epoch(s), pixel accuracy {accuracy:.1%}, {seconds:.0f} s", out
    )
    return out


def _pretext_parameters(record: Path) -> dict | None:
    """The parameters a pretext record (``out.json``) holds, or None where there is no such record."""
    try:
        saved = json.loads(record.read_text()) if record.is_file() and not record.is_symlink() else None
    except (OSError, ValueError):
        return None
    return saved.get("parameters") if isinstance(saved, dict) and isinstance(saved.get("parameters"), dict) else None


def train_pretext(parameters: dict) -> tuple[dict, list[dict]]:
    """The pretext task (a texture's class per stride-4 cell of built-in scenes) trained with ``parameters``:
    the backbone's state dict and each epoch's pixel accuracy."""
    n_images, epochs, size, seed = (parameters[k] for k in ("n_images", "epochs", "size", "seed"))
    batch_size, amp = parameters["batch_size"], parameters["amp"]
    scenes = [pretext_scene(seed, i, size) for i in range(n_images)]
    images = torch.from_numpy(np.stack([s[0] for s in scenes])).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(np.stack([s[1] for s in scenes]))[:, 2::4, 2::4]  # the centres of stride-4 cells
    torch.manual_seed(seed)
    model = PanopticFPN().to(memory_format=torch.channels_last)
    head = torch.nn.Conv2d(FEATURE_DIM, len(PRETEXT_TEXTURES), 1)
    optimizer = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=parameters["lr"])
    history = []
    for epoch in range(epochs):
        order = torch.randperm(n_images, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        correct = total = 0
        for lo in progress(range(0, n_images, batch_size), desc=f"pretext epoch {epoch + 1}/{epochs}"):
            idx = order[lo : lo + batch_size]
            x = to_network_input(images[idx]).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                logits = head(model(x)).float()
            loss = F.cross_entropy(logits, labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            correct += int((logits.argmax(1) == labels[idx]).sum())
            total += labels[idx].numel()
        history.append({"epoch": epoch + 1, "pixel_accuracy": correct / total})
    return model.backbone.state_dict(), history


def pretext_backbone() -> Path:
    """``pretrained: pretext``: the default pretext backbone, trained on first use into ``PRETEXT_CACHE``."""
    return pretrain_backbone(PRETEXT_CACHE)


def resolve_pretrained(pretrained: str | Path | None) -> str | Path | None:
    """``pretrained`` as the model reads it: the name ``"pretext"`` becomes the cached pretext backbone's
    file (``pretext_backbone``, trained on first use); anything else is returned as it is."""
    return pretext_backbone() if str(pretrained) == "pretext" else pretrained
