"""Review (angle: one's own training loops and trainers, 24): what a loop of one's own gets wrong silently."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import sparsekit

pytestmark = pytest.mark.usefixtures("one_thread")

PENALTY = {"method": "l1", "strength": 1e-2, "mode": "penalty"}


def _loop(entry: dict, *, per_micro_batch: bool, accumulate: int = 4, steps: int = 10) -> list[str]:
    """A gradient-accumulation loop calling ``pruner.regularize()`` once per micro-batch or once per optimizer step;
    returns the regularize warnings."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    recipe = {"version": 1, "finetune": {"epochs": 1}, "pruning": [entry], "model": {"input_shape": [1, 16]}}
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=steps)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(steps * accumulate):
            loss = nn.functional.cross_entropy(model(torch.randn(8, 16)), torch.randint(0, 4, (8,))) / accumulate
            loss.backward()
            last = (i + 1) % accumulate == 0
            if per_micro_batch or last:
                pruner.regularize()
            if last:
                optimizer.step()
                pruner.step()
                optimizer.zero_grad()
        pruner.finalize()
    return [str(w.message) for w in caught if "regularize()" in str(w.message)]


@pytest.mark.parametrize("group", ["none", "row"])
def test_regularize_once_per_micro_batch_is_warned_as_the_penalty_acting_that_many_times(group):
    # Each call added lambda * sign(w) to the .grad the micro-batches accumulate into: 4 calls per optimizer step
    # trained with 4x the recipe's strength, with no word (pruner.step() per micro-batch is warned; this was not).
    told = _loop({**PENALTY, "group": group}, per_micro_batch=True)
    assert len(told) == 1
    assert "up to 4 times per optimizer step" in told[0] and "once per optimizer step" in told[0]


@pytest.mark.parametrize(
    "entry",
    [
        {**PENALTY, "group": "row"},
        # nothing to add: several calls per step change nothing, so nothing to warn of
        {"method": "l1", "strength": 1e-2, "mode": "proximal", "group": "none"},
        {"method": "magnitude", "sparsity": 0.5},
    ],
)
def test_regularize_where_it_belongs_or_adding_nothing_is_not_warned(entry):
    assert _loop(entry, per_micro_batch=False) == []
    if entry["method"] != "l1" or entry["mode"] != "penalty":
        assert _loop(entry, per_micro_batch=True) == []


def test_regularize_before_each_of_two_optimizers_steps_with_zero_grad_between_is_not_warned():
    # A GAN-like loop (Lightning's manual optimization calls regularize() before each optimizer's step): the gradients
    # are reset between the calls, so no call's addition is doubled.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    other = nn.Linear(4, 1)
    opt_g = torch.optim.SGD(model.parameters(), lr=0.05)
    opt_d = torch.optim.SGD(other.parameters(), lr=0.05)
    recipe = {"version": 1, "finetune": {"epochs": 1}, "pruning": [{**PENALTY, "group": "none"}]}
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=10)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(10):
            opt_d.zero_grad()
            other(model(torch.randn(8, 16))).mean().backward()
            pruner.regularize()
            opt_d.step()
            opt_g.zero_grad()
            model(torch.randn(8, 16)).pow(2).mean().backward()
            pruner.regularize()
            opt_g.step()
            pruner.step()
        pruner.finalize()
    assert [str(w.message) for w in caught if "regularize()" in str(w.message)] == []
