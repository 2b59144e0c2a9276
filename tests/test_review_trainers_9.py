"""Review (trainers angle): a user's own training loop driving the Python API."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit


def _mlp(d: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, 4))


_RECIPE = {
    "version": 1,
    "finetune": {"epochs": 2},
    "pruning": [
        {
            "method": "magnitude",
            "sparsity": 0.5,
            "schedule": {"start_epoch": 0, "end_epoch": 1, "every": 0.5},
            "layers": {"exclude": ["2"], "types": ["Linear"]},
        }
    ],
}


def test_state_of_another_width_is_a_value_error_naming_the_layer_and_changes_nothing():
    saved = sparsekit.Pruner(_mlp(8), _RECIPE, steps_per_epoch=2)
    for _ in range(2):
        saved.step()
    state = saved.state_dict()
    model = _mlp(6)  # same layer names, another input width
    pruner = sparsekit.Pruner(model, _RECIPE, steps_per_epoch=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=r"'0'.*\[16, 8\].*\[16, 6\]"):
        pruner.load_state_dict(state)
    assert pruner.step_count == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(m.shape == (16, 6) for n, m in pruner.masks().items() if n == "0")
