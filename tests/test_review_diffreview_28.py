"""Review of the session's changes since 08a26b2 (step-order check of regularize(), ...)."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import nn

import sparsekit

L1: dict[str, Any] = {
    "version": 1,
    "finetune": {"epochs": 2},
    "pruning": [{"method": "l1", "strength": 1.0e-2, "mode": "penalty", "threshold": 1.0e-3}],
}


@pytest.mark.parametrize("set_to_none", [True, False])
def test_pruner_step_before_the_optimizer_step_is_warned_beside_regularize(set_to_none: bool) -> None:
    # Gradients zeroed in place (zero_grad(set_to_none=False)) keep the tensor the last optimizer step saw: the
    # regularize() added to it was taken for one after that step, and pruner.step() before optimizer.step() went
    # unwarned.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    pruner = sparsekit.Pruner(model, L1, 10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(12):
            x, y = torch.randn(8, 8), torch.randint(0, 2, (8,))
            optimizer.zero_grad(set_to_none=set_to_none)
            nn.functional.cross_entropy(model(x), y).backward()
            pruner.regularize()
            pruner.step()
            optimizer.step()
    told = [str(w.message) for w in caught]
    assert len(told) == 1, told
    assert "pruner.step() ran before optimizer.step()" in told[0]
