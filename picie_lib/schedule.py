"""Method 2's schedule: CE first, then IB-Focal from the switch (the paper: "the epoch at which the loss reached
its minimum"), and the optimiser across the switch.

Under Adam a constant factor on the loss leaves the step almost unchanged (``first_step_size`` shows it beside
SGD), so the IB authors' SGD recipe, a 100x rate drop at the switch (their IB steps stay of a useful size because
under SGD a step grows with the loss, which alpha = 1000 keeps large), does not carry over: under Adam it makes
every IB step 100x smaller. The default keeps Adam's rate and restarts its moments at the switch,
so the IB phase takes steps of the size the CE phase took, whatever alpha (docs/loss-options.md).
"""

from __future__ import annotations

import math

import torch

from picie_lib.config import Config

SWITCH_RULES = {
    "min_loss": "the first CE epoch whose loss fails to improve on the lowest before it (capped at half the epochs)",
    "global_min": "the lowest CE loss over the first half of the epochs",
}


class Schedule:
    """Which loss each epoch uses. For ``ib_focal``: CE first, then IB-Focal from ``switch_epoch``.

    ``switch="min_loss"``: after each CE epoch, once the epoch's mean loss fails to improve on the lowest so far,
    the minimum (epoch m) has passed: training goes back to epoch m's weights and optimizer state and goes on
    with IB-Focal as epoch m + 1. The CE epoch that revealed the minimum is discarded and not counted, so the run
    equals ``switch=m``. If the loss is still falling after half the epochs, the switch is forced there.
    ``switch="global_min"``: CE for half the epochs, then back to the epoch of the lowest loss among them (the
    epochs after it discarded). ``switch=N``: the first N epochs use CE.
    """

    def __init__(self, cfg: Config, epochs: int) -> None:
        self.loss, self.rule, self.epochs = cfg.loss, cfg.switch, epochs
        self.cap = max(1, epochs // 2)
        self.best_loss = math.inf
        self.ce_min_epoch: int | None = None
        self.switch_epoch: int | None = 1 if (cfg.loss == "ib_focal" and cfg.switch == 0) else None
        self.ib_alpha: float | None = None  # the alpha of the IB phase, once it started (``ib_alpha_match``)

    def phase(self, epoch: int) -> str:
        if self.loss != "ib_focal":
            return self.loss
        return "ib_focal" if self.switch_epoch is not None and epoch >= self.switch_epoch else "ce"

    def end_of_epoch(self, epoch: int, loss: float) -> str:
        """Returns "keep", "new_min" (snapshot these weights) or "restore" (discard the CE epochs after the
        minimum and go back to the minimum's weights; the next epoch is ``switch_epoch``)."""
        if self.phase(epoch) != "ce" or self.loss != "ib_focal":
            return "keep"
        if self.rule not in SWITCH_RULES:
            if epoch >= self.rule:
                self.switch_epoch = epoch + 1
            return "keep"
        improved = loss < self.best_loss
        if improved:
            self.best_loss, self.ce_min_epoch = loss, epoch
        if self.rule == "min_loss" and not improved:
            self.switch_epoch = self.ce_min_epoch + 1
            return "restore"
        if epoch >= self.cap:
            self.switch_epoch = self.ce_min_epoch + 1
            return "new_min" if improved else "restore"
        return "new_min" if improved else "keep"

    def state_dict(self) -> dict:
        return {
            "best_loss": self.best_loss,
            "ce_min_epoch": self.ce_min_epoch,
            "switch_epoch": self.switch_epoch,
            "ib_alpha": self.ib_alpha,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best_loss, self.ce_min_epoch = state["best_loss"], state["ce_min_epoch"]
        self.switch_epoch, self.ib_alpha = state["switch_epoch"], state.get("ib_alpha")


def set_phase(optimizer, model, cfg: Config, schedule: Schedule, epoch: int):
    """The epoch's phase (``Schedule.phase``) and its learning rate, a function of the phase alone (so a resumed
    run sets it alike): ``lr``, or ``lr x ib_lr_factor`` for IB-Focal, whose first epoch starts Adam's moments
    again if ``ib_reset_optimizer``. Returns (phase, lr, optimizer)."""
    phase = schedule.phase(epoch)
    if phase == "ib_focal" and epoch == schedule.switch_epoch and cfg.ib_reset_optimizer:
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    lr = cfg.lr * (cfg.ib_lr_factor if phase == "ib_focal" else 1.0)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return phase, lr, optimizer


def first_step_size(optimizer: str, loss_scale: float, lr: float = 0.01, steps: int = 1, seed: int = 0) -> float:
    """How far ``steps`` steps of ``optimizer`` ("sgd" or "adam", from a fresh state) move the weights of a small
    least-squares problem whose loss is multiplied by ``loss_scale`` (L2 norm of the change). SGD's move grows
    with the scale; Adam's stays about ``lr`` per coordinate and step: m / sqrt(v) does not see a constant factor."""
    generator = torch.Generator().manual_seed(seed)
    x, y = torch.randn(32, 4, generator=generator), torch.randn(32, generator=generator)
    w = torch.zeros(4, requires_grad=True)
    make = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[optimizer]
    step = make([w], lr=lr)
    for _ in range(steps):
        step.zero_grad()
        (loss_scale * ((x @ w - y) ** 2).mean()).backward()
        step.step()
    return float(w.detach().norm())
