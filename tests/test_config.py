"""Parameters: presets, overrides, and clear errors for unknown or malformed ones."""

import pytest

from picie_lib.config import Config, from_dict, load_preset, parse_override


def test_defaults_are_the_papers_setting():
    cfg = Config()
    assert (cfg.n_clusters, cfg.lr, cfg.gamma, cfg.ib_alpha, cfg.ib_eps, cfg.temperature) == (
        27,
        1e-4,
        2.0,
        1000.0,
        1e-3,
        1.0,
    )
    assert (cfg.epochs_for("ce"), cfg.epochs_for("focal"), cfg.epochs_for("ib_focal")) == (10, 15, 20)
    assert cfg.balance == "picie" and cfg.ib_balance == "inverse" and cfg.switch == "min_loss"


@pytest.mark.parametrize("name", ["smoke", "demo"])
def test_presets_load_and_keep_the_papers_epoch_proportions(name):
    cfg = load_preset(name)
    ce, focal, ib = (cfg.epochs_for(m) for m in ("ce", "focal", "ib_focal"))
    assert ce >= 1 and focal >= ce and ib >= focal
    assert abs(focal / ce - 1.5) <= 0.5 and abs(ib / ce - 2.0) <= 0.5


def test_unknown_keys_are_named():
    with pytest.raises(ValueError, match="unknown key.*learning_rate"):
        from_dict({"learning_rate": 0.1})
    with pytest.raises(ValueError, match="unknown key.*bogus"):
        load_preset("smoke", bogus=1)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="preset 'nope'.*demo.*smoke"):
        load_preset("nope")


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"loss": "dice"}, "loss='dice': expected one of ce, focal, ib_focal"),
        ({"balance": "sqrt"}, "balance='sqrt'"),
        ({"switch": "soon"}, "switch='soon'"),
        ({"res": 100}, "res=100: expected a multiple of 32"),
        ({"n_clusters": 0}, "n_clusters=0"),
        ({"lr": "fast"}, "lr='fast': expected a number"),
        ({"brightness": [1.3, 0.7]}, "brightness"),
    ],
)
def test_bad_values_get_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        from_dict(bad)


def test_overrides_read_yaml_values():
    assert parse_override("lr=3e-4") == ("lr", "3e-4")
    cfg = load_preset(
        "smoke",
        **dict(
            [
                parse_override("lr=3e-4"),
                parse_override("switch=2"),
                parse_override("pretrained=null"),
                parse_override("hue=[-0.05, 0.05]"),
            ]
        ),
    )
    assert cfg.lr == 3e-4 and cfg.switch == 2 and cfg.pretrained is None and cfg.hue == (-0.05, 0.05)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_override("lr")


def test_round_trip_through_a_dict():
    cfg = load_preset("demo")
    assert from_dict(cfg.to_dict()) == cfg
