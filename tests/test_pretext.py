"""The pretext backbone: classes disjoint from the demo's, a short training that learns, a file
that ``pretrained: PATH`` loads, reused when its parameters match."""

import json

import numpy as np
import pytest
import torch

from picie_lib.data.synthetic import TEXTURES
from picie_lib.model import PanopticFPN
from picie_lib.pretext import PRETEXT_TEXTURES, pretext_scene, pretrain_backbone

# slow: starts processes or trains, not in the unit tier (pytest -m 'not slow')
pytestmark = pytest.mark.slow


def _key(kind, params):
    return kind, tuple(sorted(params.items()))


def test_pretext_classes_are_not_the_demos():
    pretext = {_key(k, p) for k, p in PRETEXT_TEXTURES}
    assert len(pretext) == len(PRETEXT_TEXTURES) == 22
    assert not pretext & {_key(k, p) for k, p in TEXTURES.values()}


def test_pretext_scenes_are_deterministic_and_labelled_with_pretext_classes():
    image, label = pretext_scene(0, 4, 48)
    again, _ = pretext_scene(0, 4, 48)
    assert image.dtype == np.uint8 and image.shape == (48, 48, 3) and np.array_equal(image, again)
    assert label.min() >= 0 and label.max() < len(PRETEXT_TEXTURES) and len(np.unique(label)) >= 1
    assert not np.array_equal(image, pretext_scene(1, 4, 48)[0])


def test_pretraining_moves_the_backbone_saves_a_loadable_state_dict_and_is_reused(tmp_path, capsys):
    out = tmp_path / "backbone.pt"
    pretrain_backbone(out, n_images=16, epochs=1, size=32, batch_size=8, amp=False)
    record = json.loads((tmp_path / "backbone.pt.json").read_text())
    assert record["parameters"]["n_images"] == 16 and 0 <= record["history"][0]["pixel_accuracy"] <= 1
    loaded = PanopticFPN(pretrained=out).backbone.state_dict()
    torch.manual_seed(0)
    fresh = PanopticFPN().backbone.state_dict()  # the same initialisation the pretraining started from
    assert any(not torch.equal(loaded[k], fresh[k]) for k in fresh if loaded[k].is_floating_point())
    mtime = out.stat().st_mtime_ns
    capsys.readouterr()
    pretrain_backbone(out, n_images=16, epochs=1, size=32, batch_size=8, amp=False)
    assert out.stat().st_mtime_ns == mtime and "training it once" not in capsys.readouterr().out  # reused
    pretrain_backbone(out, n_images=8, epochs=1, size=32, batch_size=8, amp=False)  # other parameters: retrained
    assert json.loads((tmp_path / "backbone.pt.json").read_text())["parameters"]["n_images"] == 8


def test_the_pretext_command_writes_a_backbone_that_a_run_loads(tmp_path):
    from commands import picie

    from picie_lib.config import load_preset
    from picie_lib.picie import build_model

    out = tmp_path / "pretext" / "backbone.pt"
    done = picie("pretext", "--out", str(out), "--images", "8", "--epochs", "1", timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"-p pretrained={out}" in done.stdout
    model = build_model(load_preset("smoke", pretrained=str(out)), "cpu")
    saved = torch.load(out, weights_only=True)
    assert all(torch.equal(model.backbone.state_dict()[k], v) for k, v in saved.items())


def test_pretrained_pretext_names_the_cached_backbone_and_trains_it_only_when_missing(tmp_path, monkeypatch):
    import picie_lib.pretext as pretext
    from picie_lib.notebook import absolute_paths

    cache = tmp_path / "pretext" / "backbone.pt"
    monkeypatch.setattr(pretext, "PRETEXT_CACHE", cache)
    trained = []
    monkeypatch.setattr(pretext, "pretrain_backbone", lambda out: trained.append(out) or out)
    state = {
        k: torch.randn_like(v) if v.is_floating_point() else v for k, v in PanopticFPN().backbone.state_dict().items()
    }
    cache.parent.mkdir()
    torch.save(state, cache)
    loaded = PanopticFPN(pretrained=pretext.resolve_pretrained("pretext")).backbone.state_dict()
    assert trained == [cache] and all(torch.equal(loaded[k], v) for k, v in state.items())
    assert pretext.resolve_pretrained("imagenet") == "imagenet" and pretext.resolve_pretrained(None) is None
    with pytest.raises(ValueError, match="resolve_pretrained"):  # the model never trains a backbone itself
        PanopticFPN(pretrained="pretext")
    # a named backbone, not a relative path to resolve against the notebooks' folder
    from picie_lib.config import load_preset

    assert "pretrained" not in absolute_paths(load_preset("smoke", pretrained="pretext"), tmp_path)
    assert absolute_paths(load_preset("smoke", pretrained="x.pt"), tmp_path)["pretrained"] == str(tmp_path / "x.pt")
