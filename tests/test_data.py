"""The built-in data set: classes, determinism, the curated-COCO stuff rule, the long tail; batches made ahead."""

import colorsys
import threading
import time

import numpy as np
import pytest
import torch

from picie_lib import loader
from picie_lib.config import Config
from picie_lib.data import SyntheticScenes, build_dataset
from picie_lib.data.cocostuff_classes import COARSE_NAMES, STUFF_CLASSES, THING_CLASSES
from picie_lib.data.synthetic import SHAPES, TEXTURES, _colours, generate_scene
from picie_lib.transforms import draw_view_params


@pytest.fixture(scope="module")
def scenes():
    return SyntheticScenes(200, 64, seed=0, split="train")


def test_the_27_cocostuff_classes_12_things_15_stuff(scenes):
    assert scenes.class_names == COARSE_NAMES and len(COARSE_NAMES) == 27
    assert scenes.thing_classes == tuple(range(12)) == THING_CLASSES
    assert scenes.stuff_classes == tuple(range(12, 27)) == STUFF_CLASSES
    assert all(n.endswith("-things") for n in COARSE_NAMES[:12])
    assert all(n.endswith("-stuff") for n in COARSE_NAMES[12:])
    # every class has its own texture, every thing its own shape
    assert len({(k, tuple(sorted(p.items()))) for k, p in TEXTURES.values()}) == 27
    assert len(set(SHAPES.values())) == 12


def test_deterministic_by_seed_and_split():
    a_img, a_lab = generate_scene(3, "train", 5, 64)
    b_img, b_lab = generate_scene(3, "train", 5, 64)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_lab, b_lab)
    c_img, _ = generate_scene(4, "train", 5, 64)
    d_img, _ = generate_scene(3, "val", 5, 64)
    assert not np.array_equal(a_img, c_img) and not np.array_equal(a_img, d_img)
    # the same scene whatever else was generated before it
    assert torch.equal(SyntheticScenes(8, 64, seed=3).images[5], torch.from_numpy(a_img).permute(2, 0, 1))


def test_mostly_stuff_long_tailed_and_every_class_present(scenes):
    labels = scenes.labels.numpy().astype(int)
    stuff_share = [(lab[lab >= 0] >= 12).mean() for lab in labels]
    assert np.mean(np.array(stuff_share) >= 0.75) >= 0.9  # "at least 75% stuff in most images"
    counts = np.bincount(labels[labels >= 0], minlength=27)
    assert (counts > 0).all()
    things, stuff = np.sort(counts[:12]), np.sort(counts[12:])
    assert stuff[-1] / stuff[0] > 5 and things[-1] / things[0] > 3  # long-tailed
    thing_share = counts[:12].sum() / counts.sum()
    assert 0.05 < thing_share < 0.25  # things are there, and not negligible
    assert (labels == -1).any()  # a few unlabelled pixels, as in COCO


def test_modes_and_shapes():
    cfg = Config(image_size=64, res=64, n_train=4, n_val=2)
    ev = build_dataset(cfg, "val", "eval")
    idx, image, label = ev[1]
    assert idx == 1 and image.shape == (3, 64, 64) and image.dtype == torch.uint8
    assert label.shape == (64, 64) and label.dtype == torch.int64 and label.min() >= -1 and label.max() < 27
    tr = build_dataset(cfg.replace(res=32), "train", "train")
    with pytest.raises(RuntimeError, match="set_view_params"):
        tr[0]
    tr.set_view_params(draw_view_params(len(tr), cfg, torch.Generator().manual_seed(0)))
    idx, views = tr[2]
    assert idx == 2 and views.shape == (2, 3, 32, 32) and views.dtype == torch.uint8 and tr.base_size == 64
    with pytest.raises(ValueError, match="split='test'"):
        SyntheticScenes(2, 64, split="test")
    with pytest.raises(ValueError, match="mode='both'"):
        SyntheticScenes(2, 64, mode="both")


def test_train_mode_needs_square_base_images():
    from picie_lib.data.base import SceneDataset

    class Wide(SceneDataset):
        def __len__(self):
            return 1

        def load(self, index):
            return torch.zeros(3, 32, 48, dtype=torch.uint8), None

    with pytest.raises(ValueError, match=r"Wide\[0\]: a base image of \(32, 48\).*square"):
        Wide("train", 32)[0]
    with pytest.raises(ValueError, match="Wide: base_size is not set"):
        Wide("train", 32).set_view_params(draw_view_params(1, Config(), torch.Generator().manual_seed(0)))
    assert Wide("eval", 32)[0][1].shape == (3, 32, 32)  # eval mode centre-crops


def test_instance_colours_keep_the_layout_and_vary_colour_within_the_jitter_range():
    from picie_lib.data.synthetic import CLASS_HUES, COLOUR_MODES

    class_img, class_lab = generate_scene(0, "train", 3, 64)
    inst_img, inst_lab = generate_scene(0, "train", 3, 64, colours="instance")
    assert np.array_equal(class_lab, inst_lab) and not np.array_equal(class_img, inst_img)
    # the spread of one class's hue over instances: small for "class", up to PiCIE's +-0.1 for "instance"
    rng = lambda i: np.random.default_rng(i)  # noqa: E731
    spread = {}
    for mode in COLOUR_MODES:
        hues = []
        for i in range(400):
            tone, _ = _colours(5, rng(i), mode)
            hue = colorsys.rgb_to_hsv(*tone)[0]
            hues.append((hue - CLASS_HUES[5] + 0.5) % 1 - 0.5)
        spread[mode] = np.array(hues)
    assert np.abs(spread["instance"]).max() <= 0.1 + 1e-9
    assert np.abs(spread["instance"]).max() > 0.09 and np.std(spread["instance"]) > 2 * np.std(spread["class"])
    # uniform within +-0.1: about half of the instances beyond +-0.05
    assert 0.4 < np.mean(np.abs(spread["instance"]) > 0.05) < 0.6
    with pytest.raises(ValueError, match="synthetic_colours='grey'"):
        generate_scene(0, "train", 0, 32, colours="grey")
    with pytest.raises(ValueError, match="synthetic_colours"):
        Config(synthetic_colours="grey").validate()
    # the parameter reaches the data set
    cfg = Config(image_size=64, res=64, n_val=4, synthetic_colours="instance", data_seed=0)
    images = build_dataset(cfg, "val", "eval").images
    assert torch.equal(images[3], torch.from_numpy(generate_scene(0, "val", 3, 64, "instance")[0]).permute(2, 0, 1))


# ---- batches made on the device, a batch ahead of the pass (loader.MadeAhead) --------------------------
def _counted_train_set(fail_at: int | None = None, slow_at: int | None = None):
    """The built-in train set whose batch maker records each batch it makes (raises at batch ``fail_at``, takes
    3 s over batch ``slow_at``)."""
    cfg = Config(image_size=32, res=32, n_train=20, device="cpu", num_workers=0)
    dataset = build_dataset(cfg, "train", "train")
    dataset.set_view_params(draw_view_params(len(dataset), cfg, torch.Generator().manual_seed(0)))
    made, make = [], dataset.train_views

    def counted(indices, encoded, device):
        made.append(list(indices))
        if len(made) == fail_at:
            raise RuntimeError(f"batch {fail_at} cannot be made")
        if len(made) == slow_at:
            time.sleep(3)
        return make(indices, encoded, device)

    dataset.train_views = counted
    return cfg, dataset, made


def _makers_alive() -> int:
    return sum(thread.name == "batches-made-ahead" and thread.is_alive() for thread in threading.enumerate())


def _wait_until(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_the_next_batches_are_made_while_the_pass_holds_one():
    """While the pass works on a batch (on a GPU: the network runs), the next one waits made and the one after
    is being made; no further. The batches are those made one at a time, in order, and the thread ends."""
    cfg, dataset, made = _counted_train_set()
    order = list(range(20))[::-1]
    batches = iter(loader.Batches(dataset, order, 4, cfg, on_device=True))
    first = next(batches)
    assert _wait_until(lambda: len(made) == 3), made  # one queued, one made and waiting for room
    time.sleep(0.2)
    assert len(made) == 3 and _makers_alive() == 1
    rest = list(batches)
    alone = list(loader.Batches(dataset, order, 4, cfg, on_device=False))
    assert [b[0].tolist() for b in [first, *rest]] == [order[i : i + 4] for i in range(0, 20, 4)]
    assert all(torch.equal(x, y) for a, b in zip(alone, [first, *rest], strict=True) for x, y in zip(a, b, strict=True))
    assert _makers_alive() == 0


def test_an_error_in_making_a_batch_is_raised_in_the_pass_and_stopping_early_ends_the_thread():
    cfg, dataset, made = _counted_train_set(fail_at=2)
    batches = iter(loader.Batches(dataset, list(range(20)), 4, cfg, on_device=True))
    next(batches)
    with pytest.raises(RuntimeError, match="batch 2 cannot be made"):
        next(batches)
    assert _makers_alive() == 0 and len(made) == 2
    cfg, dataset, made = _counted_train_set()
    batches = iter(loader.Batches(dataset, list(range(20)), 4, cfg, on_device=True))
    next(batches)
    batches.close()  # the pass stops after its first batch (an error, a break)
    assert _makers_alive() == 0 and len(made) <= 3


def test_an_interrupted_pass_does_not_wait_for_the_batch_being_made():
    """Ctrl-C in a pass ends it at once (within a second), though the thread is busy making a batch (a worker
    stuck on a file); the thread stops after that batch."""
    cfg, dataset, made = _counted_train_set(slow_at=2)
    batches = iter(loader.Batches(dataset, list(range(20)), 4, cfg, on_device=True))
    next(batches)
    assert _wait_until(lambda: len(made) == 2)
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        batches.throw(KeyboardInterrupt)
    assert time.monotonic() - start < 2.0
    assert _wait_until(lambda: _makers_alive() == 0) and len(made) == 2
