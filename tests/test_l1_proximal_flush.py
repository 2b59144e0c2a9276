"""l1 proximal with proximal_every > 1 applies the shrink owed by the steps after its last proximal step at
finalize: a run that ends between two (no end_epoch closing the window) trained with all of its penalty."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import sparsekit


@pytest.mark.parametrize("steps", [20, 22, 18])
def test_the_shrink_of_the_last_steps_is_applied_at_finalize(steps, one_thread):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].weight.fill_(1.0)  # far from zero: every step shrinks every weight by lr * lambda
    recipe = {
        "version": 1,
        "finetune": {"epochs": 1},
        "pruning": [{"method": "l1", "mode": "proximal", "strength": 1e-3, "proximal_every": 3, "layers": ["0"]}],
    }
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=steps)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        (model(torch.randn(2, 4)).sum() * 0).backward()  # no gradient: only the proximal step moves the weights
        opt.step()
        pruner.step()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the target-less entry's notes)
        model = pruner.finalize()
    shrunk = 1.0 - model[0].weight.detach()
    assert torch.allclose(shrunk, torch.full_like(shrunk, steps * 0.1 * 1e-3), rtol=1e-3), float(shrunk.mean())
