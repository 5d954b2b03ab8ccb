"""PiCIE's network: a ResNet-18 backbone and its FPN decoder (picie.md section 1).

The decoder is deliberately plain: four 1x1 lateral convolutions to 128 channels and a
top-down bilinear upsample-and-add. There are no 3x3 convolutions, no normalisation and no
ReLU in it, exactly as in the official ``modules/fpn.py``. The output is a 128-d feature at
stride 4 (a 320x320 input gives an 80x80 map). The model does not normalise its output;
the training and evaluation code L2-normalises per pixel (``F.normalize(dim=1)``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

from picie_lib.runs import BF16_FLAGS, cpu_flags, first_line, load_tensors

FEATURE_DIM = 128
FEATURE_STRIDE = 4


class ResNet18Backbone(nn.Module):
    """torchvision's ResNet-18 without avgpool and fc, returning res2..res5.

    Attribute names match torchvision's so that its state dicts load directly.
    """

    def __init__(self) -> None:
        super().__init__()
        r = resnet18(weights=None)  # torchvision's own (kaiming) initialisation
        self.conv1, self.bn1, self.relu, self.maxpool = r.conv1, r.bn1, r.relu, r.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = r.layer1, r.layer2, r.layer3, r.layer4

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        res2 = self.layer1(x)  # (B, 64, H/4, W/4)
        res3 = self.layer2(res2)  # (B, 128, H/8, W/8)
        res4 = self.layer3(res3)  # (B, 256, H/16, W/16)
        res5 = self.layer4(res4)  # (B, 512, H/32, W/32)
        return {"res2": res2, "res3": res3, "res4": res4, "res5": res5}


class FPNDecoder(nn.Module):
    """PiCIE's FPN decoder for ResNet-18 (``mfactor=1``, ``out_dim=128``)."""

    def __init__(self, out_dim: int = FEATURE_DIM) -> None:
        super().__init__()
        # Names follow the official code: layer1 acts on res5, layer4 on res2.
        self.layer1 = nn.Conv2d(512, out_dim, kernel_size=1)
        self.layer2 = nn.Conv2d(256, out_dim, kernel_size=1)
        self.layer3 = nn.Conv2d(128, out_dim, kernel_size=1)
        self.layer4 = nn.Conv2d(64, out_dim, kernel_size=1)

    @staticmethod
    def _upsample_add(top: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
        return F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=False) + lateral

    def forward(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        o1 = self.layer1(feats["res5"])
        o2 = self._upsample_add(o1, self.layer2(feats["res4"]))
        o3 = self._upsample_add(o2, self.layer3(feats["res3"]))
        return self._upsample_add(o3, self.layer4(feats["res2"]))  # (B, 128, H/4, W/4)


class PanopticFPN(nn.Module):
    """ResNet-18 + FPN decoder: ``[B, 3, H, W] -> [B, 128, H/4, W/4]`` (11,299,904 parameters).

    ``pretrained`` chooses the backbone weights: ``None`` (random, torchvision's init),
    ``"imagenet"`` (torchvision's supervised ImageNet weights, fetched by its weights API, as
    PiCIE's ``--pretrain``), the path of the built-in pretext backbone (``pretext.resolve_pretrained``
    turns the name ``"pretext"`` into it, training it once) or the path of a ResNet-18 state dict saved
    with ``torch.save``.
    """

    def __init__(self, pretrained: str | Path | None = None) -> None:
        super().__init__()
        self.backbone = ResNet18Backbone()
        self.decoder = FPNDecoder()
        if pretrained is not None:
            state = load_backbone_state_dict(pretrained)
            try:
                self.backbone.load_state_dict(state)
            except RuntimeError as err:  # a tensor of another shape
                raise ValueError(f"pretrained={str(pretrained)!r} does not fit ResNet-18 ({first_line(err)})") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.backbone(x))


def load_backbone_state_dict(source: str | Path) -> dict[str, torch.Tensor]:
    """Return a backbone state dict from ``"imagenet"`` or a file, with fc.* dropped.

    A file may hold a torchvision ResNet-18 state dict, a ``PanopticFPN`` state dict (its
    ``backbone.`` entries are used) or either of those under a ``"state_dict"`` or ``"model"``
    key. It is read with ``weights_only=True``: nothing but tensors is unpickled.
    """
    if str(source) == "imagenet":
        state = imagenet_state_dict()
    else:
        if str(source) == "pretext":  # a name, which the model cannot train itself
            raise ValueError(
                "pretrained='pretext' names the built-in pretext backbone's file: pass "
                "picie_lib.pretext.resolve_pretrained('pretext') (build_model does)"
            )
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained={str(source)!r}: no such file; expected None, 'imagenet', 'pretext' or the path "
                "of a ResNet-18 state dict saved with torch.save"
            )
        state = load_tensors(path)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
        if not isinstance(state, dict):
            raise ValueError(f"{path}: expected a state dict (a dict of tensors), got {type(state).__name__}")
        if any(k.startswith("backbone.") for k in state):
            state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    expected = set(ResNet18Backbone().state_dict())
    missing, unexpected = expected - set(state), set(state) - expected
    if missing or unexpected:
        raise ValueError(
            f"pretrained={str(source)!r} is not a ResNet-18 state dict: "
            f"{len(missing)} missing keys (e.g. {sorted(missing)[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {sorted(unexpected)[:3]})"
        )
    return state


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights (the same file PiCIE's ``--pretrain`` loads); torchvision keeps them
    in its cache (``TORCH_HOME``) after the first download."""
    import urllib.error

    weights = ResNet18_Weights.IMAGENET1K_V1
    try:
        return weights.get_state_dict(progress=True)
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", None) or first_line(err)
        raise ValueError(
            f"pretrained='imagenet': torchvision could not download {weights.url} ({reason}); on a machine "
            "without internet, copy that file here and pass -p pretrained=PATH"
        ) from None


def bf16_autocast(device_type: str, wanted: bool) -> bool:
    """Whether to run the network under bfloat16 autocast when ``wanted`` (``amp``): on a GPU, and on a CPU
    with bfloat16 instructions (AVX-512 BF16 or AMX). Elsewhere torch emulates them: measured on an AVX2
    CPU, a pretext training step took 12.0 s in bf16 against 1.4 s in float32, so float32 runs there, with
    a warning once (the run's environment.json records ``cpu_bf16``)."""
    if not wanted or device_type != "cpu":
        return wanted
    flags = cpu_flags()
    if not flags or BF16_FLAGS & flags:
        return True  # bfloat16 in hardware, or a machine whose flags cannot be read: as asked
    global _WARNED_BF16
    if not _WARNED_BF16:
        warnings.warn(
            "amp=true: this CPU has no bfloat16 instructions (AVX-512 BF16 or AMX), where autocast runs several "
            "times slower than float32; running in float32",
            stacklevel=2,
        )
        _WARNED_BF16 = True
    return False


_WARNED_BF16 = False


def count_trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[nn.Module]:
    """Run BatchNorm on the current batch's statistics without touching the running ones
    (``bn_eval: batch``): the normalisation the training pass uses, as PiCIE's clustering pass
    (``model.train()``), but the running statistics are left to the training pass alone."""
    was_training = model.training
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    tracked = [m.track_running_stats for m in norms]
    model.train()
    for m in norms:
        m.track_running_stats = False  # train mode + no tracking = batch statistics, buffers untouched
    try:
        yield model
    finally:
        for m, t in zip(norms, tracked, strict=True):
            m.track_running_stats = t
        model.train(was_training)


@contextmanager
def bn_mode(model: nn.Module, mode: str) -> Iterator[nn.Module]:
    """BatchNorm in a pass that does not train (no gradient is taken by the caller):

    - ``"batch"``: batch statistics, running statistics untouched (``batch_statistics``);
    - ``"update"``: ``train()``: batch statistics, and the running statistics move towards them
      (PiCIE's clustering passes, ``run_mini_batch_kmeans``);
    - ``"running"``: ``eval()``: the running statistics (PiCIE's ``compute_labels`` and ``evaluate``).
    """
    if mode == "batch":
        with batch_statistics(model):
            yield model
        return
    if mode not in ("update", "running"):
        raise ValueError(f"BatchNorm mode {mode!r}: expected 'batch', 'update' or 'running'")
    was_training = model.training
    model.train(mode == "update")
    try:
        yield model
    finally:
        model.train(was_training)


def bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The BatchNorm buffers (running means, variances, batch counts) of ``model``, copied."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if k.endswith(BN_BUFFERS)}


BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")
