"""Method 2's schedule: where the switch lands under each rule, and why the rate drop does not carry over to
Adam (a toy problem: Adam's step does not grow with the loss's scale, SGD's does)."""

import pytest

from picie_lib.config import load_preset
from picie_lib.schedule import Schedule, first_step_size


def _cfg(**kw):
    return load_preset("smoke", **kw)


def _run_schedule(cfg, epochs, losses):
    s = Schedule(cfg, epochs)
    actions, phases = [], []
    for epoch, loss in enumerate(losses, start=1):
        phases.append(s.phase(epoch))
        actions.append(s.end_of_epoch(epoch, loss))
    return s, actions, phases


def test_min_loss_switches_at_the_minimum_and_goes_back_to_it():
    s = Schedule(_cfg(loss="ib_focal"), 10)
    actions = [s.end_of_epoch(epoch, loss) for epoch, loss in enumerate([3.0, 2.8, 2.9], start=1)]
    assert actions == ["new_min", "new_min", "restore"]
    # epoch 3 revealed the minimum at epoch 2: IB-Focal continues from epoch 2's weights as epoch 3
    assert s.ce_min_epoch == 2 and s.switch_epoch == 3
    assert [s.phase(e) for e in range(1, 6)] == ["ce", "ce", "ib_focal", "ib_focal", "ib_focal"]


def test_min_loss_switch_is_capped_at_half_the_epochs():
    s, actions, phases = _run_schedule(_cfg(loss="ib_focal"), 6, [3.0, 2.5, 2.0, 1.5, 1.0, 0.5])
    assert actions[:3] == ["new_min"] * 3 and s.switch_epoch == 4 and s.ce_min_epoch == 3
    assert phases == ["ce"] * 3 + ["ib_focal"] * 3


def test_global_min_takes_the_lowest_loss_of_half_the_epochs():
    s, actions, phases = _run_schedule(_cfg(loss="ib_focal", switch="global_min"), 8, [3.0, 2.0, 2.5, 2.2])
    assert actions == ["new_min", "new_min", "keep", "restore"] and (s.ce_min_epoch, s.switch_epoch) == (2, 3)
    first_rise, _, _ = _run_schedule(_cfg(loss="ib_focal"), 8, [3.0, 2.0, 2.5])
    assert first_rise.switch_epoch == 3  # min_loss stops at the first rise; global_min looked on to the cap
    s, actions, _ = _run_schedule(_cfg(loss="ib_focal", switch="global_min"), 8, [3.0, 2.5, 2.6, 1.5])
    assert actions == ["new_min", "new_min", "keep", "new_min"] and (s.ce_min_epoch, s.switch_epoch) == (4, 5)


def test_fixed_switch_epoch_and_zero():
    s, actions, phases = _run_schedule(_cfg(loss="ib_focal", switch=2), 5, [3.0, 3.5, 1, 1, 1])
    assert s.switch_epoch == 3 and "restore" not in actions and phases == ["ce", "ce"] + ["ib_focal"] * 3
    _, _, phases0 = _run_schedule(_cfg(loss="ib_focal", switch=0), 3, [1, 1, 1])
    assert phases0 == ["ib_focal"] * 3
    _, actions_ce, phases_ce = _run_schedule(_cfg(loss="focal"), 3, [3, 4, 5])
    assert phases_ce == ["focal"] * 3 and set(actions_ce) == {"keep"}


@pytest.mark.parametrize("steps", [1, 20])
def test_sgd_steps_grow_with_the_loss_scale_and_adams_do_not(steps):
    sgd = [first_step_size("sgd", scale, lr=1e-3, steps=steps) for scale in (1.0, 10.0, 1000.0)]
    adam = [first_step_size("adam", scale, lr=1e-3, steps=steps) for scale in (1.0, 10.0, 1000.0)]
    if steps == 1:  # one SGD step is lr x the gradient, exactly proportional to the scale
        assert sgd[1] == pytest.approx(10 * sgd[0], rel=1e-5) and sgd[2] == pytest.approx(1000 * sgd[0], rel=1e-5)
        assert adam[0] == pytest.approx(1e-3 * 2, rel=1e-4)  # Adam's first step: lr per coordinate, 4 of them
    assert adam[1] == pytest.approx(adam[0], rel=1e-4) and adam[2] == pytest.approx(adam[0], rel=1e-4)
    assert sgd[1] > 5 * sgd[0]
    dropped = first_step_size("adam", 1.0, lr=1e-5, steps=steps)  # the rate cut 100x: the step too, near enough
    assert dropped == pytest.approx(adam[0] / 100, rel=1e-3 if steps == 1 else 0.1)
