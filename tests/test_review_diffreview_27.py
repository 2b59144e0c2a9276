"""Review 27, angle "diffreview": the session's own changes (lr_schedule.hold_epochs, the trainer callbacks, the
results suite's baselines) read hunk by hunk and tried at their edges."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit import train as train_mod
from sparsekit.recipe import unread_finetune_keys


def _rates(spec: sparsekit.recipe.FinetuneSpec) -> list[float]:
    """The learning rate each of ``spec.epochs`` epochs trains at (base rate 1), as sparsekit.finetune steps it."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = train_mod.make_scheduler(opt, spec)
    rates = []
    for _ in range(spec.epochs):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


@pytest.mark.parametrize(
    "schedule",
    [
        {"name": "cosine", "hold_epochs": 2},  # the cosine's first epoch after the hold is at cos(0) = 1: all 3 full
        {"name": "cosine", "hold_epochs": 1},
        {"name": "step", "hold_epochs": 1, "step_size": 2},  # first decay at epoch 1 + 2 = 3: none of 3 decayed
        {"name": "step", "hold_epochs": 1, "step_size": 1},
        {"name": "cosine", "hold_epochs": 3},
    ],
    ids=lambda s: "-".join(f"{k}{v}" for k, v in s.items()),
)
def test_a_hold_that_leaves_no_epoch_decayed_is_noted_and_only_then(schedule):
    # hold_epochs: 2 of 3 under cosine trained every epoch at the full rate, yet validate said nothing (only a hold
    # >= finetune.epochs was noted) and the report read "cosine schedule after 2 epoch(s) at the full rate".
    spec = sparsekit.Recipe(finetune={"epochs": 3, "lr_schedule": schedule}).finetune
    never_decayed = all(rate == 1.0 for rate in _rates(spec))
    noted = [n for n in unread_finetune_keys(spec) if "every epoch trains at the full rate" in n]
    assert bool(noted) == never_decayed, (schedule, _rates(spec), noted)
