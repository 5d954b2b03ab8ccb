"""PiCIE's two views: photometric invariance and geometric equivariance (design section 3).

Per image and per epoch, parameters are drawn once (``draw_view_params``), so the clustering
pass and the training pass of an epoch see identical views, as the original's
``init_transforms()``. View 1 is cropped and flipped on the image; view 2 goes through the
network whole and the same crop and flip are applied to its feature map (``crop_flip``), so that
the two feature maps are pixel-aligned.

**The definition** (``reference_views``, one image at a time): the photometric ops on the square
base image (brightness, contrast, saturation, hue, each on its own coin; blur; grayscale), then
view 1's crop and flip resized to ``res``, and view 2 resized whole to ``res``.

**How they are made** (same views, computed where they are cheap, as batched tensor ops on the
network's device, or on CPU tensors where there is no GPU):

1. ``square_base`` and ``cut_views``: the square base image (shorter side to ``base_res``, centre crop),
   then view 1's crop box resized to ``res`` and flipped, and the whole base resized to ``res``; uint8,
   antialiased bilinear (``resize_uint8``). The crop boxes are whole base pixels (``ViewParams.snap_to``),
   so view 1 is a plain slice and ``crop_flip`` cuts view 2's feature map at exactly the same box.
2. ``augment``, per batch: the photometric ops at ``res``, then ImageNet
   normalisation. Applied after the resize they cost a quarter or less of what they cost on a 640 px
   base. The colour ops are per-pixel and so commute with the crop and (up to their clamps and the
   hue's non-linearity) with the resize; contrast is the exception, its reference grey level is the
   mean over the *whole* image, so view 1 takes it from the whole image (raw view 2). The blur's
   sigma is drawn in base-image pixels and scaled to the view's grid (x ``res / crop side``).

The two agree within a stated tolerance (``tests/test_transforms.py``); they differ at view 1's
border (the blur sees reflected pixels instead of those beyond the crop) and by uint8 rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


@dataclass
class ViewParams:
    """One epoch's view parameters for N images (index 0 = view 1, 1 = view 2)."""

    jitter_on: torch.Tensor  # (N, 2, 4) bool: brightness, contrast, saturation, hue applied?
    jitter: torch.Tensor  # (N, 2, 4) float: the three factors and the hue shift
    blur_sigma: torch.Tensor  # (N, 2) float, in pixels of the base image; 0 where no blur is applied
    grayscale: torch.Tensor  # (N, 2) bool
    crop: torch.Tensor  # (N, 3) float: x0, y0, side, as fractions of the image side
    flip: torch.Tensor  # (N,) bool

    def __len__(self) -> int:
        return len(self.flip)

    def snap_to(self, side: int) -> ViewParams:
        """Round the crop boxes to whole pixels of a ``side`` x ``side`` base image, in place (at least one
        pixel, inside the image): view 1 is then cut without resampling its box's edges, and view 2's
        feature crop (``crop_flip``, same fractions) lands on exactly that box. Returns ``self``."""
        box = (self.crop.double() * side).round()
        box[:, 2].clamp_(1, side)
        box[:, :2] = torch.minimum(box[:, :2], side - box[:, 2:3]).clamp_(min=0)
        self.crop = (box / side).float()
        return self


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


# ---- step 1: geometry, per batch ----------------------------------------------------------------------
def resize_uint8(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 (B, 3, H, W) images resized to ``size`` (h, w): bilinear, antialiased when shrinking (PIL's
    BILINEAR within 2 grey levels, nearly all pixels equal or 1 apart). On a CPU in uint8 and channels-last
    (its fast kernel); on a GPU, whose kernel takes floats, ``resize_through_float``."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    if images.device.type != "cpu":
        return resize_through_float(images, size)
    channels_last = images.contiguous(memory_format=torch.channels_last)
    return F.interpolate(channels_last, size=size, mode="bilinear", antialias=True).contiguous()


def resize_through_float(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``resize_uint8`` in float32, rounded back to uint8 (the GPU's way; within 1 grey level of the uint8 kernel)."""
    out = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return out.round_().clamp_(0, 255).to(torch.uint8)


ASPECT_LIMIT = 4  # the longest side a resize sees, in shorter sides: beyond it, the source's centre is cut first


def cap_aspect(image: torch.Tensor) -> torch.Tensor:
    """The centre of an image (or label map, ``(..., H, W)``) whose longer side exceeds ``ASPECT_LIMIT`` shorter
    sides, cut to that many: the centre crop that follows keeps the same middle, and a 20000 x 1 image costs what
    a 4 x 1 one does instead of a resize to 12.8 million columns. Images within the limit are returned as they are."""
    h, w = image.shape[-2:]
    if w > ASPECT_LIMIT * h:
        keep = ASPECT_LIMIT * h
        return image[..., (w - keep) // 2 : (w - keep) // 2 + keep]
    if h > ASPECT_LIMIT * w:
        keep = ASPECT_LIMIT * w
        return image[..., (h - keep) // 2 : (h - keep) // 2 + keep, :]
    return image


def square_base(image: torch.Tensor, side: int) -> torch.Tensor:
    """PiCIE's ``BaseTransform(res2)`` on a uint8 (3, H, W) image, or on a batch (B, 3, H, W) of images of one
    size: shorter side to ``side`` (bilinear), then a centre ``side`` x ``side`` crop, with torchvision's
    rounding (longer side ``int(side * long / short)``, offsets ``round(d / 2)``); an extreme aspect ratio is
    cut first (``cap_aspect``)."""
    image = cap_aspect(image)
    h, w = image.shape[-2:]
    new_h, new_w = (int(side * h / w), side) if w <= h else (side, int(side * w / h))
    resized = resize_uint8(image if image.dim() == 4 else image[None], (new_h, new_w))
    top, left = int(round((new_h - side) / 2.0)), int(round((new_w - side) / 2.0))
    resized = resized[..., top : top + side, left : left + side]
    return resized if image.dim() == 4 else resized[0]


# the most values an image batch given to one call of ``by_size``'s ``make`` holds: on a GPU the resize copies it to
# float32 (128 MiB here), in the thread's own memory pool, beside the network's (36 of the benchmark's 640x480 images)
MAX_VALUES_PER_CALL = 2**25


def by_size(images: list[torch.Tensor], make) -> torch.Tensor:
    """``torch.stack([make(image[None])[0] for image in images])``, with the images of one size made together, in
    calls of ``make`` ((n, C, H, W) in, (n, ...) out) of at most ``MAX_VALUES_PER_CALL`` input values. On a GPU a
    resize costs a few kernel launches per call, whatever the batch: a batch's images of the same size take a few
    calls, not one per image."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        groups.setdefault(tuple(image.shape), []).append(i)
    calls = []
    for members in groups.values():
        per_call = max(1, MAX_VALUES_PER_CALL // max(1, images[members[0]].numel()))
        calls += [members[start : start + per_call] for start in range(0, len(members), per_call)]
    if len(calls) == 1:  # one call (one image per item on the CPU's path): no copy into a new batch
        return make(images[0][None] if len(images) == 1 else torch.stack(images))
    out = None
    for members in calls:
        made = make(torch.stack([images[i] for i in members]))
        if out is None:
            out = made.new_empty((len(images), *made.shape[1:]))
        out[members] = made
    return out


def cut_views(bases: torch.Tensor, crop: torch.Tensor, flip: torch.Tensor, res: int) -> torch.Tensor:
    """Both views of square base images uint8 (B, 3, S, S), before their photometric ops: uint8
    (B, 2, 3, res, res) on the bases' device.

    View 1 is the crop box ``crop`` (B, 3: x0, y0, side as fractions of the side, rounded to whole pixels
    as ``ViewParams.snap_to`` does) resized to ``res`` and mirrored where ``flip`` (B,); view 2 is the
    whole image resized to ``res``. Output pixel j samples the box at (j + 0.5) / res of its side, the grid
    ``crop_flip`` uses on view 2's feature map.
    """
    side = bases.shape[-1]
    boxes = (crop.double() * side).round().long().tolist()
    outside = [box for box in boxes if min(box) < 0 or box[2] < 1 or max(box[0], box[1]) + box[2] > side]
    if outside:
        raise ValueError(f"crop boxes {outside[:3]} (x0, y0, side in pixels) outside the {side} px base")
    view1 = bases.new_empty((len(bases), 3, res, res))
    for i, (x, y, s) in enumerate(boxes):  # a box per image: one resize each (cheap next to the network)
        view1[i] = resize_uint8(bases[i : i + 1, :, y : y + s, x : x + s], (res, res))[0]
    flipped = flip.nonzero().flatten().to(bases.device)
    view1[flipped] = view1[flipped].flip(-1)
    return torch.stack([view1, resize_uint8(bases, (res, res))], dim=1)


# ---- step 2: photometry, per batch (the network's device) -----------------------------------------
def _gray(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 1, H, W) luma."""
    r, g, b = x.unbind(1)
    return (r * GRAY_WEIGHTS[0] + g * GRAY_WEIGHTS[1] + b * GRAY_WEIGHTS[2]).unsqueeze(1)


def _per_image(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-image values (B,) shaped to broadcast over ``like`` (B, C, H, W), on its device and dtype."""
    return v.to(like.device, like.dtype, non_blocking=True).view(-1, 1, 1, 1)


def _blend(a: torch.Tensor, b: torch.Tensor, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend``: ``ratio * a + (1 - ratio) * b``, clamped to [0, 1]; ``ratio`` per image."""
    ratio = _per_image(ratio, a)
    return (ratio * a + (1 - ratio) * b).clamp_(0, 1)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (x * _per_image(factor, x)).clamp_(0, 1)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor, mean_gray: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean grey level ``mean_gray`` (B,) (torchvision takes it from ``x``)."""
    return _blend(x, _per_image(mean_gray, x), factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue by ``shift`` (B,) turns, keeping saturation and value (torchvision's
    ``adjust_hue``, with the closed-form HSV -> RGB: channel n = V - C clamp(min(k, 4 - k), 0, 1),
    k = (n + 6 H) mod 6 for n = 5, 3, 1, C = max - min)."""
    r, g, b = x.unbind(1)
    high = torch.maximum(torch.maximum(r, g), b)
    chroma = high - torch.minimum(torch.minimum(r, g), b)
    is_r = high == r
    is_g = (high == g) & ~is_r
    is_b = ~(is_r | is_g)
    # hue in sixths of a turn: (g - b) / C where red is the maximum, 2 + (b - r) / C for green, 4 + (r - g) / C
    sixths = torch.where(is_r, g - b, torch.where(is_g, b - r, r - g))
    sixths /= chroma + (chroma == 0)  # grey pixels (C = 0) stay grey whatever their hue
    sixths += 2 * is_g + 4 * is_b + 6 * _per_image(shift, x)[:, 0]
    k = torch.remainder(sixths.unsqueeze(1) + torch.tensor([5.0, 3.0, 1.0], device=x.device).view(1, 3, 1, 1), 6)
    return high.unsqueeze(1) - chroma.unsqueeze(1) * torch.minimum(k, 4 - k).clamp_(0, 1)


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """(B, 2 radius + 1) normalised 1-d Gaussian taps, one row per sigma; an image whose own radius
    ``min(ceil(3 sigma), radius)`` is smaller gets zeros beyond it (torchvision's kernel, padded)."""
    taps = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    own = torch.clamp(torch.ceil(3 * sigma), max=radius)
    weights = torch.exp(-0.5 * (taps / sigma[:, None]) ** 2) * (taps.abs() <= own[:, None])
    return weights / weights.sum(1, keepdim=True)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of each image with its own ``sigma`` (B,) in pixels, reflect padding
    (torchvision's ``gaussian_blur`` with kernel side 2 ceil(3 sigma) + 1, capped by the image): the taps
    accumulated in place along each axis, a kernel per image. ``sigma`` may stay on the CPU."""
    h, w = x.shape[-2:]
    radius = min(math.ceil(3 * float(sigma.max())), (min(h, w) - 1) // 2)
    if radius == 0:
        return x
    taps = gaussian_kernels(sigma, radius).to(x.device, x.dtype, non_blocking=True)
    padded = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    rows = torch.zeros_like(padded[..., :w])
    for t in range(2 * radius + 1):
        rows.addcmul_(padded[..., t : t + w], _per_image(taps[:, t], x))
    out = torch.zeros_like(x)
    for t in range(2 * radius + 1):
        out.addcmul_(rows[..., t : t + h, :], _per_image(taps[:, t], x))
    return out


def _where(mask: torch.Tensor, op, x: torch.Tensor, *per_image: torch.Tensor) -> torch.Tensor:
    """``op(x, *per_image)`` on the images where ``mask`` (B,) is set; the others untouched. The mask
    lives on the CPU, so that choosing the images never waits for the GPU."""
    chosen = mask.nonzero().flatten()
    if len(chosen) == 0:
        return x
    if len(chosen) == len(x):
        return op(x, *per_image)
    x = x.clone()
    on_device = chosen.to(x.device, non_blocking=True)
    x[on_device] = op(x[on_device], *(v[on_device if v.device == x.device else chosen] for v in per_image))
    return x


def photometric(
    x: torch.Tensor,
    params: ViewParams,
    index: torch.Tensor,
    view: int,
    blur_scale: torch.Tensor,
    whole: torch.Tensor | None = None,
) -> torch.Tensor:
    """The photometric ops of one view for a batch: float (B, 3, H, W) in [0, 1] in and out.

    Colour jitter (B, C, S, H in that order, each on its own coin), blur, grayscale (really applied;
    the original's ``--grey`` never was, picie.md section 4). ``index`` (B,) are the images' indices
    into ``params``; ``blur_scale`` (B,) converts base-image pixels to this view's pixels; ``whole``
    (B, 3, H', W'), if given, is the whole image whose mean grey level (after this view's brightness)
    is contrast's reference, else ``x`` itself.
    """
    on, factor = params.jitter_on[index, view], params.jitter[index, view]  # CPU: choices never wait for a GPU
    x = _where(on[:, 0], adjust_brightness, x, factor[:, 0])
    if on[:, 1].any():
        reference = x if whole is None else _where(on[:, 0], adjust_brightness, whole, factor[:, 0])
        x = _where(on[:, 1], adjust_contrast, x, factor[:, 1], _gray(reference).mean(dim=(1, 2, 3)))
    x = _where(on[:, 2], adjust_saturation, x, factor[:, 2])
    x = _where(on[:, 3], adjust_hue, x, factor[:, 3])
    sigma = params.blur_sigma[index, view] * blur_scale
    x = _where(sigma > 0, gaussian_blur, x, sigma)
    return _where(params.grayscale[index, view], lambda y: _gray(y).expand_as(y).contiguous(), x)


CPU_CHUNK = 4  # images per photometric step on a CPU: a few images' planes stay in cache between ops


def augment(
    views: torch.Tensor, index: torch.Tensor, params: ViewParams, base_size: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's inputs of a batch: ``views`` uint8 (B, 2, 3, res, res) from ``cut_views``,
    ``index`` (B,) into ``params``, on ``device``; both views photometric-augmented and normalised,
    float (B, 3, res, res) each. ``base_size``: the side of the base images, in whose pixels the blur
    sigma is drawn. A GPU takes the batch at once; a CPU a few images at a time (same numbers). The
    parameters and ``index`` stay on the CPU."""
    views = views.to(device, non_blocking=True)
    step = len(views) if views.device.type == "cuda" else CPU_CHUNK
    res = views.shape[-1]
    out1, out2 = [], []
    for lo in range(0, len(views), step):
        x, idx = views[lo : lo + step].float().div_(255), index[lo : lo + step]
        side = params.crop[idx, 2]
        out1.append(normalize(photometric(x[:, 0], params, idx, 0, res / (side * base_size), whole=x[:, 1])))
        out2.append(normalize(photometric(x[:, 1], params, idx, 1, torch.full_like(side, res / base_size))))
    return torch.cat(out1), torch.cat(out2)


def to_network_input(images: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
    """uint8 (B, 3, H, W) images on ``device`` as normalised float (evaluation: no augmentation)."""
    return normalize(images.to(device, non_blocking=True).float().div_(255))


def normalize(image: torch.Tensor) -> torch.Tensor:
    """ImageNet mean/std, as PiCIE's ``TensorTransform``; float (..., 3, H, W) in [0, 1] in."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image - mean) / std


def denormalize(image: torch.Tensor) -> torch.Tensor:
    """``normalize``'s inverse, clamped to [0, 1]."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=image.dtype, device=image.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=image.dtype, device=image.device).view(3, 1, 1)
    return (image * std + mean).clamp(0, 1)


# ---- the shared geometry and the definition --------------------------------------------------------
def crop_flip(x: torch.Tensor, crop: torch.Tensor, flip: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop each map of ``x`` (B, C, H, W) to its square box, resize to ``size``, flip where asked.

    ``crop`` is (B, 3): x0, y0, side in fractions of the map's side; ``flip`` is (B,) bool. Used on
    view-2 feature maps (and on view-1 images by ``reference_views``), so both land on the same pixel
    grid: output pixel (i, j) samples the point ((j + 0.5) / w * side + x0) of the input (bilinear,
    align_corners=False), mirrored in x where flipped.
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


def reference_photometric(image: torch.Tensor, params: ViewParams, index: int, view: int) -> torch.Tensor:
    """The photometric ops as defined, on one float (3, H, W) image at its base resolution, with
    torchvision's per-image functions (the slow path ``photometric`` is held to)."""
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


def reference_views(base: torch.Tensor, params: ViewParams, index: int, res: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition of PiCIE's training views of one base image (float (3, S, S) in [0, 1]), in
    [0, 1], not normalised: the photometric ops at the base resolution, then view 1's crop and flip
    (``crop_flip``) and view 2's whole-image resize (antialiased bilinear) to ``res``."""
    view1 = reference_photometric(base, params, index, 0)
    view1 = crop_flip(view1[None], params.crop[index : index + 1], params.flip[index : index + 1], (res, res))[0]
    view2 = reference_photometric(base, params, index, 1)
    if view2.shape[-1] != res:
        view2 = F.interpolate(view2[None], size=(res, res), mode="bilinear", antialias=True, align_corners=False)[0]
    return view1, view2


def _center_crop_geometry(h: int, w: int, res: int) -> tuple[int, int, int, int]:
    """Evaluation geometry of an h x w image: (new_h, new_w) with the shorter side ``res``, then (top, left)."""
    scale = res / min(h, w)
    new_h, new_w = max(res, round(h * scale)), max(res, round(w * scale))
    return new_h, new_w, (new_h - res) // 2, (new_w - res) // 2


def center_crop_label(label: torch.Tensor, res: int) -> torch.Tensor:
    """A label map (H, W) cut as ``center_crop_resize`` cuts its image: nearest, shorter side ``res``, centre."""
    label = cap_aspect(label)
    new_h, new_w, top, left = _center_crop_geometry(*label.shape[-2:], res)
    if (new_h, new_w) != tuple(label.shape[-2:]):
        label = F.interpolate(label[None, None].float(), size=(new_h, new_w), mode="nearest-exact")[0, 0].long()
    return label[top : top + res, left : left + res]


def center_crop_resize(image: torch.Tensor, label: torch.Tensor | None, res: int):
    """Evaluation preprocessing: shorter side to ``res`` (bilinear image, nearest label), centre crop; an extreme
    aspect ratio is cut first (``cap_aspect``).

    ``image`` uint8 (3, H, W), or a batch (B, 3, H, W) of one size, on any device (``resize_uint8``: PIL's filter,
    as PiCIE's ``TF.resize`` of a PIL image, within 2 grey levels) or float; ``label`` int64 (H, W) or None, on any
    device.
    """
    image = cap_aspect(image)
    new_h, new_w, top, left = _center_crop_geometry(*image.shape[-2:], res)
    batch = image if image.dim() == 4 else image[None]
    if (new_h, new_w) != tuple(image.shape[-2:]):
        if image.dtype == torch.uint8:
            batch = resize_uint8(batch, (new_h, new_w))
        else:
            batch = F.interpolate(batch, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
    batch = batch[..., top : top + res, left : left + res].contiguous()
    return (batch if image.dim() == 4 else batch[0]), (None if label is None else center_crop_label(label, res))
