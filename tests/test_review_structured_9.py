"""Review (structured angle, round 9): structured pruning on architecture families the repo does not ship."""

from __future__ import annotations

import torch
from torch import nn

import sparsekit


def _grouped_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1, groups=4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def test_a_grouped_conv_rounded_by_round_to_names_round_to_not_its_channel_groups():
    # 64 channels in 4 groups at 0.7: the groups alone keep 20 (5 of each 16), round_to 16 keeps 16. The layer's
    # reason said "channel groups: removal goes in multiples of 4", which cannot turn 20 into 16.
    torch.manual_seed(0)
    entry = {"method": "structured", "ratio": 0.7, "round_to": 16, "schedule": "oneshot"}
    r = {"version": 1, "model": {"input_shape": [1, 1, 8, 8]}, "finetune": {"epochs": 1}, "pruning": [entry]}
    pruner = sparsekit.Pruner(_grouped_cnn(), r, 1)
    pruner.finalize()
    out = pruner.methods[0].report()
    assert out["channels"]["2"] == [64, 16]
    reason = out["per_layer"]["2"]["reason"]
    assert "round_to 16" in reason and "keeps 16 of 64" in reason, reason
    assert "multiples of 4, the same number" not in reason, reason

