"""The two views: parameters, photometric ops, and the crop/flip that keeps feature maps aligned."""

import math

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn

from picie_lib.config import Config
from picie_lib.train import view_features
from picie_lib.transforms import (
    ViewParams,
    center_crop_resize,
    crop_flip,
    draw_view_params,
    make_views,
    normalize,
    photometric,
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


def test_photometric_ops_follow_torchvision_in_order():
    g = torch.Generator().manual_seed(0)
    img = torch.rand(3, 16, 16, generator=g)
    on = torch.zeros(1, 2, 4, dtype=torch.bool)
    on[0, 1] = True
    jitter = torch.tensor([[[1.0, 1.0, 1.0, 0.0], [1.2, 0.8, 1.1, 0.05]]])
    p = _params(jitter_on=on, jitter=jitter)
    assert torch.equal(photometric(img, p, 0, 0), img)  # nothing on for view 1
    expected = TF.adjust_hue(TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(img, 1.2), 0.8), 1.1), 0.05)
    assert torch.allclose(photometric(img, p, 0, 1), expected)


def test_grayscale_is_really_applied():
    img = torch.rand(3, 8, 8)
    p = _params(grayscale=torch.tensor([[True, False]]))
    out = photometric(img, p, 0, 0)
    assert torch.allclose(out[0], out[1]) and torch.allclose(out[1], out[2])
    expected = 0.2989 * img[0] + 0.587 * img[1] + 0.114 * img[2]
    assert torch.allclose(out[0], expected, atol=1e-3)
    assert torch.equal(photometric(img, p, 0, 1), img)


def test_blur_matches_torchvision():
    img = torch.rand(3, 20, 20)
    p = _params(blur_sigma=torch.tensor([[1.0, 0.0]]))
    assert torch.allclose(photometric(img, p, 0, 0), TF.gaussian_blur(img, [7, 7], [1.0, 1.0]))


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

        def __len__(self):
            return 6

        def load(self, i):
            return self.images[i], None

    cfg = Config(p_jitter=0.0, p_blur=0.0, p_grayscale=0.0, channels_last=False)
    ds = Smooth()
    ds.set_view_params(draw_view_params(6, cfg, torch.Generator().manual_seed(5)))
    idx, v1, v2 = (
        torch.stack(t) if isinstance(t[0], torch.Tensor) else torch.tensor(t)
        for t in zip(*[ds[i] for i in range(6)], strict=True)
    )
    f1, f2 = view_features(StridePool(), v1, v2, ds.view_params.crop[idx], ds.view_params.flip[idx], cfg)
    assert (f1 - f2).abs().mean() < 0.02


def test_make_views_normalises_and_sizes():
    img = torch.rand(3, 128, 128)
    p = _params(crop=torch.tensor([[0.1, 0.2, 0.6]]))
    v1, v2 = make_views(img, p, 0, 64)
    assert v1.shape == v2.shape == (3, 64, 64)
    expected_v2 = normalize(F.interpolate(img[None], size=(64, 64), mode="bilinear", antialias=True)[0])
    assert torch.allclose(v2, expected_v2, atol=1e-5)


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
