"""Mends from the eighteenth architecture review: models users bring that examples/ does not have."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sparsekit


def _structured(shape: list[int]) -> sparsekit.Recipe:
    spec = {"method": "structured", "ratio": 0.5, "round_to": None, "schedule": "oneshot"}
    return sparsekit.Recipe(**{"model": {"input_shape": shape}, "pruning": [spec]})


class ScaledByBuffer(nn.Module):
    """An MLP whose hidden units are scaled by a per-channel buffer (a fixed gain, a calibration constant)."""

    def __init__(self, as_parameter: bool = False) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 5)
        if as_parameter:
            self.scale = nn.Parameter(torch.ones(32), requires_grad=False)
        else:
            self.register_buffer("scale", torch.ones(32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.fc2(F.relu(self.fc1(x)) * self.scale)))


def test_a_per_channel_buffer_that_breaks_channel_removal_is_named_with_its_remedy(one_thread):
    # torch-pruning resizes parameters, not buffers: the refusal blamed a view/reshape the model does not have
    # (rehearse) or named nothing (the Pruner's own step), leaving ignore as the only way out.
    torch.manual_seed(0)
    with pytest.raises(sparsekit.TargetError) as rehearsed:
        sparsekit.rehearse(ScaledByBuffer(), _structured([1, 16]), input_shape=[1, 16], steps_per_epoch=1)
    pruner = sparsekit.Pruner(ScaledByBuffer(), _structured([1, 16]), steps_per_epoch=1)
    with pytest.raises(sparsekit.TargetError) as stepped:
        pruner.step()
    for err in (rehearsed, stepped):
        message = str(err.value)
        assert "buffer 'scale' (shape [32])" in message and "nn.Parameter" in message, message
        assert "view/reshape" not in message
    # The remedy it names works: a frozen parameter loses the same channels.
    model = ScaledByBuffer(as_parameter=True)
    pruner = sparsekit.Pruner(model, _structured([1, 16]), steps_per_epoch=1)
    pruner.step()
    model = pruner.finalize()
    assert model.scale.shape == (16,) and model(torch.rand(2, 16)).shape == (2, 5)
