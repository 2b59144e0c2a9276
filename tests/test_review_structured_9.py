"""Review (structured angle, round 9): structured pruning on architecture families the repo does not ship."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit
from sparsekit.errors import TargetError


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


def test_a_ratio_that_keeps_one_channel_by_the_nearest_count_is_not_refused_as_removing_every_channel():
    # 0.9 of 8 channels keeps int(0.8 + 0.5) = 1 by the ranking's nearest count; the build-time check truncated
    # (int(0.8) = 0) and refused it as "would remove every output channel", for plain and grouped layers alike.
    def run(model: nn.Module, ratio: float) -> dict:
        entry = {"method": "structured", "ratio": ratio, "round_to": None, "schedule": "oneshot"}
        r = {"version": 1, "model": {"input_shape": [1, 1, 8, 8]}, "finetune": {"epochs": 1}, "pruning": [entry]}
        pruner = sparsekit.Pruner(model, r, 1)
        final = pruner.finalize()
        assert final(torch.rand(2, 1, 8, 8)).shape == (2, 10)
        return pruner.methods[0].report()["channels"]

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10))
    assert run(mlp, 0.9)["1"] == [8, 1]
    assert run(_grouped_cnn(), 0.9)["2"] == [64, 8]  # 4 groups of 16: 2 of each kept (16 * 0.1 = 1.6)
    grouped = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1, groups=4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )  # fmt: skip
    assert run(grouped, 0.9)["2"] == [32, 4]  # 4 groups of 8: 1 of each kept (8 * 0.1 = 0.8)
    # What would keep none is still refused, naming the layer.
    with pytest.raises(TargetError, match=r"0\.95 would remove every output channel of '1'"):
        run(nn.Sequential(nn.Flatten(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 10)), 0.95)


class _GroupedUpsampler(nn.Module):
    def __init__(self, groups: int) -> None:
        super().__init__()
        self.c0 = nn.Conv2d(1, 32, 3, stride=2, padding=1)
        self.up = nn.ConvTranspose2d(32, 32, 3, stride=2, padding=1, output_padding=1, groups=groups)
        self.c1 = nn.Conv2d(32, 16, 3, padding=1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.up(torch.relu(self.c0(x))))
        return self.fc(torch.relu(self.c1(x)).mean((2, 3)))


def test_a_grouped_transposed_conv_is_refused_up_front_naming_every_layer_to_ignore():
    # torch-pruning indexes a grouped ConvTranspose's [in, out/groups] weight as a Conv's: ranking 'up' was an
    # IndexError, and with 'up' ignored (the hint) removing c0's channels broke the forward pass at the first event.
    def pruner(model: nn.Module, ignore: list[str] | None = None) -> sparsekit.Pruner:
        entry = {"method": "structured", "ratio": 0.5, "schedule": "oneshot", "ignore": ignore}
        r = {"version": 1, "model": {"input_shape": [1, 1, 8, 8]}, "finetune": {"epochs": 1}, "pruning": [entry]}
        return sparsekit.Pruner(model, r, 1)

    with pytest.raises(TargetError, match=r"grouped transposed convolution.*add 'up', 'c0' to pruning\[0\]\.ignore"):
        pruner(_GroupedUpsampler(groups=2))
    with pytest.raises(TargetError, match=r"output channels of 'c0': they pass through 'up'"):
        pruner(_GroupedUpsampler(groups=2), ["up", "fc"])
    p = pruner(_GroupedUpsampler(groups=2), ["up", "c0", "fc"])  # following the hint prunes the rest
    assert p.finalize()(torch.rand(2, 1, 8, 8)).shape == (2, 10)
    assert p.methods[0].report()["channels"]["c1"] == [16, 8]
    depthwise = pruner(_GroupedUpsampler(groups=32))  # torch-pruning maps a depthwise one correctly
    assert depthwise.finalize()(torch.rand(2, 1, 8, 8)).shape == (2, 10)
