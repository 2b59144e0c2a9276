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


@pytest.mark.parametrize("max_norm_first", [False, True])
def test_max_norm_projects_the_weights_a_mask_keeps(max_norm_first: bool):
    # Momentum moves pruned weights off zero at every step; the Pruner zeroes them again after the hooks. Counted in
    # a unit's norm, they shrank its kept weights by more than max_value asks (rows over the bound ended under it).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 3))
    with torch.no_grad():
        model[0].weight.mul_(5)  # every row over the bound
    entries = [
        {"method": "magnitude", "sparsity": 0.5, "scope": "layer", "schedule": "oneshot"},
        {"method": "max_norm", "max_value": 1.0},
    ]
    recipe = {"version": 1, "finetune": {"epochs": 1}, "pruning": entries[::-1] if max_norm_first else entries}
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        (model(torch.randn(8, 20)) * 5).pow(2).mean().backward()
        opt.step()
        with torch.no_grad():
            kept = model[0].weight * model[0].sparsekit_mask
            want = kept * (1.0 / kept.norm(dim=1, keepdim=True)).clamp(max=1.0)  # w_u * min(1, max_value / |w_u|)
        pruner.step()
        assert torch.allclose(model[0].weight.detach(), want, rtol=1e-5, atol=1e-7)


def test_l1_group_proximal_step_scales_by_the_norm_of_the_weights_a_mask_keeps():
    # w_g <- w_g * max(0, 1 - lr * lambda / ||w_g||) with w_g the unit's weights: pruned weights that momentum moved
    # off zero (the Pruner zeroes them after the hooks) made ||w_g|| larger and the shrink smaller than documented.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 3))
    lam, lr = 0.3, 0.5
    first = {"layers": {"include": ["0"]}}
    entries = [
        {"method": "magnitude", "sparsity": 0.5, "scope": "layer", "schedule": "oneshot", **first},
        {"method": "l1", "strength": lam, "mode": "proximal", "group": "row", "proximal_every": 1, **first},
    ]
    recipe = {"version": 1, "finetune": {"epochs": 1, "optimizer": {"name": "sgd", "lr": lr}}, "pruning": entries}
    pruner = sparsekit.Pruner(model, recipe, steps_per_epoch=10)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    for _ in range(3):
        opt.zero_grad()
        (model(torch.randn(8, 20)) * 5).pow(2).mean().backward()
        opt.step()
        with torch.no_grad():
            kept = model[0].weight * model[0].sparsekit_mask
            want = kept * (1 - lr * lam / kept.norm(dim=1, keepdim=True)).clamp(min=0)
        pruner.step()
        assert torch.allclose(model[0].weight.detach(), want, rtol=1e-5, atol=1e-7)
