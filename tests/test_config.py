"""Parameters: presets, overrides, and clear errors for unknown or malformed ones."""

import re
from dataclasses import fields

import pytest

from picie_lib.config import Config, from_dict, load_preset, parse_override, parse_overrides
from picie_lib.rules import Rule
from picie_lib.yaml_text import read_yaml


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
        ({"loss": "dice"}, "loss=dice: expected one of ce, focal, ib_focal"),
        ({"balance": "sqrt"}, "balance=sqrt: expected one of"),
        ({"switch": "soon"}, "switch=soon: expected 'min_loss', 'global_min' or a number of CE epochs >= 0"),
        ({"res": 100}, "res=100: expected a positive multiple of 32"),
        ({"n_clusters": 0}, "n_clusters=0: expected an integer >= 2"),
        ({"lr": "fast"}, "lr=fast: expected a finite number > 0"),
        ({"lr": float("inf")}, "lr=.inf: expected a finite number > 0"),
        ({"brightness": [1.3, 0.7]}, "brightness=[1.3, 0.7]: expected [low, high]"),
        ({"hue": [0.5]}, "hue=[0.5]: expected [low, high], two numbers >= -0.5 and <= 0.5"),
        ({"hue": [-0.7, 0.1]}, "hue=[-0.7, 0.1]"),
        ({"p_flip": 5}, "p_flip=5: expected a probability in [0, 1]"),
        ({"p_jitter": -0.1}, "p_jitter=-0.1: expected a probability"),
        ({"gamma": -3}, "gamma=-3: expected a finite number >= 0"),
        ({"seed": -1}, "seed=-1: expected an integer in [0, 4294967295]"),
        ({"seed": 2**32}, "seed=4294967296: expected an integer in [0, 4294967295]"),
        ({"seeds": [0, 10**23]}, "seeds=[0, 100000000000000000000000]: expected a non-empty list of distinct"),
        ({"seed": 1.5}, "seed=1.5: expected an integer"),
        ({"seeds": "abc"}, "seeds=abc: expected a non-empty list"),
        ({"seeds": []}, "seeds=[]: expected a non-empty list"),
        ({"seeds": [0, 0]}, "seeds=[0, 0]: expected a non-empty list of distinct"),
        ({"epochs_ce": 0}, "epochs_ce=0: expected an integer >= 1"),
        ({"device": "tpu"}, "device=tpu: expected auto, cpu, cuda or cuda:N"),
        ({"amp": "maybe"}, "amp=maybe: expected true or false"),
        ({"min_scale": 0}, "min_scale=0: expected a finite number > 0 and <= 1"),
        ({"max_images": 0}, "max_images=0: expected null or an integer >= 1"),
    ],
)
def test_bad_values_get_clear_errors(bad, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        from_dict(bad)
    with pytest.raises(ValueError, match=re.escape(message)):  # built directly, as a notebook may
        Config(**{k: tuple(v) if isinstance(v, list) and k != "seeds" else v for k, v in bad.items()})


def test_every_field_declares_its_rule_and_the_defaults_meet_it():
    for f in fields(Config):
        assert isinstance(f.metadata.get("rule"), Rule), f"{f.name} has no rule beside it"
    Config()  # the paper's defaults pass their own rules
    for name in ("smoke", "demo", "paper"):
        load_preset(name)


def test_a_mistake_in_p_is_named_as_p_and_one_in_a_file_by_its_path(tmp_path):
    with pytest.raises(ValueError, match=re.escape("-p seed=-1: expected an integer in [0, 4294967295]")):
        load_preset("smoke", overrides_source="-p", seed=-1)
    with pytest.raises(ValueError, match=r"^-p bogus=1: unknown key\(s\) bogus"):
        load_preset("smoke", overrides_source="-p", bogus=1)
    preset = tmp_path / "mine.yaml"
    preset.write_text("epochs_ce: 2\np_flip: 5\n")
    with pytest.raises(ValueError, match=re.escape(f"{preset}: p_flip=5: expected a probability")):
        load_preset(str(preset), overrides_source="-p", seed=1)
    with pytest.raises(ValueError, match="given more than once"):
        parse_overrides(["seed=1", "lr=1e-3", "seed=2"])
    with pytest.raises(ValueError, match=r"-p hue=\[0.5: not valid YAML"):
        parse_overrides(["hue=[0.5"])


def test_a_key_given_twice_in_a_preset_is_refused_with_both_lines(tmp_path):
    preset = tmp_path / "twice.yaml"
    preset.write_text("# a comment\nepochs_ce: 2\nlr: 1.0e-3\nepochs_ce: 3\n")
    with pytest.raises(
        ValueError, match=re.escape("not valid YAML at line 4, column 1: duplicate key 'epochs_ce' (first on line 2)")
    ):
        load_preset(str(preset))
    broken = tmp_path / "broken.yaml"
    broken.write_text("lr: [1e-3\n")
    with pytest.raises(ValueError, match=f"^{re.escape(str(broken))}: not valid YAML at line 2"):
        load_preset(str(broken))
    assert read_yaml("a: {b: 1}\nc: 2\n", "x") == {"a": {"b": 1}, "c": 2}
    with pytest.raises(ValueError, match="duplicate key 'b'"):  # nested mappings too
        read_yaml("a: {b: 1, b: 2}\n", "x")


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


@pytest.mark.parametrize(
    "values, losses, message",
    [
        ({"res": 32}, None, "res=32: expected a multiple of 32 >= 64 (at 32 the backbone's last stage is 1 x 1"),
        ({"kmeans_max_init_points": 1}, None, "kmeans_max_init_points=1: expected at least n_clusters=27 points"),
        (
            {"loss": "ib_focal", "switch": 20},
            None,
            "switch=20 with epochs_ib_focal=20: IB-Focal would start at epoch 21, after the last",
        ),
        ({"switch": 20}, ("ce", "focal", "ib_focal"), "switch=20 with epochs_ib_focal=20"),  # compare trains it
        ({"loss": "ib_focal", "epochs_ib_focal": 1}, None, "epochs_ib_focal=1 with switch=min_loss: IB-Focal would"),
    ],
)
def test_what_joins_parameters_is_checked_for_a_run_about_to_train(values, losses, message):
    cfg = Config(**values)  # a saved configuration reads back whatever it holds
    with pytest.raises(ValueError, match=re.escape(message)):
        cfg.check_runnable(losses)


def test_a_switch_that_only_ib_focal_would_use_does_not_stop_ce_and_the_last_epoch_is_allowed():
    Config(switch=20).check_runnable()  # CE never switches
    Config(loss="ib_focal", switch=19).check_runnable()  # IB-Focal in epoch 20 of 20
    Config(loss="ib_focal", epochs_ib_focal=2).check_runnable()


def test_yaml_whose_aliases_expand_beyond_the_limit_is_refused_at_once():
    import time

    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"{n}: &{n} [{', '.join([f'*{p}'] * 10)}]" for p, n in zip("abcdefgh", "bcdefghi", strict=True)]
    start = time.perf_counter()  # 10^9 values once expanded
    with pytest.raises(ValueError, match=r"bomb.yaml: expands to more than 100,000 values"):
        read_yaml("\n".join(levels) + "\n", "bomb.yaml")
    assert time.perf_counter() - start < 2
    shared = read_yaml("a: &a [1, 2]\nb: *a\nc: *a\n", "x")  # a few aliases are fine
    assert shared == {"a": [1, 2], "b": [1, 2], "c": [1, 2]}


def test_an_unknown_parameter_close_to_a_known_one_is_named():
    with pytest.raises(ValueError, match=r"^-p eval_seed=8: unknown key\(s\) eval_seed; did you mean eval_seeds\?$"):
        load_preset("smoke", overrides_source="-p", eval_seed=8)
    with pytest.raises(ValueError, match=r"unknown key\(s\) zzz; known keys: amp, "):
        load_preset("smoke", overrides_source="-p", zzz=1)
