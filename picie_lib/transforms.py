"""PiCIE's two views: photometric invariance and geometric equivariance (design section 3).

Per image and per epoch, parameters are drawn once (``draw_view_params``), so the clustering
pass and the training pass of an epoch see identical views, as the original's
``init_transforms()``. View 1 is cropped and flipped on the image; view 2 goes through the
network whole and the same crop and flip are applied to its feature map. Both crops go
through one function, ``crop_flip``, so that the two feature maps are pixel-aligned by
construction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ViewParams:
    """One epoch's view parameters for N images (index 0 = view 1, 1 = view 2)."""

    jitter_on: torch.Tensor  # (N, 2, 4) bool: brightness, contrast, saturation, hue applied?
    jitter: torch.Tensor  # (N, 2, 4) float: the three factors and the hue shift
    blur_sigma: torch.Tensor  # (N, 2) float, 0 where no blur is applied
    grayscale: torch.Tensor  # (N, 2) bool
    crop: torch.Tensor  # (N, 3) float: x0, y0, side, as fractions of the image side
    flip: torch.Tensor  # (N,) bool

    def __len__(self) -> int:
        return len(self.flip)


def draw_view_params(n: int, cfg, generator: torch.Generator) -> ViewParams:
    """Draw every random choice of one epoch's views for ``n`` images (``cfg``: a Config)."""

    def uniform(shape: tuple[int, ...], lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=generator, dtype=torch.float64)

    ranges = (cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)
    jitter = torch.stack([uniform((n, 2), lo, hi) for lo, hi in ranges], dim=-1)
    jitter_on = torch.rand((n, 2, 4), generator=generator, dtype=torch.float64) < cfg.p_jitter
    blur_on = torch.rand((n, 2), generator=generator, dtype=torch.float64) < cfg.p_blur
    blur_sigma = torch.where(blur_on, uniform((n, 2), *cfg.blur_sigma), torch.zeros((n, 2), dtype=torch.float64))
    grayscale = torch.rand((n, 2), generator=generator, dtype=torch.float64) < cfg.p_grayscale
    side = uniform((n,), cfg.min_scale, 1.0)
    x0 = torch.rand(n, generator=generator, dtype=torch.float64) * (1 - side)
    y0 = torch.rand(n, generator=generator, dtype=torch.float64) * (1 - side)
    flip = torch.rand(n, generator=generator, dtype=torch.float64) < cfg.p_flip
    return ViewParams(
        jitter_on=jitter_on,
        jitter=jitter.float(),
        blur_sigma=blur_sigma.float(),
        grayscale=grayscale,
        crop=torch.stack([x0, y0, side], dim=1).float(),
        flip=flip,
    )


def photometric(image: torch.Tensor, params: ViewParams, index: int, view: int) -> torch.Tensor:
    """Colour jitter (B, C, S, H in that order, each on its own coin), blur, grayscale.

    ``image``: float (3, H, W) in [0, 1]. Grayscale is really applied (the original's ``--grey``
    never was, picie.md section 4). Blur and grayscale are both linear, so their order is moot.
    """
    ops = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    for k, op in enumerate(ops):
        if params.jitter_on[index, view, k]:
            image = op(image, float(params.jitter[index, view, k]))
    sigma = float(params.blur_sigma[index, view])
    if sigma > 0:
        radius = min(math.ceil(3 * sigma), (min(image.shape[-2:]) - 1) // 2)
        image = TF.gaussian_blur(image, kernel_size=[2 * radius + 1] * 2, sigma=[sigma, sigma])
    if params.grayscale[index, view]:
        image = TF.rgb_to_grayscale(image, num_output_channels=3)
    return image


def crop_flip(x: torch.Tensor, crop: torch.Tensor, flip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop each map of ``x`` (B, C, H, W) to its square box, resize to ``size``, flip where asked.

    ``crop`` is (B, 3): x0, y0, side in fractions of the map's side; ``flip`` is (B,) bool. Used on
    view-1 images and on view-2 feature maps, so both land on the same pixel grid: output pixel
    (i, j) samples the point ((j + 0.5) / w * side + x0) of the input (bilinear, align_corners=False),
    mirrored in x where flipped.
    """
    crop = crop.to(device=x.device, dtype=torch.float32)
    x0, y0, side = crop.unbind(dim=1)
    sign = 1.0 - 2.0 * flip.to(device=x.device, dtype=torch.float32)
    theta = torch.zeros(len(x), 2, 3, device=x.device)
    theta[:, 0, 0] = side * sign
    theta[:, 0, 2] = 2 * x0 - 1 + side
    theta[:, 1, 1] = side
    theta[:, 1, 2] = 2 * y0 - 1 + side
    grid = F.affine_grid(theta, [len(x), x.shape[1], *size], align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="border", align_corners=False).to(x.dtype)


def normalize(image: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std, as PiCIE's ``TensorTransform``; float (3, H, W) in [0, 1] in."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype).view(3, 1, 1)
    return (image - mean) / std


def resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize a float (3, H, W) image to (size, size), bilinear with antialiasing."""
    if image.shape[-2:] == (size, size):
        return image
    return F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def make_views(image: torch.Tensor, params: ViewParams, index: int, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    """PiCIE's training views of one base image (float (3, H, W) in [0, 1]).

    View 1: photometric set 0, then the crop and flip, resized to ``res``.
    View 2: photometric set 1, resized whole to ``res`` (its crop comes after the network).
    """
    view1 = photometric(image, params, index, 0)
    view1 = crop_flip(view1[None], params.crop[index : index + 1], params.flip[index : index + 1], (res, res))[0]
    view2 = resize(photometric(image, params, index, 1), res)
    return normalize(view1), normalize(view2)


def center_crop_resize(image: torch.Tensor, label: torch.Tensor | None, res: int):
    """Evaluation preprocessing: shorter side to ``res`` (bilinear image, nearest label), centre crop.

    ``image`` float (3, H, W); ``label`` int64 (H, W) or None.
    """
    h, w = image.shape[-2:]
    scale = res / min(h, w)
    new_h, new_w = max(res, round(h * scale)), max(res, round(w * scale))
    if (new_h, new_w) != (h, w):
        image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)[0]
        if label is not None:
            label = F.interpolate(label[None, None].float(), size=(new_h, new_w), mode="nearest-exact")[0, 0].long()
    top, left = (new_h - res) // 2, (new_w - res) // 2
    image = image[:, top : top + res, left : left + res]
    if label is not None:
        label = label[top : top + res, left : left + res]
    return image, label
