"""Review (contract angle, round 21): INTERFACE.md and README.md held against what the code does."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sparsekit


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))


@pytest.mark.parametrize(
    ("kwargs", "input_shape", "match"),
    [
        # A shape without the batch: every command that opened the file then failed ("does not accept it").
        ({}, (8,), "no batch dimension"),
        # Keys that are no names and NaN: load_model called the written file damaged.
        ({1: 2}, (1, 8), "not a name"),
        ({"width": float("nan")}, (1, 8), "finite"),
        ({"width": float("inf")}, (1, 8), "finite"),
    ],
)
def test_save_model_refuses_what_load_model_would_call_damaged(tmp_path, kwargs, input_shape, match):
    path = tmp_path / "m.pt"
    with pytest.raises(sparsekit.ModelFileError, match=match):
        sparsekit.save_model(_net(), path, "torch.nn:Identity", kwargs=kwargs, input_shape=input_shape)
    assert not path.exists()


def test_save_model_still_writes_a_batch_first_shape(tmp_path):
    path = sparsekit.save_model(_net(), tmp_path / "m.pt", "torch.nn:Identity", kwargs={"w": 1.5}, input_shape=(1, 8))
    saved = torch.load(path, weights_only=True)
    assert saved["input_shape"] == [1, 8] and saved["kwargs"] == {"w": 1.5}
