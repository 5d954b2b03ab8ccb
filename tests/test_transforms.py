"""The two views: parameters, photometric ops, and the crop/flip that keeps feature maps aligned."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import nn

from picie_lib import transforms
from picie_lib.config import Config
from picie_lib.picie import batch_features, view_features
from picie_lib.transforms import (
    ViewParams,
    augment,
    by_size,
    center_crop_resize,
    crop_flip,
    cut_views,
    denormalize,
    draw_view_params,
    photometric,
    reference_photometric,
    reference_views,
    square_base,
)


def _params(n=1, **kw):
    base = dict(
        jitter_on=torch.zeros(n, 2, 4, dtype=torch.bool),
        jitter=torch.ones(n, 2, 4),
        blur_sigma=torch.zeros(n, 2),
        grayscale=torch.zeros(n, 2, dtype=torch.bool),
        crop=torch.tensor([[0.0, 0.0, 1.0]] * n),
        flip=torch.zeros(n, dtype=torch.bool),
    )
    base.update(kw)
    return ViewParams(**base)


def test_view_params_are_a_function_of_the_generator_and_respect_ranges():
    cfg = Config()
    a = draw_view_params(2000, cfg, torch.Generator().manual_seed(0))
    b = draw_view_params(2000, cfg, torch.Generator().manual_seed(0))
    c = draw_view_params(2000, cfg, torch.Generator().manual_seed(1))
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    assert not torch.equal(a.crop, c.crop)
    assert a.jitter[..., :3].min() >= 0.7 and a.jitter[..., :3].max() <= 1.3
    assert a.jitter[..., 3].abs().max() <= 0.1
    assert abs(a.jitter_on.float().mean() - 0.8) < 0.02  # each op on its own p = 0.8 coin
    assert abs((a.blur_sigma > 0).float().mean() - 0.5) < 0.03
    assert abs(a.grayscale.float().mean() - 0.2) < 0.02
    assert abs(a.flip.float().mean() - 0.5) < 0.03
    side = a.crop[:, 2]
    assert side.min() >= 0.5 and side.max() <= 1.0
    assert (a.crop[:, 0] + side <= 1 + 1e-6).all() and (a.crop[:, 1] + side <= 1 + 1e-6).all()
    # the two views get independent photometric draws
    assert not torch.equal(a.jitter[:, 0], a.jitter[:, 1])


def _batch(n, size, seed):
    """Random images with grey pixels, pure colours and saturated values among them (hue edge cases)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g)
    x[:, :, 0, :4] = torch.tensor([0.3, 1.0, 0.0, 0.5]).view(1, 1, 4)  # grey pixels (chroma 0, incl. black, white)
    x[:, :, 1, 0] = torch.tensor([1.0, 0.0, 0.0])  # pure red, green, blue
    x[:, :, 1, 1] = torch.tensor([0.0, 1.0, 0.0])
    x[:, :, 1, 2] = torch.tensor([0.0, 0.0, 1.0])
    x[:, :, 1, 3] = torch.tensor([0.8, 0.8, 0.2])  # two channels at the maximum
    return x


@pytest.mark.parametrize(
    "op, reference",
    [
        (transforms.adjust_brightness, TF.adjust_brightness),
        (transforms.adjust_saturation, TF.adjust_saturation),
        (transforms.adjust_hue, TF.adjust_hue),
    ],
)
def test_batched_colour_ops_equal_torchvision_per_image(op, reference):
    x = _batch(5, 12, 0)
    factors = (
        torch.tensor([0.0, 0.5, -0.5, -0.1, 0.07])
        if op is transforms.adjust_hue
        else torch.tensor([0.7, 1.3, 1.0, 0.85, 1.2])
    )
    expected = torch.stack([reference(x[i], float(factors[i])) for i in range(5)])
    assert torch.allclose(op(x, factors), expected, atol=2e-6)


def test_batched_contrast_equals_torchvision_and_takes_a_given_reference():
    x = _batch(4, 12, 1)
    factors = torch.tensor([0.7, 1.3, 1.0, 1.1])
    own_mean = transforms._gray(x).mean(dim=(1, 2, 3))
    expected = torch.stack([TF.adjust_contrast(x[i], float(factors[i])) for i in range(4)])
    assert torch.allclose(transforms.adjust_contrast(x, factors, own_mean), expected, atol=2e-6)
    # with another image's mean grey level: the blend towards that level
    other = torch.full((4,), 0.9)
    assert torch.allclose(
        transforms.adjust_contrast(x, factors, other),
        (factors.view(-1, 1, 1, 1) * x + (1 - factors.view(-1, 1, 1, 1)) * 0.9).clamp(0, 1),
    )


def test_batched_blur_equals_torchvision_per_image_with_its_own_sigma():
    x = _batch(4, 20, 2)
    sigma = torch.tensor([0.1, 0.6, 1.0, 2.0])  # radii 1, 2, 3, 6 in one batch
    expected = torch.stack(
        [TF.gaussian_blur(x[i], [2 * math.ceil(3 * s) + 1] * 2, [s, s]) for i, s in enumerate(sigma.tolist())]
    )
    assert torch.allclose(transforms.gaussian_blur(x, sigma), expected, atol=2e-6)
    # a radius larger than the image allows is capped, as the definition caps it
    small = _batch(2, 6, 3)
    capped = TF.gaussian_blur(small[0], [5, 5], [2.0, 2.0])
    assert torch.allclose(transforms.gaussian_blur(small, torch.tensor([2.0, 2.0]))[0], capped, atol=2e-6)


def test_photometric_at_one_resolution_equals_the_definition():
    """Without a resize in between, the batched ops are the definition's ops (any draw of parameters)."""
    x = _batch(64, 16, 4)
    params = draw_view_params(64, Config(), torch.Generator().manual_seed(0))
    index = torch.arange(64)
    for view in (0, 1):
        fast = photometric(x, params, index, view, torch.ones(64))
        expected = torch.stack([reference_photometric(x[i], params, i, view) for i in range(64)])
        assert torch.allclose(fast, expected, atol=1e-5), view
    # a subset of images, in any order, takes its own parameters
    some = torch.tensor([9, 3, 40])
    assert torch.allclose(
        photometric(x[some], params, some, 1, torch.ones(3)), photometric(x, params, index, 1, torch.ones(64))[some]
    )


def test_grayscale_is_really_applied():
    img = torch.rand(1, 3, 8, 8)
    p = _params(grayscale=torch.tensor([[True, False]]))
    out = photometric(img, p, torch.tensor([0]), 0, torch.ones(1))[0]
    assert torch.allclose(out[0], out[1]) and torch.allclose(out[1], out[2])
    expected = 0.2989 * img[0, 0] + 0.587 * img[0, 1] + 0.114 * img[0, 2]
    assert torch.allclose(out[0], expected, atol=1e-6)
    assert torch.equal(photometric(img, p, torch.tensor([0]), 1, torch.ones(1)), img)


def _test_images(kind: str, n: int, size: int) -> torch.Tensor:
    """uint8 (n, 3, size, size): smooth colour fields, or a sinusoid fine enough for the blur to matter."""
    if kind == "smooth":
        return (_smooth_images(n, size, 0).sigmoid() * 255).round().to(torch.uint8)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    wave = 0.5 + 0.4 * torch.sin(2 * math.pi * (xx + 0.3 * yy) / (size / 8))
    return (torch.stack([wave, 1 - wave, 0.5 * wave + 0.25])[None].repeat(n, 1, 1, 1) * 255).round().to(torch.uint8)


def _fast_and_reference_views(images, params, res):
    n = len(images)
    params.snap_to(images.shape[-1])  # as the data set does: the crops are whole base pixels
    geometry = cut_views(images, params.crop, params.flip, res)
    fast = [denormalize(v) for v in augment(geometry, torch.arange(n), params, images.shape[-1])]
    reference = [
        torch.stack(v) for v in zip(*(reference_views(images[i] / 255, params, i, res) for i in range(n)), strict=True)
    ]
    return fast, reference


@pytest.mark.parametrize("kind", ["smooth", "wave"])
def test_views_equal_the_definition_within_tolerance(kind):
    """The paper's geometry scaled down (128 px bases, 64 px views), every parameter drawn as in training.

    Tolerance, in [0, 1] units: mean absolute difference below 0.006; 99th percentile below 0.04 away from
    the border (4 px) and below 0.045 with it. What differs: uint8 rounding after the resize, the clamps and
    hue's non-linearity against the resize's averaging, and view 1's border, where the blur reflects and
    the resize's filter stops at the crop instead of seeing beyond it.
    """
    images = _test_images(kind, 48, 128)
    params = draw_view_params(48, Config(), torch.Generator().manual_seed(1))
    fast, reference = _fast_and_reference_views(images, params, 64)
    for view in (0, 1):
        diff = (fast[view] - reference[view]).abs()
        assert diff.mean() < 0.006, (view, float(diff.mean()))
        assert diff[..., 4:-4, 4:-4].flatten().quantile(0.99) < 0.04, view
        assert diff.flatten().quantile(0.99) < 0.045, view


def test_blur_sigma_is_drawn_in_base_pixels_and_scaled_to_the_view():
    """Blur only, on a fine wave: the view's sigma must be the base sigma times res / crop side in
    base pixels; leaving it unscaled (sigma in view pixels) would blur twice to four times as much."""
    images = _test_images("wave", 16, 128)
    cfg = Config(p_jitter=0.0, p_grayscale=0.0, p_blur=1.0, blur_sigma=(1.5, 2.0))
    params = draw_view_params(16, cfg, torch.Generator().manual_seed(2))
    fast, reference = _fast_and_reference_views(images, params, 64)
    unscaled = [
        denormalize(v)
        for v in augment(
            cut_views(images, params.crop, params.flip, 64),
            torch.arange(16),
            params,
            64,  # pretending the base were as small as the view: no scaling
        )
    ]
    for view in (0, 1):
        right = (fast[view] - reference[view]).abs()[..., 4:-4, 4:-4].mean()
        wrong = (unscaled[view] - reference[view]).abs()[..., 4:-4, 4:-4].mean()
        assert right < 0.01 and wrong > 4 * right, (view, float(right), float(wrong))


def test_cut_views_on_pixel_boundaries_are_exact_crops_and_flips():
    base = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    crop = torch.tensor([[0.25, 0.125, 0.5], [0.0, 0.0, 1.0]])  # x0 = 8, y0 = 4, side 16 px; the whole image
    views = cut_views(base, crop, torch.tensor([False, False]), 16)
    assert views.dtype == torch.uint8 and views.shape == (2, 2, 3, 16, 16)
    assert torch.equal(views[0, 0], base[0, :, 4:20, 8:24])
    flipped = cut_views(base, crop, torch.tensor([True, False]), 16)
    assert torch.equal(flipped[0, 0], base[0, :, 4:20, 8:24].flip(-1)) and torch.equal(flipped[1], views[1])
    whole = cut_views(base, crop, torch.tensor([False, True]), 32)
    assert torch.equal(whole[1, 0], base[1].flip(-1)) and torch.equal(whole[1, 1], base[1])
    assert cut_views(base[:0], crop[:0], torch.tensor([], dtype=torch.bool), 16).shape == (0, 2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"crop boxes \[\[24, 0, 16\]\] .* outside the 32 px base"):
        cut_views(base[:1], torch.tensor([[0.75, 0.0, 0.5]]), torch.tensor([False]), 16)


def test_cut_views_resize_like_pil_and_view_2_is_the_whole_image():
    """A crop box resized as PIL resizes that box cut out (antialiased bilinear), within one grey level."""
    rng = np.random.default_rng(3)
    base = torch.from_numpy(rng.integers(0, 256, (1, 3, 96, 96), dtype=np.uint8))
    views = cut_views(base, torch.tensor([[10 / 96, 20 / 96, 60 / 96]]), torch.tensor([False]), 24)
    pil = Image.fromarray(base[0].permute(1, 2, 0).numpy())
    expected = [pil.crop((10, 20, 70, 80)).resize((24, 24), Image.BILINEAR), pil.resize((24, 24), Image.BILINEAR)]
    for view, image in enumerate(expected):
        diff = (views[0, view].int() - torch.from_numpy(np.array(image)).permute(2, 0, 1).int()).abs()
        assert diff.max() <= 1, (view, int(diff.max()))


@pytest.mark.parametrize("size", [(24, 24), (96, 130), (7, 50)])
def test_the_gpus_resize_through_float_is_the_uint8_kernels_within_one_grey_level(size):
    """``resize_uint8`` takes floats on a GPU; that way, run here on the CPU, against the CPU's uint8 kernel."""
    images = torch.from_numpy(np.random.default_rng(6).integers(0, 256, (2, 3, 60, 80), dtype=np.uint8))
    through_float = transforms.resize_through_float(images, size)
    assert through_float.dtype == torch.uint8 and through_float.shape == (2, 3, *size)
    assert (through_float.int() - transforms.resize_uint8(images, size).int()).abs().max() <= 1


def test_snapped_crops_are_whole_pixels_inside_the_image_and_nearest_the_draw():
    params = draw_view_params(500, Config(min_scale=0.01), torch.Generator().manual_seed(4))
    drawn = params.crop.clone()
    params.snap_to(37)
    box = params.crop.double() * 37
    assert torch.allclose(box, box.round(), atol=1e-4)
    assert (box[:, 2] >= 1 - 1e-4).all() and (box[:, :2] >= 0).all() and (box[:, :2] + box[:, 2:] <= 37 + 1e-4).all()
    assert ((box - drawn.double() * 37).abs() <= 0.5 + 1e-4).all()  # rounding, not truncation
    tiny = ViewParams(**{**params.__dict__, "crop": torch.tensor([[0.99, 0.99, 0.001]] + [[0.0, 0.0, 1.0]] * 499)})
    assert torch.allclose(tiny.snap_to(37).crop[0] * 37, torch.tensor([36.0, 36.0, 1.0]), atol=1e-4)


def test_crop_flip_on_pixel_boundaries_is_an_exact_crop():
    x = torch.arange(2 * 32 * 32, dtype=torch.float32).view(1, 2, 32, 32)
    crop = torch.tensor([[0.25, 0.125, 0.5]])  # x0 = 8 px, y0 = 4 px, side 16 px
    out = crop_flip(x, crop, torch.tensor([False]), (16, 16))
    assert torch.equal(out, x[..., 4:20, 8:24])
    flipped = crop_flip(x, crop, torch.tensor([True]), (16, 16))
    assert torch.equal(flipped, x[..., 4:20, 8:24].flip(-1))


def test_crop_flip_upsampling_is_bilinear_inside_the_crop():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 32, 32, generator=g)
    crop = torch.tensor([[0.25, 0.25, 0.5]])
    out = crop_flip(x, crop, torch.tensor([False]), (32, 32))
    expected = F.interpolate(x[..., 8:24, 8:24], size=(32, 32), mode="bilinear", align_corners=False)
    # equal away from the border, where interpolate clamps to the crop and grid_sample sees beyond it
    assert torch.allclose(out[..., 1:-1, 1:-1], expected[..., 1:-1, 1:-1], atol=1e-5)


class StridePool(nn.Module):
    """A stand-in network: stride-4 average pooling (with a parameter, for device lookup)."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return F.avg_pool2d(x, 4) + self.dummy


def _smooth_images(n, size, seed):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(n, 3, 4, 4, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_view_feature_maps_agree_where_they_overlap(seed):
    """View 1 cropped on the image and view 2 cropped on the feature map land on one grid."""
    cfg = Config(channels_last=False)
    images = _smooth_images(8, 96, seed)
    params = draw_view_params(8, cfg, torch.Generator().manual_seed(seed))
    view1 = crop_flip(images, params.crop, params.flip, (96, 96))
    f1, f2 = view_features(StridePool(), view1, images, params.crop, params.flip, cfg)
    aligned = (f1 - f2).abs().mean()
    unflipped = crop_flip(F.avg_pool2d(images, 4), params.crop, ~params.flip, (24, 24))
    wrong = (f1 - F.normalize(unflipped, dim=1)).abs().mean()
    assert aligned < 0.02
    assert wrong > 5 * aligned  # a missing or extra flip would be caught


def test_dataset_views_are_aligned_end_to_end():
    from picie_lib.data.base import SceneDataset

    class Smooth(SceneDataset):
        def __init__(self):
            super().__init__("train", 64)
            self.images = (_smooth_images(6, 64, 3).sigmoid() * 255).to(torch.uint8)
            self.base_size = 64

        def __len__(self):
            return 6

        def load(self, i):
            return self.images[i], None

    cfg = Config(p_jitter=0.0, p_blur=0.0, p_grayscale=0.0, channels_last=False)
    ds = Smooth()
    ds.set_view_params(draw_view_params(6, cfg, torch.Generator().manual_seed(5)))
    items = [ds[i] for i in range(6)]
    idx, views = torch.tensor([i for i, _ in items]), torch.stack([v for _, v in items])
    f1, f2 = batch_features(StridePool(), ds, idx, views, cfg)
    assert (f1 - f2).abs().mean() < 0.02


def test_center_crop_resize_shorter_side_then_centre():
    image = torch.rand(3, 40, 80)
    label = torch.arange(80).repeat(40, 1)  # label = column index
    img, lab = center_crop_resize(image, label, 20)
    assert img.shape == (3, 20, 20) and lab.shape == (20, 20)
    # shorter side 40 -> 20 halves the width to 40; the centre crop keeps columns 10..29 of 40,
    # i.e. original columns 20..59; nearest sampling keeps original label values
    assert lab.dtype == torch.int64
    assert set(lab.unique().tolist()) <= set(range(20, 60))
    assert lab[0, 0] in (20, 21) and lab[0, -1] in (58, 59)
    assert math.isclose(float(lab.float().mean()), 39.5, abs_tol=1.0)
    small = torch.rand(3, 10, 12)
    img2, lab2 = center_crop_resize(small, None, 32)  # smaller than the crop: upsampled
    assert img2.shape == (3, 32, 32) and lab2 is None
    # uint8 images are resized as uint8 (what the workers send): within rounding of the float resize
    as_bytes = (image * 255).round().to(torch.uint8)
    img3, _ = center_crop_resize(as_bytes, None, 20)
    assert img3.dtype == torch.uint8
    assert (img3.float() - center_crop_resize(as_bytes.float(), None, 20)[0]).abs().max() <= 1.0


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("per_call", [None, 2])
def test_images_of_one_size_made_together_equal_each_made_alone(dtype, per_call, monkeypatch):
    """A batch's images go through the square base and the evaluation crop a size at a time (one resize per
    size, not per image on a GPU), in calls of a bounded size: the same pixels, bit for bit, in the batch's
    order, as one image at a time."""
    if per_call:  # a size's three images in two calls
        monkeypatch.setattr(transforms, "MAX_VALUES_PER_CALL", per_call * 3 * 30 * 40)
    g = torch.Generator().manual_seed(0)
    shapes = [(30, 40), (40, 30), (30, 40), (25, 25), (40, 30), (30, 40)]
    images = [torch.randint(0, 256, (3, *hw), generator=g).to(dtype) for hw in shapes]
    if dtype == torch.uint8:  # the square base is made of uint8 images only
        made = [square_base(image, 24) for image in images]
        assert torch.equal(by_size(images, lambda batch: square_base(batch, 24)), torch.stack(made))
    calls = []

    def crop(batch):
        calls.append(batch.shape)
        return center_crop_resize(batch, None, 16)[0]

    crops = torch.stack([center_crop_resize(image, None, 16)[0] for image in images])
    together = by_size(images, crop)
    assert together.dtype == dtype and torch.equal(together, crops)
    assert sorted(shape[0] for shape in calls) == ([1, 1, 2, 2] if per_call else [1, 2, 3])
    same = [0, 2, 5]  # one size
    alone = by_size([images[i] for i in same], lambda batch: center_crop_resize(batch, None, 16)[0])
    assert torch.equal(alone, crops[same])
