"""Pruning methods checked against their own documentation, independently of the implementation (review 8)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import sparsekit


def small_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 3), nn.ReLU(), nn.Linear(3, 1))


def zeros(layer: nn.Module) -> int:
    return int((layer.weight == 0).sum())


@pytest.mark.parametrize(
    "entry",
    [
        {"scope": "layer", "sparsity": 0.9},  # round(0.9 * 3) = 3: every weight of the last layer
        {"scope": "global", "sparsity": 0.5, "layer_sparsity": {"4": 0.9}},
    ],
)
def test_max_layer_sparsity_holds_when_rounding_asks_more_of_a_small_layer(entry: dict[str, Any]):
    model = small_mlp()
    spec = {"method": "magnitude", "schedule": "oneshot", **entry}
    pruner = sparsekit.Pruner(model, {"version": 1, "pruning": [spec]}, steps_per_epoch=1)
    # max_layer_sparsity defaults to 0.99: a layer of 3 weights may lose floor(0.99 * 3) = 2 of them, not all 3
    assert zeros(model[4]) == 2
    if entry["scope"] == "layer":
        assert [zeros(model[0]), zeros(model[2])] == [540, 81]  # round(0.9 * n), within their caps
    reason = pruner.methods[0].report()["per_layer"]["4"]["reason"]
    assert reason and "max_layer_sparsity" in reason
