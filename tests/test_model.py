"""The network: parameter count, shapes, the decoder against a hand-written FPN, weight loading."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18

from picie_lib import model as model_module
from picie_lib.model import PanopticFPN, batch_statistics, count_trainable_parameters


def test_parameter_count_is_picies():
    m = PanopticFPN()
    assert count_trainable_parameters(m) == 11_299_904
    assert count_trainable_parameters(m.backbone) == 11_176_512
    assert count_trainable_parameters(m.decoder) == 123_392


@pytest.mark.parametrize("size", [64, 96, (96, 128)])
def test_output_is_128_channels_at_stride_4(size):
    h, w = (size, size) if isinstance(size, int) else size
    out = PanopticFPN().eval()(torch.randn(2, 3, h, w))
    assert out.shape == (2, 128, h // 4, w // 4)


def test_decoder_is_1x1_laterals_and_bilinear_top_down_only():
    torch.manual_seed(0)
    m = PanopticFPN().eval()
    convs = [mod for mod in m.decoder.modules() if isinstance(mod, nn.Conv2d)]
    assert len(convs) == 4 and all(c.kernel_size == (1, 1) and c.bias is not None for c in convs)
    assert not any(isinstance(mod, (nn.BatchNorm2d, nn.ReLU, nn.GroupNorm)) for mod in m.decoder.modules())

    x = torch.randn(2, 3, 64, 64)
    r = resnet18()
    r.load_state_dict({**m.backbone.state_dict(), **{k: v for k, v in r.state_dict().items() if k.startswith("fc.")}})
    r.eval()
    with torch.no_grad():
        s = r.maxpool(r.relu(r.bn1(r.conv1(x))))
        res2 = r.layer1(s)
        res3 = r.layer2(res2)
        res4 = r.layer3(res3)
        res5 = r.layer4(res4)
        d = m.decoder

        def up(a, b):
            return F.interpolate(a, size=b.shape[-2:], mode="bilinear", align_corners=False) + b

        expected = up(up(up(d.layer1(res5), d.layer2(res4)), d.layer3(res3)), d.layer4(res2))
        assert torch.allclose(m(x), expected, atol=1e-5)


def test_pretrained_from_a_torchvision_state_dict(tmp_path):
    torch.manual_seed(1)
    source = resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    m = PanopticFPN(pretrained=path)
    for k, v in m.backbone.state_dict().items():
        assert torch.equal(v, source.state_dict()[k]), k


def test_pretrained_from_a_panoptic_fpn_checkpoint(tmp_path):
    torch.manual_seed(2)
    source = PanopticFPN()
    path = tmp_path / "model.pt"
    torch.save({"model": source.state_dict()}, path)
    m = PanopticFPN(pretrained=path)
    assert all(torch.equal(v, source.backbone.state_dict()[k]) for k, v in m.backbone.state_dict().items())


def test_pretrained_imagenet_uses_torchvisions_weights_api(monkeypatch):
    torch.manual_seed(3)
    fake = resnet18().state_dict()
    calls = []
    monkeypatch.setattr(model_module, "imagenet_state_dict", lambda: calls.append(1) or fake)
    m = PanopticFPN(pretrained="imagenet")
    assert calls == [1]
    assert torch.equal(m.backbone.conv1.weight, fake["conv1.weight"])


def test_pretrained_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        PanopticFPN(pretrained=tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a ResNet-18 state dict"):
        PanopticFPN(pretrained=bad)


def test_pretrained_files_are_never_unpickled_as_objects(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": resnet18()}, path)  # a pickled module, not a state dict
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|Unsupported"):
        PanopticFPN(pretrained=path)


def test_batch_statistics_leaves_running_stats_alone():
    torch.manual_seed(4)
    m = PanopticFPN()
    m.eval()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(4, 3, 64, 64) * 3 + 1
    with torch.no_grad(), batch_statistics(m):
        out = m(x)
    assert not m.training  # mode restored
    for k, v in m.state_dict().items():
        if "num_batches_tracked" not in k:
            assert torch.equal(v, before[k]), k
    # and the output is the train-mode (batch statistics) output
    m.train()
    with torch.no_grad():
        expected = m(x)
    assert torch.allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize(
    "flags, device, wanted, expected",
    [
        ({"fma", "avx2"}, "cpu", True, False),  # emulated bf16: float32, with a warning
        ({"avx2", "avx512f", "avx512_bf16"}, "cpu", True, True),
        ({"avx2", "amx_bf16"}, "cpu", True, True),
        (set(), "cpu", True, True),  # flags unreadable: as asked
        ({"avx2"}, "cuda", True, True),
        ({"avx512_bf16"}, "cpu", False, False),
    ],
)
def test_bf16_autocast_runs_only_where_the_device_has_bfloat16(monkeypatch, flags, device, wanted, expected):
    import warnings

    import picie_lib.model as model

    monkeypatch.setattr(model, "cpu_flags", lambda: flags)
    monkeypatch.setattr(model, "_WARNED_BF16", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert model.bf16_autocast(device, wanted) is expected
    assert [str(w.message).startswith("amp=true: this CPU has no bfloat16") for w in caught] == (
        [True] if wanted and not expected else []
    )


def test_initial_weights_do_not_depend_on_whether_the_backbone_was_trained_in_the_call(tmp_path, monkeypatch):
    """The pretext backbone is trained inside build_model the first time (random numbers drawn), read from disk
    after: the network before training, the floor, must be the same weights either way."""
    from picie_lib import picie
    from picie_lib.config import load_preset

    backbone = tmp_path / "r18.pth"
    torch.save(resnet18().state_dict(), backbone)

    def trained_here(pretrained):  # as a first run: training draws from the global generator
        torch.rand(1000)
        return backbone

    cfg = load_preset("smoke", pretrained=str(backbone))
    read = picie.build_model(cfg, torch.device("cpu")).state_dict()
    monkeypatch.setattr(picie, "resolve_pretrained", trained_here)
    torch.manual_seed(123)  # whatever the generator held before
    first = picie.build_model(cfg, torch.device("cpu")).state_dict()
    assert all(torch.equal(read[k], first[k]) for k in read)
